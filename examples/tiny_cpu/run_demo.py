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
        f.write(f"\nCheckpoints: `{ckpt}` (latest: {open(os.path.join(ckpt, 'latest')).read().strip()})\n")
    print(f"\ndemo finished in {time.time() - start:.0f} s; report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
