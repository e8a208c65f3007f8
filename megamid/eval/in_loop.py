"""Evaluation inside the training loop: what a phase's `eval:` (megamid.config.EvalConfig) runs.

The trainer calls `evaluate_model` through a callback (megamid.train.callbacks.InLoopEval) at a phase's
end and every `interval` steps, with everything it needs as arguments. Every rank evaluates (the
forward is model parallel); rank 0 writes OUT_DIR/<phase>/step_<N>/results.{json,md} and the figures.
"""

import os
import time
from typing import Dict, List, Optional, Sequence

from megamid.config.base import ConfigError
from megamid.config.eval import DEFAULT_MAX_DOCUMENTS, EvalConfig, eval_rope


def _long_documents(prefix: str, lengths: Sequence[int], count: Optional[int]) -> List:
    """Up to `count` documents of at least each length, read from the end of an indexed dataset (a run
    reads its sources from the front), without loading the rest of it."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    sizes = np.asarray(ds.sequence_lengths)
    chosen = set()
    for length in lengths:
        chosen.update(np.flatnonzero(sizes >= length)[::-1][:count].tolist())
    # copies: megatron returns views of a mmap that is closed (and segfaults on access) with the dataset
    return [np.array(ds[int(i)]) for i in sorted(chosen)]


def read_documents(path: Optional[str], lengths: Sequence[int], max_documents: Optional[int]):
    """Token-id documents for ppl/short: a .npy/.npz file, or from an indexed prefix up to max_documents
    documents long enough for each length (the in-loop and `megamid eval` selection alike)."""
    from megamid.eval.perplexity import load_documents

    if path is None:
        return None
    if path.endswith((".npy", ".npz")):
        return load_documents(path, max_documents)
    if not (os.path.isfile(path + ".bin") and os.path.isfile(path + ".idx")):
        raise FileNotFoundError(f"no documents at {path!r}: expected .npy, .npz or an indexed dataset prefix")
    return _long_documents(path, lengths, max_documents)


def summary(results: Dict) -> str:
    """One line: accuracy per retrieval task (with chance) and mean ppl per length."""
    parts = []
    for task in ("passkey", "needle", "ruler"):
        if results.get(task):
            parts.append(f"{task} {results[task]['accuracy']:.2f} (chance {results[task]['chance']:.2f})")
    if results.get("ppl"):
        for length, res in results["ppl"]["by_length"].items():
            ppl = res["ppl_mean"]
            parts.append(f"ppl@{length} {'-' if ppl is None else f'{ppl:.2f}'}")
        if results["ppl"].get("held_out") is False:
            parts.append("(ppl on training data, not held out)")
    if results.get("short"):
        parts.append(f"short ppl {results['short']['ppl']:.2f}")
    return " | ".join(parts)


def evaluate_model(chunks: list, tokenizer, eval_cfg: EvalConfig, phase_name: str, seq_len: int, step: int,
                   out_dir: str, default_documents: Optional[str] = None, log=print,
                   global_step: Optional[int] = None, training_rope: Optional[dict] = None) -> Dict:
    """Evaluates model `chunks` (this rank's, any layout) with `eval_cfg` at `step` of phase `phase_name`
    (every rank calls this) and returns the results; rank 0 writes them under OUT_DIR/<phase>/step_<step>.
    `default_documents`: the ppl/short documents when eval_cfg names none (the phase's first source: training
    data, so the results mark ppl `held_out: false`). `training_rope`: the phase's rope mapping, switched
    back to after an evaluation under `eval_cfg.rope`."""
    import torch
    from megatron.core import tensor_parallel

    from megamid.eval import report
    from megamid.eval.runner import evaluate
    from megamid.model.builder import set_rope
    from megamid.model.inference import MegatronLM
    from megamid.platform import is_rank0

    lengths = list(eval_cfg.lengths or [seq_len])
    count = eval_cfg.max_documents or DEFAULT_MAX_DOCUMENTS
    documents = read_documents(eval_cfg.documents or (default_documents if eval_cfg.needs_documents else None),
                               lengths, count)
    short_documents = read_documents(eval_cfg.short_documents, [2], count)
    if eval_cfg.rope is not None and training_rope is None:
        raise ValueError("evaluate_model: eval_cfg.rope needs training_rope (the rope to restore)")
    rope = eval_rope(training_rope, eval_cfg.rope) if eval_cfg.rope is not None else None
    model = MegatronLM(chunks, max_batch=eval_cfg.max_batch)
    # Evaluation must not change the training run: its forwards leave the RNG streams as they were.
    rng = (torch.get_rng_state(), tensor_parallel.get_cuda_rng_tracker().get_states(),
           torch.cuda.get_rng_state() if torch.cuda.is_available() else None)
    start = time.perf_counter()
    try:
        if rope is not None:
            for chunk in chunks:
                set_rope(chunk, rope)
        results = evaluate(model, tokenizer, list(eval_cfg.tasks), lengths, None, documents=documents,
                           short_documents=short_documents, rope=rope, **eval_cfg.evaluate_kwargs())
    except ValueError as exc:  # a length too short for a task, an unknown RULER task: the recipe's values
        raise ConfigError(f"phases[{phase_name}].eval: {exc}") from None
    finally:
        if rope is not None:
            for chunk in chunks:
                set_rope(chunk, training_rope)
        torch.set_rng_state(rng[0])
        tensor_parallel.get_cuda_rng_tracker().set_states(rng[1])
        if rng[2] is not None:
            torch.cuda.set_rng_state(rng[2])
    results.update(phase=phase_name, step=step, global_step=global_step)
    for task in ("ppl", "short"):
        if results.get(task) is not None:
            own = eval_cfg.documents if task == "ppl" else (eval_cfg.short_documents or eval_cfg.documents)
            results[task].update(documents=own or default_documents, held_out=own is not None)
    step_dir = os.path.join(out_dir, phase_name, f"step_{step}")
    if is_rank0():
        results["files"] = report.write(results, step_dir, eval_cfg.use_matplotlib)
    log(f"[{phase_name}] eval step {step}: {summary(results)} ({time.perf_counter() - start:.1f} s) -> {step_dir}")
    return results
