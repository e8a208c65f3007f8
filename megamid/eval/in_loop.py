"""Evaluation inside the training loop: a phase's `eval:` mapping, run at its end and every `interval` steps.

    phases:
      - name: ctx1024
        eval: {tasks: [passkey, ppl], lengths: [512, 1024], samples: 2, interval: 500}

Keys: tasks (default passkey, ppl), lengths (default the phase's seq_len), interval (steps; the trainer
reads it), documents (ppl/short: .npy, .npz or an indexed prefix; default the phase's first data
source, which the run trains on: point it at a held-out prefix for a clean number), max_batch, and
any keyword of `megamid.eval.runner.evaluate`. Every rank evaluates (the forward is model parallel);
rank 0 writes CKPT_DIR/eval/<phase>/step_<N>/results.{json,md} and the figures.
"""

import os
import time
from typing import Dict, List, Optional, Sequence

from megamid.config.base import ConfigError

DEFAULT_TASKS = ("passkey", "ppl")
DEFAULT_MAX_DOCUMENTS = 16  # ppl documents per length read from an indexed prefix (the whole corpus is not)
# key -> (what is valid, check)
_KEYS = {
    "tasks": ("a list of task names", lambda v: isinstance(v, list) and v and all(isinstance(t, str) for t in v)),
    "lengths": ("a list of positive token counts", lambda v: isinstance(v, list) and v and all(_pos_int(n) for n in v)),
    "interval": ("a positive number of steps", lambda v: _pos_int(v)),
    "samples": ("a positive integer", lambda v: _pos_int(v)),
    "depths": ("a list of depths in [0, 1]", lambda v: isinstance(v, list) and v and all(_number(d) and 0 <= d <= 1 for d in v)),
    "num_candidates": ("an integer >= 2", lambda v: _pos_int(v) and v >= 2),
    "seed": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "ruler_tasks": ("a list of RULER task names", lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v)),
    "greedy": ("true or false", lambda v: isinstance(v, bool)),
    "documents": ("a path: .npy, .npz or an indexed dataset prefix", lambda v: isinstance(v, str) and v),
    "short_documents": ("a path: .npy, .npz or an indexed dataset prefix", lambda v: isinstance(v, str) and v),
    "short_length": ("a positive integer", lambda v: _pos_int(v)),
    "num_buckets": ("a positive integer", lambda v: _pos_int(v)),
    "max_documents": ("a positive integer", lambda v: _pos_int(v)),
    "max_batch": ("a positive integer (sequences per forward)", lambda v: _pos_int(v)),
    "use_matplotlib": ("true, false or null", lambda v: v is None or isinstance(v, bool)),
}
_NOT_EVALUATE_KWARGS = ("interval", "max_batch", "documents", "short_documents", "tasks", "lengths")


def _pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_eval_config(phase_name: str, eval_cfg) -> Dict:
    """Validates a phase's `eval:` mapping; errors name `phases[NAME].eval.KEY`. Pure: no torch."""
    where = f"phases[{phase_name}].eval"
    if not isinstance(eval_cfg, dict):
        raise ConfigError(f"{where}={eval_cfg!r} is invalid: expected a mapping with keys {', '.join(_KEYS)}")
    for key, value in eval_cfg.items():
        if key not in _KEYS:
            raise ConfigError(f"{where}.{key} is not a valid key; valid: {', '.join(_KEYS)}")
        valid, ok = _KEYS[key]
        if not ok(value):
            raise ConfigError(f"{where}.{key}={value!r} is invalid: expected {valid}")
    from megamid.eval.runner import TASK_NAMES  # light: no model code

    unknown = [t for t in eval_cfg.get("tasks", ()) if t not in TASK_NAMES]
    if unknown:
        raise ConfigError(f"{where}.tasks={eval_cfg['tasks']!r} is invalid: unknown {', '.join(unknown)}; "
                          f"valid: {', '.join(TASK_NAMES)}")
    return eval_cfg


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
    if results.get("short"):
        parts.append(f"short ppl {results['short']['ppl']:.2f}")
    return " | ".join(parts)


def evaluate_phase(trainer, phase, step: int) -> Dict:
    """Evaluates the trainer's model with `phase.eval`'s settings at `step` of the phase (every rank calls
    this); rank 0 writes the results. Appends them to `trainer.eval_results` and returns them."""
    import torch
    from megatron.core import tensor_parallel

    from megamid.eval import report
    from megamid.eval.runner import evaluate
    from megamid.model.inference import MegatronLM
    from megamid.platform import is_rank0

    cfg = dict(check_eval_config(phase.name, phase.eval or {}))
    tasks = cfg.get("tasks", list(DEFAULT_TASKS))
    lengths = cfg.get("lengths", [phase.training.seq_len])
    count = cfg.get("max_documents", DEFAULT_MAX_DOCUMENTS)
    needs_docs = "ppl" in tasks or "short" in tasks
    default_docs = phase.data["sources"][0]["prefix"] if needs_docs else None
    documents = read_documents(cfg.get("documents", default_docs), lengths, count)
    short_documents = read_documents(cfg.get("short_documents"), [2], count)
    kwargs = {k: v for k, v in cfg.items() if k not in _NOT_EVALUATE_KWARGS}
    kwargs["max_documents"] = count
    use_matplotlib = kwargs.pop("use_matplotlib", None)
    model = MegatronLM(trainer.chunks, max_batch=cfg.get("max_batch", 4))
    # Evaluation must not change the training run: its forwards leave the RNG streams as they were.
    rng = (torch.get_rng_state(), tensor_parallel.get_cuda_rng_tracker().get_states(),
           torch.cuda.get_rng_state() if torch.cuda.is_available() else None)
    start = time.perf_counter()
    try:
        results = evaluate(model, trainer.tokenizer, tasks, lengths, None, documents=documents,
                           short_documents=short_documents, **kwargs)
    except ValueError as exc:  # a length too short for a task, an unknown RULER task: the recipe's values
        raise ConfigError(f"phases[{phase.name}].eval: {exc}") from None
    finally:
        torch.set_rng_state(rng[0])
        tensor_parallel.get_cuda_rng_tracker().set_states(rng[1])
        if rng[2] is not None:
            torch.cuda.set_rng_state(rng[2])
    last = trainer.history[-1] if trainer.history else {}
    results.update(phase=phase.name, step=step, global_step=last.get("global_step"))
    out_dir = os.path.join(trainer.recipe.checkpoint.dir, "eval", phase.name, f"step_{step}")
    if is_rank0():
        results["files"] = report.write(results, out_dir, use_matplotlib)
    trainer.log(f"[{phase.name}] eval step {step}: {summary(results)} ({time.perf_counter() - start:.1f} s) -> {out_dir}")
    if not hasattr(trainer, "eval_results"):
        trainer.eval_results = []
    trainer.eval_results.append(results)
    return results
