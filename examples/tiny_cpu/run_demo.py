"""python examples/tiny_cpu/run_demo.py --out runs/demo   (what `make demo` runs)

Builds the local demo corpus (no download), trains the tiny staged recipe for half its first phase,
stops, relaunches to resume from the checkpoint and finish every phase, then writes a report.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def megamid(*args, cwd):
    cmd = [sys.executable, "-m", "megamid.cli", *args]
    print("$ megamid " + " ".join(args), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def eval_report(ckpt: str) -> list:
    """Markdown lines: passkey and perplexity by position at the end of each phase, from the
    results the trainer wrote to CKPT/eval/<phase>/step_<N>/results.json."""
    runs = []
    root = os.path.join(ckpt, "eval")
    for phase in os.listdir(root) if os.path.isdir(root) else []:
        steps = [d for d in os.listdir(os.path.join(root, phase)) if d.startswith("step_")]
        if steps:
            last = max(steps, key=lambda d: int(d.split("_")[1]))
            runs.append(json.load(open(os.path.join(root, phase, last, "results.json"))))
    if not runs:
        return []
    runs.sort(key=lambda r: r["global_step"] or 0)
    lengths = runs[0]["config"]["lengths"]
    lines = ["", "## Long-context evaluation at the end of each phase", "",
             f"passkey@N: how often the model ranks the right pass key first among "
             f"{runs[0]['config']['num_candidates']} candidates (chance {runs[0]['passkey']['chance']:.2f}) in an "
             "N-token prompt, mean over depths; ppl@N: perplexity over the first N tokens of the last documents "
             "of the long source (the run never reads that far into it).", "",
             "| phase | step | " + " | ".join(f"passkey@{n}" for n in lengths) + " | "
             + " | ".join(f"ppl@{n}" for n in lengths) + " |", "|---|---|" + "---|" * 2 * len(lengths)]
    for r in runs:
        grid = r["passkey"]["grid"]
        acc = [_mean(row[i] for row in grid["accuracy"]) for i in range(len(grid["lengths"]))]
        ppl = [r["ppl"]["by_length"][str(n)]["ppl_mean"] for n in lengths]
        lines.append(f"| {r['phase']} | {r['global_step']} | " + " | ".join(_fmt(a) for a in acc) + " | "
                     + " | ".join(_fmt(p, ".1f") for p in ppl) + " |")
    for n in lengths:
        edges = runs[0]["ppl"]["by_length"][str(n)]["bucket_edges"]
        lines += ["", f"Perplexity by position at {n} tokens (falling: the model uses the context; rising past "
                      "the trained length: it does not extrapolate)", "",
                  "| phase | " + " | ".join(f"{a}-{b}" for a, b in zip(edges, edges[1:])) + " |",
                  "|---|" + "---|" * (len(edges) - 1)]
        for r in runs:
            lines.append(f"| {r['phase']} | " + " | ".join(_fmt(p, ".1f") for p in r["ppl"]["by_length"][str(n)]["ppl"]) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--fresh", action="store_true", help="delete earlier checkpoints in OUT first")
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    recipe = os.path.join(HERE, "recipe.yaml")
    ckpt = os.path.join(out, "checkpoints")
    if args.fresh and os.path.isdir(ckpt):
        import shutil

        shutil.rmtree(ckpt)
    start = time.time()
    if not os.path.isfile(os.path.join(out, "corpus", "corpus.json")):
        megamid("data", "demo-corpus", "corpus", cwd=out)
    if not os.path.isfile(os.path.join(ckpt, "latest")):
        megamid("train", recipe, "--exit-after-steps", "20", cwd=out)     # stop mid-phase ...
    megamid("train", recipe, cwd=out)                                     # ... and resume to the end
    rows = [json.loads(line) for line in open(os.path.join(ckpt, "metrics.jsonl"))]
    report = os.path.join(out, "report.md")
    with open(report, "w") as f:
        f.write("# megamid tiny CPU demo\n\n| phase | step | loss | lr | grad norm | tokens/s |\n|---|---|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['phase']} | {r['step']} | {r['loss']:.4f} | {r['lr']:.2e} | {r['grad_norm']:.3f} | "
                    f"{r['tokens_per_s']:.0f} |\n")
        f.write("\n".join(eval_report(ckpt)) + "\n")
        f.write(f"\nCheckpoints: `{ckpt}` (latest: {open(os.path.join(ckpt, 'latest')).read().strip()}); "
                f"evaluation results: `{os.path.join(ckpt, 'eval')}`\n")
    print(f"\ndemo finished in {time.time() - start:.0f} s; report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
