"""Writing evaluation results: results.json (the dict `evaluate` returns), results.md, PNG figures."""

import json
import math
import os
from typing import Dict, List

from megamid.eval.heatmap import heatmap, ppl_plot


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(results: Dict) -> str:
    """A markdown summary: one table per task."""
    lines = ["# Long-context evaluation", ""]
    for task in ("passkey", "needle"):
        res = results.get(task)
        if not res:
            continue
        grid = res["grid"]
        lines += [f"## {task}: accuracy by depth x length", "",
                  f"Scoring: {res['scoring']}; chance {_fmt(res['chance'], 2)}; overall {_fmt(res['accuracy'])}"
                  + (f"; greedy exact match {_fmt(res['greedy_accuracy'])}" if res.get("greedy_accuracy") is not None else ""), ""]
        rows = [[f"{d:.0%}"] + [_fmt(a, 2) for a in row] for d, row in zip(grid["depths"], grid["accuracy"])]
        lines += _table(["depth \\ length"] + [str(n) for n in grid["lengths"]], rows) + [""]
    if results.get("ruler"):
        res = results["ruler"]
        lengths = sorted({int(n) for t in res["tasks"].values() for n in t["by_length"]})
        lines += ["## RULER-style tasks: accuracy by length", "", f"Scoring: {res['scoring']}; chance {_fmt(res['chance'], 2)}", ""]
        rows = [[name] + [_fmt(t["by_length"].get(str(n)), 2) for n in lengths] + [_fmt(t["accuracy"], 2)]
                for name, t in res["tasks"].items()]
        rows.append(["**mean**"] + [_fmt(res["by_length"].get(str(n)), 2) for n in lengths] + [_fmt(res["accuracy"], 2)])
        lines += _table(["task"] + [str(n) for n in lengths] + ["all"], rows) + [""]
    if results.get("ppl"):
        lines += ["## Perplexity by position", ""]
        for length, res in results["ppl"]["by_length"].items():
            lines += [f"Length {length}: {res['documents']} documents, mean ppl {_fmt(res['ppl_mean'])}", ""]
            edges = res["bucket_edges"]
            rows = [[f"{a}-{b}", _fmt(n), _fmt(p), str(t)] for a, b, n, p, t in zip(edges, edges[1:], res["nll"], res["ppl"], res["tokens"])]
            lines += _table(["positions", "loss", "ppl", "tokens"], rows) + [""]
    if results.get("short"):
        s = results["short"]
        lines += ["## Short-context regression", ""]
        lines += _table(["length", "documents", "ppl", "baseline ppl", "ratio"],
                        [[str(s["length"]), str(s["documents"]), _fmt(s["ppl"]), _fmt(s["baseline_ppl"]), _fmt(s["ratio"])]])
        lines += ["", "ratio = ppl / baseline ppl; above 1 means short-context quality was lost.", ""]
    return "\n".join(lines)


def write(results: Dict, out_dir: str, use_matplotlib=None) -> Dict[str, str]:
    """Write results.json, results.md and the figures into out_dir; returns {name: path}."""
    os.makedirs(out_dir, exist_ok=True)
    files: Dict[str, str] = {}
    for task in ("passkey", "needle"):
        if results.get(task):
            grid = results[task]["grid"]
            path = os.path.join(out_dir, f"{task}_heatmap.png")
            heatmap(path, [[math.nan if a is None else a for a in row] for row in grid["accuracy"]],
                    grid["lengths"], grid["depths"], f"{task} accuracy", use_matplotlib)
            files[f"{task}_heatmap"] = path
    if results.get("ppl") and use_matplotlib is not False:
        path = os.path.join(out_dir, "ppl_by_position.png")
        if ppl_plot(path, results["ppl"]["by_length"], "loss by position"):
            files["ppl_plot"] = path
    files["markdown"] = os.path.join(out_dir, "results.md")
    files["json"] = os.path.join(out_dir, "results.json")
    with open(files["markdown"], "w") as f:
        f.write(markdown(results))
    with open(files["json"], "w") as f:
        json.dump({**results, "files": files}, f, indent=2, allow_nan=False)
    return files
