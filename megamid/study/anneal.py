"""`megamid study anneal OUT`: does annealing help? From one stable checkpoint, as branch anneals.

Data: the demo corpus (`megamid data demo-corpus`, byte tokens): an unfiltered mix (pretrain, code,
prose, little math) and a curated anneal mix (the target domain, math, up-weighted with prose).
Held out: generated math problems of another seed (the target domain) and Python files of the
installed packages (general text; the corpus's code is the standard library's).
Runs, all at equal tokens (stable + anneal steps x batch x L):
  wsd      the main run: `stable` (constant LR after warm-up) then `decay` (LR linear to 0, unfiltered mix)
  curated  branch anneal from the end of `stable`: `decay` on the curated mix
           (`megamid train anneal_curated.yaml --from-phase decay --branch curated`)
  cosine   a run from scratch with a cosine schedule over all the steps (unfiltered mix)
Writes OUT/report.md (table, loss curves, times, commands) and OUT/results.json.
"""

import json
import math
import os
import time
from typing import Callable, Dict

from megamid.study.runs import Scale, latest_checkpoint, losses, megamid_train, model_section, scale_dict, write_yaml

UNFILTERED = {"pretrain": 0.4, "code": 0.3, "prose": 0.2, "math": 0.1}
CURATED = {"math": 0.5, "prose": 0.2, "code": 0.15, "pretrain": 0.15}


def _sources(corpus: str, weights: dict) -> list:
    return [{"name": name, "prefix": os.path.join(corpus, f"{name}_text_document"), "weight": w}
            for name, w in weights.items()]


def heldout_loss(model, documents, length: int) -> float:
    from megamid.eval.perplexity import short_perplexity

    return math.log(short_perplexity(model, documents, length)["ppl"])


def run(out: str, scale: Scale, log: Callable = print) -> Dict:
    import megamid
    from megamid.data.demo_corpus import write_corpus
    from megamid.data.synthetic import write_synthetic
    from megamid.data.tokenizer_files import load_tokenizer
    from megamid.eval.in_loop import read_documents
    from megamid.study import report

    t0 = time.perf_counter()
    times, commands = {}, []
    os.makedirs(out, exist_ok=True)
    L, S, A = scale.length, scale.anneal_stable_steps, scale.anneal_steps
    tok = load_tokenizer("byte")

    def logc(line):
        commands.append(line) if line.startswith("$ ") else None
        log(line)

    start = time.perf_counter()
    corpus, heldout = os.path.join(out, "corpus"), os.path.join(out, "heldout")
    size = "test" if scale.anneal_steps < 10 else "tiny"
    write_corpus(corpus, size, 0, "byte")
    write_corpus(heldout, "test", 1, "byte")  # another seed: other generated math problems
    write_synthetic(heldout, tok, "byte", (), code_docs=max(4, scale.code_docs), code_length=L)
    commands += [f"$ megamid data demo-corpus {corpus} --size {size}",
                 f"$ megamid data demo-corpus {heldout} --size test --seed 1   # held-out math",
                 f"$ megamid data synthetic {heldout} --tasks '' --code-length {L}   # held-out code (python API)"]
    target = read_documents(os.path.join(heldout, "math_text_document"), [L], 64)
    general = read_documents(os.path.join(heldout, "code_heldout"), [L], 64)
    times["data"] = time.perf_counter() - start

    def recipe(name: str, phases: list, ckpt: str) -> dict:
        return {"name": name, "model": model_section(scale, tok.vocab_size),
                "training": {"global_batch_size": scale.base_batch, "micro_batch_size": scale.base_batch,
                             "seq_len": L, "train_steps": S + A,
                             "lr": {"style": "constant", "peak_lr": scale.base_lr, "warmup_steps": min(50, S)},
                             "weight_decay": 0.1, "clip_grad": 1.0, "seed": 1234, "log_interval": 50},
                "checkpoint": {"dir": ckpt, "save_interval": None, "save_final": True, "load": "auto"},
                "data": {"sources": _sources(corpus, UNFILTERED)}, "phases": phases}

    stable = {"name": "stable", "steps": S}
    decay = {"name": "decay", "steps": A, "lr": {"style": "linear", "peak_lr": scale.base_lr, "min_lr": 0.0}}
    ckpt = os.path.join(out, "ckpt")
    main = write_yaml(os.path.join(out, "anneal_wsd.yaml"), recipe("study-anneal", [stable, decay], ckpt))
    curated = write_yaml(os.path.join(out, "anneal_curated.yaml"), recipe(
        "study-anneal", [stable, {**decay, "data": {"sources": _sources(corpus, CURATED)}}], ckpt))
    cosine_ckpt = os.path.join(out, "ckpt_cosine")
    cos = recipe("study-anneal-cosine", [{"name": "cosine", "steps": S + A}], cosine_ckpt)
    cos["training"]["lr"] = {"style": "cosine", "peak_lr": scale.base_lr, "min_lr": 0.0, "warmup_steps": min(50, S)}
    cosine = write_yaml(os.path.join(out, "anneal_cosine.yaml"), cos)

    runs = {}
    for name, path, args, run_dir in (("wsd", main, [], ckpt),
                                      ("curated", curated, ["--from-phase", "decay", "--branch", "curated"],
                                       os.path.join(ckpt, "branches", "curated")),
                                      ("cosine", cosine, [], cosine_ckpt)):
        times[name] = megamid_train(path, args, logc, scale.threads, os.path.join(out, f"{name}.log"))
        runs[name] = run_dir
    start = time.perf_counter()
    results, curves = {}, {}
    from megamid.checkpoint.dist_state import find_phase_end

    checkpoints = {"stable (before the anneal)": find_phase_end(ckpt, "stable", S),
                   **{name: latest_checkpoint(d) for name, d in runs.items()}}
    for name, path in checkpoints.items():
        model, _ = megamid.load(path, max_batch=8)
        steps = S if name.startswith("stable") else S + A
        rows = losses(runs.get(name, ckpt))
        train_loss = [r["loss"] for r in rows if r["global_step"] <= steps][-10:]
        results[name] = {"checkpoint": path, "tokens": steps * scale.base_batch * L,
                         "target_loss": heldout_loss(model, target, L), "general_loss": heldout_loss(model, general, L),
                         "train_loss": sum(train_loss) / len(train_loss) if train_loss else None}
        log(f"{name}: {json.dumps(results[name])}")
    main_rows = losses(ckpt)
    curves["wsd"] = [(r["global_step"], r["loss"]) for r in main_rows]
    curves["curated"] = ([(r["global_step"], r["loss"]) for r in main_rows if r["global_step"] <= S]
                         + [(r["global_step"], r["loss"]) for r in losses(runs["curated"])])
    curves["cosine"] = [(r["global_step"], r["loss"]) for r in losses(cosine_ckpt)]
    times["eval"] = time.perf_counter() - start
    times["total"] = time.perf_counter() - t0
    out_results = {"scale": scale_dict(scale), "L": L, "stable_steps": S, "anneal_steps": A, "runs": results,
                   "curves": curves, "mix": {"unfiltered": UNFILTERED, "curated": CURATED}, "seconds": times,
                   "commands": commands}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(out_results, f, indent=1)
    report.anneal_report(out_results, out)
    return out_results
