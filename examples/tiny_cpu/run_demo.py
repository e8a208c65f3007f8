"""python examples/tiny_cpu/run_demo.py --out runs/demo   (what `make demo` runs)

Builds the local demo corpus and the synthetic retrieval documents (no download), trains the tiny staged
recipe for half its first phase, stops, relaunches to resume from the checkpoint and finish every phase,
then writes a report. Extra arguments are recipe overrides for both launches (the test's few-step run).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


# Passkey and copy documents with answer-only loss masks (`megamid data synthetic --placed`): every document
# exactly the window it trains in, the task at a random offset, so windows hold whole tasks.
# The first also writes code_heldout: Python files of the installed packages (the corpus's code is the
# stdlib), the held-out text of the in-loop perplexity.
TASKS = [  # (folder under corpus/, tasks, min length, window, documents, held-out code files)
    ("tasks", "passkey,copy", 88, 128, 4000, 8),
    ("tasks256", "passkey", 176, 256, 400, 0),
    ("tasks512", "passkey", 352, 512, 300, 0),
]


class CommandFailed(Exception):
    pass


def megamid(*args, cwd):
    """Runs `megamid ARGS` in `cwd`; a failure (megamid printed why) stops the demo with its exit status."""
    cmd = [sys.executable, "-m", "megamid.cli", *args]
    print("$ megamid " + shlex.join(args), flush=True)
    rc = subprocess.run(cmd, cwd=cwd).returncode
    if rc != 0:
        raise CommandFailed(f"demo: `megamid {shlex.join(args)}` failed with exit status {rc} (in {cwd})", rc)


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def _passkey_by_length(result: dict) -> list:
    grid = result["passkey"]["grid"]
    return [_mean(row[i] for row in grid["accuracy"]) for i in range(len(grid["lengths"]))]


def eval_report(ckpt: str) -> list:
    """Markdown lines: passkey and perplexity at every evaluation of the run (each phase's end and every
    `interval` steps), from the results the trainer wrote to CKPT/eval/<phase>/step_<N>/results.json, and
    perplexity by position at the end of each phase."""
    runs = []
    root = os.path.join(ckpt, "eval")
    for phase in os.listdir(root) if os.path.isdir(root) else []:
        for step in os.listdir(os.path.join(root, phase)):
            path = os.path.join(root, phase, step, "results.json")
            if step.startswith("step_") and os.path.isfile(path):
                runs.append(json.load(open(path)))
    if not runs:
        return []
    runs.sort(key=lambda r: r["global_step"] or 0)
    lengths = runs[0]["config"]["lengths"]
    chance = runs[0]["passkey"]["chance"]
    lines = ["", "## Long-context evaluation during the run", "",
             f"passkey@N: how often the model ranks the right pass key first among "
             f"{runs[0]['config']['num_candidates']} candidates (chance {chance:.2f}) in an "
             "N-token prompt, mean over depths; ppl@N: perplexity over the first N tokens of held-out Python files "
             "(`corpus/tasks/code_heldout`: installed packages; the training code is the standard library).", ""]
    first, last = runs[0], max((r for r in runs if r["phase"] == runs[0]["phase"]), key=lambda r: r["global_step"])
    a, b = _passkey_by_length(first)[0], _passkey_by_length(last)[0]
    if a is not None and b is not None:
        lines += [f"Retrieval forms during `{first['phase']}`: passkey@{lengths[0]} {a:.2f} at step "
                  f"{first['global_step']}, {b:.2f} at step {last['global_step']} (chance {chance:.2f}).", ""]
    lines += ["| phase | step | " + " | ".join(f"passkey@{n}" for n in lengths) + " | "
              + " | ".join(f"ppl@{n}" for n in lengths) + " |", "|---|---|" + "---|" * 2 * len(lengths)]
    for r in runs:
        ppl = [r["ppl"]["by_length"][str(n)]["ppl_mean"] for n in lengths]
        lines.append(f"| {r['phase']} | {r['global_step']} | " + " | ".join(_fmt(a) for a in _passkey_by_length(r))
                     + " | " + " | ".join(_fmt(p, ".1f") for p in ppl) + " |")
    ends = [max((r for r in runs if r["phase"] == p), key=lambda r: r["global_step"])
            for p in dict.fromkeys(r["phase"] for r in runs)]
    for n in lengths:
        edges = runs[0]["ppl"]["by_length"][str(n)]["bucket_edges"]
        lines += ["", f"Perplexity by position at {n} tokens at the end of each phase (falling: the model uses the "
                      "context; rising past the trained length: it does not extrapolate)", "",
                  "| phase | " + " | ".join(f"{a}-{b}" for a, b in zip(edges, edges[1:])) + " |",
                  "|---|" + "---|" * (len(edges) - 1)]
        for r in ends:
            lines.append(f"| {r['phase']} | " + " | ".join(_fmt(p, ".1f") for p in r["ppl"]["by_length"][str(n)]["ppl"]) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--fresh", action="store_true", help="delete earlier checkpoints in OUT first")
    parser.add_argument("--exit-after", type=int, default=100, help="steps of the first launch (mid-phase)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides (key.sub=value) for both launches")
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
    for folder, tasks, lo, window, docs, code in TASKS:
        if not os.path.isfile(os.path.join(out, "corpus", folder, "synthetic.json")):
            megamid("data", "synthetic", f"corpus/{folder}", "--tasks", tasks, "--placed", "--min-length", str(lo),
                    "--max-length", str(window), "--train-docs", str(docs), "--heldout-lengths", "",
                    "--code-docs", str(code), "--code-length", "512", cwd=out)
    if not os.path.isfile(os.path.join(ckpt, "latest")):
        megamid("train", recipe, "--exit-after-steps", str(args.exit_after), *args.overrides, cwd=out)  # stop ...
    megamid("train", recipe, *args.overrides, cwd=out)  # ... and resume to the end
    rows = [json.loads(line) for line in open(os.path.join(ckpt, "metrics.jsonl"))]
    report = os.path.join(out, "report.md")
    with open(report, "w") as f:
        f.write("# megamid tiny CPU demo\n\n| phase | step | loss | lr | grad norm | tokens/s |\n|---|---|---|---|---|---|\n")
        for i, r in enumerate(rows):  # every 20th step of a phase and its last
            if r["step"] % 20 and i + 1 < len(rows) and rows[i + 1]["phase"] == r["phase"]:
                continue
            f.write(f"| {r['phase']} | {r['step']} | {r['loss']:.4f} | {r['lr']:.2e} | {r['grad_norm']:.3f} | "
                    f"{r['tokens_per_s']:.0f} |\n")
        f.write("\n".join(eval_report(ckpt)) + "\n")
        f.write(f"\nCheckpoints: `{ckpt}` (latest: {open(os.path.join(ckpt, 'latest')).read().strip()}); "
                f"evaluation results: `{os.path.join(ckpt, 'eval')}`\n")
    print(f"\ndemo finished in {time.time() - start:.0f} s; report: {report}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CommandFailed as exc:
        print(exc.args[0], file=sys.stderr)
        sys.exit(exc.args[1])
