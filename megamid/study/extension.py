"""`megamid study extension OUT`: do the context-extension methods work? One base, seven methods.

1. Data (megamid.data.synthetic, byte tokenizer): passkey, MQAR and copy documents placed at random
   offsets in documents of exactly L tokens with answer-only loss masks, the same at 4L for the
   fine-tune, Python source files (train), held-out passkey/MQAR sets at L, 2L, 4L and held-out Python
   files of >= 4L tokens for perplexity by position.
2. A base trained at L (init std 0.08, constant LR after warm-up; first `induction_steps` of copy and
   recall documents only, then the mix with code) until it retrieves: every `check_every` steps, passkey
   and MQAR accuracy at L on held-out data; it stops (and saves) once both reach their targets, or at
   `base_max_steps`.
3. LongRoPE's per-dimension factors searched on the base (megamid.study.longrope: perplexity at 2L and
   4L on training-split code), for LongRoPE's rows below.
4. Zero-shot: the base evaluated under each method's rope (factor 2 at 2L, factor 4 at 4L; `megamid
   eval CKPT --rope ...` does the same).
5. The same short fine-tune at 4L for every method (rope factor 4), as branch anneals of one recipe
   (`megamid train ft_METHOD.yaml --from-phase ft --branch METHOD`), each evaluated at L, 2L, 4L.
Writes OUT/report.md (tables, figures, times, commands) and OUT/results.json.
"""

import json
import os
import time
from typing import Callable, Dict

from megamid.study import measure
from megamid.study.runs import (Scale, StopWhenRetrieves, latest_checkpoint, megamid_train_many, model_section,
                                scale_dict, train_in_process, write_yaml)

METHODS = ("none", "pi", "ntk", "dynamic_ntk", "yarn", "abf", "longrope")
ABF_THETA = 500_000.0  # Llama-2-Long's base; ABF changes theta, not positions


def method_rope(method: str, factor: int, length: int, head_dim: int, long_factor=None) -> dict:
    """The rope mapping of `method` extending a window of `length` by `factor` (theta 10000 base);
    long_factor: LongRoPE's searched per-dimension factors (megamid.study.longrope), else a geometric ramp."""
    base = {"theta": 10000}
    if method == "none":
        return {"type": "default", **base}
    if method == "pi":
        return {"type": "linear", "factor": factor, **base}
    if method == "ntk":
        return {"type": "ntk", "factor": factor, **base}
    if method == "dynamic_ntk":
        return {"type": "dynamic", "factor": factor, "original_max_position_embeddings": length, **base}
    if method == "yarn":
        return {"type": "yarn", "factor": factor, "original_max_position_embeddings": length, **base}
    if method == "abf":
        return {"type": "default", "theta": ABF_THETA}
    if method == "longrope":
        # per-dimension divisors: the search's, or rising geometrically from 1 (the highest frequency) to
        # `factor` (the lowest); short_factor 1 keeps the base's rope below L
        n = head_dim // 2
        long = list(long_factor) if long_factor is not None else [round(float(factor) ** (i / (n - 1)), 6)
                                                                  for i in range(n)]
        return {"type": "longrope", "short_factor": [1.0] * n, "long_factor": long,
                "original_max_position_embeddings": length, "factor": factor, **base}
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


class Evaluator:
    """Held-out material, generated once: passkey via megamid.eval, MQAR spans, code documents."""

    def __init__(self, tokenizer, data_dir: str, scale: Scale):
        from megamid.data.synthetic import heldout_documents
        from megamid.eval.in_loop import read_documents

        self.tokenizer, self.scale = tokenizer, scale
        L = scale.length
        self.lengths = (L, 2 * L, 4 * L)
        self.mqar = {n: heldout_documents("mqar", tokenizer, n, scale.heldout_docs) for n in self.lengths}
        self.code = read_documents(os.path.join(data_dir, "code_heldout"), [4 * L], scale.code_docs)

    def retrieval(self, model, lengths) -> Dict:
        pk = measure.passkey_accuracy(model, self.tokenizer, lengths, self.scale.depths, self.scale.samples)
        return {"passkey": pk["accuracy"], "passkey_by_depth": pk["by_depth"],
                "mqar": {n: measure.mqar_accuracy(model, self.mqar[n], n)["accuracy"] for n in lengths},
                "mqar_by_depth": {n: measure.mqar_accuracy(model, self.mqar[n], n)["by_depth"] for n in lengths}}

    def ppl(self, model, lengths) -> Dict:
        return measure.ppl_positions(model, self.code, lengths)


