"""evaluate(): run the requested long-context tasks on a LanguageModel and return a plain dict.

The trainer calls it at phase ends and intervals (out_dir=None on all ranks but one, so only one
writes); `megamid eval CKPT` calls it once. Tasks and what each scores:

  passkey  accuracy by (length x depth)    log-likelihood ranking [+ greedy exact match]
  needle   accuracy by (length x depth)    log-likelihood ranking [+ greedy exact match]
  ruler    5 synthetic tasks, by length    log-likelihood ranking [+ greedy exact match]
  ppl      loss/ppl by position bucket     teacher-forced log-probs on `documents`
  short    short-document ppl / baseline   teacher-forced log-probs on `short_documents`
"""

import time
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

from megamid.config.eval import TASK_NAMES
from megamid.eval import perplexity, report
from megamid.eval.haystack import Sample
from megamid.eval.protocol import LanguageModel, Tokenizer
from megamid.eval.retrieval import needle_samples, passkey_samples
from megamid.eval.ruler import TASKS as RULER_TASKS
from megamid.eval.ruler import ruler_samples
from megamid.eval.scoring import answers_match, greedy_generate, rank_candidates

DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
RANK = "log-likelihood ranking of candidates"


def _score(model: LanguageModel, tokenizer: Tokenizer, samples: List[Sample], greedy: bool) -> List[Dict]:
    """Per sample: correct under ranking and, if asked, under greedy decoding."""
    scored = []
    for s in samples:
        row = {"correct": rank_candidates(model, tokenizer, s.prompt, s.candidates, s.suffix) == s.answer_index}
        if greedy:
            budget = len(tokenizer.encode(s.answer)) + 2
            row["greedy_correct"] = answers_match(greedy_generate(model, tokenizer, s.prompt, budget), s.answer)
        scored.append(row)
    return scored


def _mean(values) -> Optional[float]:
    values = list(values)
    return sum(values) / len(values) if values else None


def _grid_result(samples: List[Sample], scored: List[Dict], lengths, depths, chance: float, greedy: bool) -> Dict:
    cells = defaultdict(list)
    for s, r in zip(samples, scored):
        cells[(s.length, s.depth)].append(r)
    acc = [[_mean(r["correct"] for r in cells[(n, d)]) for n in lengths] for d in depths]
    out = {"scoring": RANK, "chance": chance, "samples": len(samples),
           "accuracy": _mean(r["correct"] for r in scored),
           "grid": {"lengths": list(lengths), "depths": list(depths), "accuracy": acc}}
    if greedy:
        out["greedy_accuracy"] = _mean(r["greedy_correct"] for r in scored)
        out["grid"]["greedy_accuracy"] = [[_mean(r["greedy_correct"] for r in cells[(n, d)]) for n in lengths] for d in depths]
    return out


def _ruler_result(samples: List[Sample], scored: List[Dict], chance: float, greedy: bool) -> Dict:
    per_task: Dict[str, Dict] = {}
    by_task_len = defaultdict(list)
    for s, r in zip(samples, scored):
        by_task_len[(s.task, s.length)].append(r)
    for (task, length), rows in by_task_len.items():
        t = per_task.setdefault(task, {"by_length": {}, "rows": []})
        t["by_length"][str(length)] = _mean(r["correct"] for r in rows)
        if greedy:
            t.setdefault("greedy_by_length", {})[str(length)] = _mean(r["greedy_correct"] for r in rows)
        t["rows"] += rows
    for t in per_task.values():
        rows = t.pop("rows")
        t["accuracy"] = _mean(r["correct"] for r in rows)
        if greedy:
            t["greedy_accuracy"] = _mean(r["greedy_correct"] for r in rows)
    lengths = sorted({s.length for s in samples})
    return {"scoring": RANK, "chance": chance, "samples": len(samples), "tasks": per_task,
            "by_length": {str(n): _mean(t["by_length"][str(n)] for t in per_task.values()) for n in lengths},
            "accuracy": _mean(t["accuracy"] for t in per_task.values())}


def evaluate(model: LanguageModel, tokenizer: Tokenizer, tasks: Sequence[str] = TASK_NAMES,
             lengths: Sequence[int] = (1024, 4096), out_dir: Optional[str] = None, *,
             depths: Sequence[float] = DEFAULT_DEPTHS, samples: int = 5, num_candidates: int = 4, seed: int = 0,
             ruler_tasks: Sequence[str] = tuple(RULER_TASKS), greedy: bool = False,
             documents: Optional[Sequence] = None, short_documents: Optional[Sequence] = None,
             short_length: int = 512, baseline: Optional[LanguageModel] = None, num_buckets: int = 8,
             max_documents: Optional[int] = None, use_matplotlib: Optional[bool] = None,
             rope: Optional[dict] = None) -> Dict:
    """Run `tasks` at each context length in `lengths` and return the results as a plain dict.

    samples: per (length, depth) cell for passkey/needle, per (task, length) for ruler.
    documents: held-out token-id arrays for ppl (each >= length long to count at that length);
    short_documents: for short (defaults to documents), truncated to short_length; baseline: the model
    to compare short-document perplexity against (ratio omitted without one).
    out_dir: if given, also write results.json, results.md and PNGs there (see megamid.eval.report).
    rope: the rope mapping the model was switched to for this evaluation (recorded only; None: its own)."""
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; valid: {', '.join(TASK_NAMES)}")
    if num_candidates < 2:
        raise ValueError(f"num_candidates={num_candidates} must be >= 2 (ranking one candidate is always right)")
    chance = 1.0 / num_candidates
    lengths, depths = [int(n) for n in lengths], [float(d) for d in depths]
    results: Dict = {"config": {"tasks": list(tasks), "lengths": lengths, "depths": depths, "samples": samples,
                                "num_candidates": num_candidates, "seed": seed, "greedy": greedy, "rope": rope},
               "seconds": {}}
    for task in tasks:
        start = time.perf_counter()
        if task in ("passkey", "needle"):
            make = passkey_samples if task == "passkey" else needle_samples
            items = make(tokenizer, lengths, depths, samples, num_candidates, seed)
            results[task] = _grid_result(items, _score(model, tokenizer, items, greedy), lengths, depths, chance, greedy)
        elif task == "ruler":
            items = ruler_samples(tokenizer, ruler_tasks, lengths, samples, num_candidates, seed)
            results[task] = _ruler_result(items, _score(model, tokenizer, items, greedy), chance, greedy)
        elif task == "ppl":
            if documents is None:
                raise ValueError("task 'ppl' needs documents (held-out token-id arrays)")
            results[task] = {"by_length": {str(n): perplexity.ppl_by_position(model, documents, n, num_buckets, max_documents)
                                           for n in lengths}}
        elif task == "short":
            docs = short_documents if short_documents is not None else documents
            if docs is None:
                raise ValueError("task 'short' needs short_documents (or documents)")
            results[task] = perplexity.short_regression(model, docs, short_length, baseline, max_documents)
        results["seconds"][task] = round(time.perf_counter() - start, 3)
    if out_dir is not None:
        results["files"] = report.write(results, out_dir, use_matplotlib)
    return results