def base_phases(scale: Scale, data: str) -> list:
    """The base's phases: with scale.induction_steps, first a curriculum phase of copy and recall documents
    only (the induction heads that copying and recall need form there, undiluted by the code's loss), then
    the full mix at a constant LR until the stop criterion or the cap."""
    rest = {"name": "base", "steps": scale.base_max_steps - scale.induction_steps}
    if not scale.induction_steps:
        return [rest]
    src = lambda name, sub, w: {"name": name, "prefix": os.path.join(data, *sub), "weight": w, "loss_mask": True}  # noqa: E731
    return [{"name": "induction", "steps": scale.induction_steps,
             "data": {"sources": [src("copy", ("copy", "copy_train"), 0.5), src("mqar", ("mqar_train",), 0.25),
                                  src("passkey", ("passkey_train",), 0.25)]}},
            {**rest, "lr": {"style": "constant", "peak_lr": scale.base_lr, "warmup_steps": 0}}]


def search_longrope(model, code_prefix: str, L: int, head_dim: int, scale: Scale, log: Callable) -> Dict:
    """{factor: megamid.study.longrope.search result} for factors 2 and 4: LongRoPE's long factors that
    minimise the base's perplexity at factor x L on training-split code documents (short factors stay 1)."""
    from megamid.eval.in_loop import read_documents
    from megamid.study import longrope

    out = {}
    for factor in (2, 4):
        n = factor * L
        docs = read_documents(code_prefix, [n], scale.search_docs)

        def score(long_factor, factor=factor, n=n, docs=docs):
            _set_rope(model, method_rope("longrope", factor, L, head_dim, long_factor))
            return measure.ppl_positions(model, docs, [n], num_buckets=1)[n]["ppl_mean"]

        out[factor] = longrope.search(score, head_dim // 2, factor, L, generations=scale.search_generations,
                                      population=scale.search_population)
        r = out[factor]
        log(f"longrope search x{factor}: ppl@{n} {r['score']:.3f} after {r['evaluations']} evaluations "
            f"(seeds: {', '.join(f'{k} {v:.3f}' for k, v in r['seeds'].items())})")
    _set_rope(model, {"type": "default", "theta": 10000})
    return out


def _set_rope(model, rope: dict) -> None:
    from megamid.model.builder import set_rope

    for chunk in model.chunks:
        set_rope(chunk, rope)


def run(out: str, scale: Scale, log: Callable = print) -> Dict:
    import megamid
    from megamid.data.synthetic import write_synthetic
    from megamid.data.tokenizer_files import load_tokenizer
    from megamid.study import report

    t0 = time.perf_counter()
    times, commands = {}, []
    os.makedirs(out, exist_ok=True)
    L = scale.length
    tok = load_tokenizer("byte")
    head_dim = scale.hidden_size // scale.num_attention_heads

    def logc(line):
        commands.append(line) if line.startswith("$ ") else None
        log(line)

    # 1. data
    start = time.perf_counter()
    data, data_long = os.path.join(out, "data"), os.path.join(out, "data_long")
    # Every training document is exactly L tokens (4L for the fine-tune) with the task (11L/16..L, 2L..4L)
    # at a random offset in it (`--placed`): whole in the aligned training windows, its answer at any
    # position. Documents of exactly L taught the passkey by position (held-out documents one token longer:
    # answer loss 2.8 against 0.06 on its own format); documents of varied length are cut by the windows,
    # and most answers then have their question in another window.
    lo = 11 * L // 16
    write_synthetic(data, tok, "byte", ("passkey", "mqar"), scale.train_docs, scale.heldout_docs, lo, L,
                    (L, 2 * L, 4 * L), scale.code_docs, 4 * L, 0, scale.code_train_docs, placed=True)
    write_synthetic(os.path.join(data, "copy"), tok, "byte", ("copy",), scale.train_docs, 1, lo, L, (), 0,
                    placed=True)
    write_synthetic(data_long, tok, "byte", ("passkey", "mqar"), scale.long_train_docs, 1, 2 * L, 4 * L, (), 0,
                    4 * L, 1, placed=True)
    commands.append(f"(data) megamid data synthetic {data} --placed --min-length {lo} --max-length {L} "
                    f"--heldout-lengths {L},{2 * L},{4 * L} --code-length {4 * L} ...")
    times["data"] = time.perf_counter() - start
    # copy documents (a dense induction signal) help the recall circuits form within a CPU budget; the task
    # documents are scored on their answers only (loss_mask, as Zoology trains MQAR): scored on every
    # token, the random keys and filler drown the answers and a CPU budget ends before recall forms
    sources = lambda d: [
        {"name": "passkey", "prefix": os.path.join(d, "passkey_train"), "weight": 0.4, "loss_mask": True},
        {"name": "mqar", "prefix": os.path.join(d, "mqar_train"), "weight": 0.3, "loss_mask": True},
        {"name": "copy", "prefix": os.path.join(data, "copy", "copy_train"), "weight": 0.2, "loss_mask": True},
        {"name": "code", "prefix": os.path.join(data, "code_train"), "weight": 0.1}]
    evaluator = Evaluator(tok, data, scale)

    # 2. the base, until it retrieves
    start = time.perf_counter()
    ckpt = os.path.join(out, "ckpt")
    base_recipe = write_yaml(os.path.join(out, "base.yaml"), {
        "name": "study-extension-base", "model": model_section(scale, tok.vocab_size),
        "training": {"global_batch_size": scale.base_batch, "micro_batch_size": scale.base_batch, "seq_len": L,
                     "train_steps": scale.base_max_steps,
                     "lr": {"style": "constant", "peak_lr": scale.base_lr,
                            "warmup_steps": min(50, scale.induction_steps or scale.base_max_steps)},
                     "weight_decay": 0.1, "clip_grad": 1.0, "seed": 1234, "log_interval": 50},
        "checkpoint": {"dir": ckpt, "save_interval": None, "save_final": True, "load": "auto"},
        "data": {"sources": sources(data)},
        "phases": base_phases(scale, data)})

    def check(model):
        r = evaluator.retrieval(model, [L])
        return {"passkey": r["passkey"][L], "mqar": r["mqar"][L]}

    def done(r):
        return r["passkey"] >= scale.target_passkey and r["mqar"] >= scale.target_mqar

    stop = StopWhenRetrieves(check, done, scale.check_every, log)
    logc(f"$ (in process) megamid train {base_recipe}  # stops once passkey >= {scale.target_passkey} and "
         f"mqar >= {scale.target_mqar} at L={L}, checked every {scale.check_every} steps")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(scale.base_threads)  # the base trains alone: every core
    try:
        result = train_in_process(base_recipe, [stop], log)
    finally:
        torch.set_num_threads(threads)
    base_ckpt = latest_checkpoint(ckpt)
    base_steps = result["global_step"]
    times["base"] = time.perf_counter() - start
    log(f"base: {base_steps} steps ({'stopped: retrieves' if not result['finished'] else 'hit the step cap'}) -> {base_ckpt}")

    # 3. LongRoPE's factors, searched on the base (perplexity at 2L and 4L on training-split code)
    start = time.perf_counter()
    model, _ = megamid.load(base_ckpt, max_batch=8)
    searched = search_longrope(model, os.path.join(data, "code_train"), L, head_dim, scale, log)
    times["longrope_search"] = time.perf_counter() - start
    rope_of = lambda m, factor: method_rope(m, factor, L, head_dim, searched[factor]["factors"])  # noqa: E731

    # 4. zero-shot under each method's rope
    start = time.perf_counter()
    rows = {}
    base_eval = {**evaluator.retrieval(model, [L, 2 * L, 4 * L]), "ppl": evaluator.ppl(model, [L, 4 * L])}
    for m in METHODS:
        row = {"passkey": {}, "mqar": {}, "passkey_by_depth": {}, "mqar_by_depth": {}}
        for factor in (2, 4):
            n = factor * L
            _set_rope(model, rope_of(m, factor))
            r = evaluator.retrieval(model, [n])
            for k in row:
                row[k][n] = r[k][n]
            if factor == 4:
                row["ppl"] = evaluator.ppl(model, [L, 4 * L])
        rows[m] = row
        logc(f"zero-shot {m}: passkey {row['passkey']} mqar {row['mqar']} ppl@L {row['ppl'][L]['ppl_mean']:.3f} "
             f"ppl@4L {row['ppl'][4 * L]['ppl_mean']:.3f}")
    _set_rope(model, {"type": "default", "theta": 10000})
    times["zero_shot"] = time.perf_counter() - start

    # 5. the same fine-tune at 4L for every method, as branch anneals from the base
    start = time.perf_counter()
    tuned, runs = {}, []
    for m in METHODS:
        recipe = write_yaml(os.path.join(out, f"ft_{m}.yaml"), {
            "name": "study-extension-ft", "base": base_ckpt,
            "model": {**model_section(scale, tok.vocab_size), "max_position_embeddings": 4 * L},
            "training": {"global_batch_size": scale.ft_batch, "micro_batch_size": scale.ft_batch, "seq_len": 4 * L,
                         "train_steps": scale.ft_steps,
                         "lr": {"style": "cosine", "peak_lr": scale.ft_lr, "min_lr": 0.0,
                                "warmup_steps": max(1, scale.ft_steps // 10)},
                         "weight_decay": 0.1, "clip_grad": 1.0, "seed": 99, "log_interval": 20},
            # a folder per method: the branch anneals run at the same time
            "checkpoint": {"dir": os.path.join(out, "ft", m), "save_interval": None, "save_final": True, "load": "auto"},
            "data": {"sources": sources(data_long)},
            "phases": [{"name": "ft", "steps": scale.ft_steps, "rope": rope_of(m, 4)}]})
        runs.append((m, recipe, ["--from-phase", "ft", "--branch", m], os.path.join(out, f"ft_{m}.log")))
    # branch anneals are independent: one per core
    ft_times = megamid_train_many(runs, logc, scale.threads, scale.jobs)
    for m in METHODS:
        model, _ = megamid.load(latest_checkpoint(os.path.join(out, "ft", m, "branches", m)), max_batch=8)
        tuned[m] = {**evaluator.retrieval(model, [L, 2 * L, 4 * L]), "ppl": evaluator.ppl(model, [L, 4 * L])}
        log(f"fine-tuned {m}: passkey {tuned[m]['passkey']} mqar {tuned[m]['mqar']} "
            f"ppl@L {tuned[m]['ppl'][L]['ppl_mean']:.3f} ppl@4L {tuned[m]['ppl'][4 * L]['ppl_mean']:.3f}")
    times["fine_tune"] = time.perf_counter() - start
    times["total"] = time.perf_counter() - t0
    results = {"scale": scale_dict(scale), "L": L, "methods": list(METHODS), "base_steps": base_steps,
               "base_stopped": not result["finished"], "base_checks": stop.history, "base_ckpt": base_ckpt,
               "base": base_eval, "zero_shot": rows, "fine_tuned": tuned, "ft_seconds": ft_times,
               "seconds": times, "commands": commands, "rope": {m: rope_of(m, 4) for m in METHODS},
               "longrope_search": searched}
    results = json.loads(json.dumps(results, default=float))  # int keys -> str, as results.json has them
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    report.extension_report(results, out)
    return results
