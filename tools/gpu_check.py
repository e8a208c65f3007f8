"""python tools/gpu_check.py [--out runs/gpu_check/gpu_check.json] [--skip build,tests,bench,train,resume,long,fp8]
                            [--steps 20] [--long-steps 4] [--size 1b|small]      (what `make gpu-check` runs)

The one-GPU acceptance run (H100/H200, < 8 minutes, with or without Transformer Engine): builds the CUDA
extension for this GPU, runs the gpu-marked tests, benchmarks/rope.py and benchmarks/attention.py, trains a
~1B Llama for --steps steps at 8K, resumes a copy of that run from a mid-run checkpoint (its losses must
equal the straight run's), trains --long-steps steps at 32K with full recompute, and with TE compares
BF16 against FP8 over --steps steps. Each training run is a child process (`--child SPEC`); its peak
allocated memory is set against megamid.recipe.memory's estimate for the same settings. Writes one JSON
(every stage: status, seconds, output tail, numbers) and prints the table. Exits 2 without CUDA.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("build", "tests", "bench", "train", "resume", "long", "fp8")
# ~1B Llama (18 layers, hidden 2048, GQA 16/8, SwiGLU 5632, 32K vocabulary: 0.98B parameters); `small` for a smoke run
MODELS = {
    "1b": dict(num_layers=18, hidden_size=2048, num_attention_heads=16, num_query_groups=8, ffn_hidden_size=5632,
               vocab_size=32768),
    "small": dict(num_layers=4, hidden_size=512, num_attention_heads=8, num_query_groups=4, ffn_hidden_size=1536,
                  vocab_size=32768),
}
RESUME_TOLERANCE = 2e-3   # GPU kernels (atomics in attention backward) are not bitwise deterministic
WARMUP_STEPS = 3          # steps left out of the throughput median (compilation, allocator growth)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("runs", "gpu_check", "gpu_check.json"))
    parser.add_argument("--work-dir", default=None, help="data and checkpoints (default: next to --out)")
    parser.add_argument("--skip", default="", help=f"comma-separated stages to skip: {', '.join(STAGES)}")
    parser.add_argument("--steps", type=int, default=20, help="steps of the 8K runs")
    parser.add_argument("--long-steps", type=int, default=4, help="steps of the 32K run")
    parser.add_argument("--size", choices=sorted(MODELS), default="1b")
    parser.add_argument("--stage-timeout", type=int, default=300, help="seconds before a stage is stopped")
    parser.add_argument("--table", metavar="JSON", help="print the table of an earlier run's JSON and exit")
    parser.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)   # one training run (internal)
    args = parser.parse_args(argv)
    skip = [s for s in args.skip.split(",") if s]
    unknown = sorted(set(skip) - set(STAGES))
    if unknown:
        parser.error(f"--skip {unknown[0]!r} is not a stage; valid: {', '.join(STAGES)}")
    if args.steps < 2 or args.long_steps < 1:
        parser.error("--steps must be >= 2 (the resume check splits it) and --long-steps >= 1")
    args.skip = set(skip)
    args.work_dir = args.work_dir or os.path.join(os.path.dirname(os.path.abspath(args.out)), "work")
    return args


# ---- runs ----------------------------------------------------------------------------------------

def recipe_dict(size: str, seq_len: int, steps: int, ckpt_dir: str, data_prefix: str, recompute: str = "none",
                fp8=None, global_batch_size: int = 8, save_interval=None) -> dict:
    """The recipe of one training run: one phase of `steps` steps on the synthetic corpus."""
    phase = {"name": "main", "steps": steps}
    if fp8 is not None:
        phase["fp8"] = fp8   # per-phase FP8: taken once phases carry it (megamid.config.fp8)
    return {
        "name": f"gpu-check-{seq_len // 1024}k",
        "tokenizer": "byte",
        "model": dict(MODELS[size], max_position_embeddings=seq_len, dtype="bf16",
                      rope={"type": "default", "theta": 500000.0}),
        "training": {"global_batch_size": global_batch_size, "micro_batch_size": 1, "seq_len": seq_len,
                     "train_steps": steps, "lr": {"style": "constant", "peak_lr": 3.0e-4}, "log_interval": 1,
                     "recompute": recompute, "seed": 1234},
        "checkpoint": {"dir": ckpt_dir, "save_interval": save_interval, "save_final": save_interval is not None},
        "data": {"pack": True, "seed": 1234, "sources": [{"name": "synthetic", "prefix": data_prefix, "weight": 1.0}]},
        "phases": [phase],
    }


def write_corpus(prefix: str, tokens: int, seed: int = 0) -> None:
    """Random byte documents of 1K-16K tokens (throughput and resume checks need no meaning)."""
    import numpy as np

    from megamid.data.synthetic import write_indexed

    if os.path.exists(prefix + ".idx"):
        return
    rng = np.random.default_rng(seed)
    docs, total = [], 0
    while total < tokens:
        n = int(rng.integers(1024, 16384))
        docs.append(rng.integers(0, 256, size=n))
        total += n
    write_indexed(prefix, docs, vocab_size=258)


def child(spec_path: str) -> int:
    """Runs one recipe in this process; writes {history, peak_allocated_bytes} to spec['result']."""
    import torch
    import yaml

    from megamid.config import RecipeConfig, build
    from megamid.platform import shutdown
    from megamid.recipe import plan_recipe
    from megamid.train.loop import Trainer

    with open(spec_path) as f:
        spec = json.load(f)
    plan = plan_recipe(build(RecipeConfig, spec["recipe"]), world_size=1)
    cuda = torch.cuda.is_available()   # (the CPU test of this function runs without)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        result = Trainer(plan, exit_after_steps=spec.get("exit_after_steps")).run()
    finally:
        shutdown()
    keep = ("step", "global_step", "loss", "tokens_per_s", "tflops_per_device", "mfu")
    out = {"history": [{k: m.get(k) for k in keep} for m in result["history"]],
           "peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None, "finished": result["finished"],
           "recipe": yaml.safe_dump(spec["recipe"])}
    with open(spec["result"], "w") as f:
        json.dump(out, f)
    return 0


def run_command(cmd: list, timeout: int, env=None) -> dict:
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        status, output = ("ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"), proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        status, output = f"timed out after {timeout} s", (exc.stdout or b"").decode(errors="replace") \
            if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    return {"status": status, "seconds": round(time.perf_counter() - start, 1), "output_tail": output[-4000:]}


def train_run(name: str, recipe: dict, work: str, timeout: int, env: dict, exit_after_steps=None) -> dict:
    spec = {"recipe": recipe, "result": os.path.join(work, f"{name}.result.json"), "exit_after_steps": exit_after_steps}
    spec_path = os.path.join(work, f"{name}.spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    stage = run_command([sys.executable, os.path.join(ROOT, "tools", "gpu_check.py"), "--child", spec_path],
                        timeout, env)
    if stage["status"] == "ok" and os.path.exists(spec["result"]):
        with open(spec["result"]) as f:
            stage.update(json.load(f))
    return stage


# ---- numbers ---------------------------------------------------------------------------------------

def median(values):
    values = sorted(v for v in values if v is not None and math.isfinite(v))
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def summarize(run: dict, peak_tflops=None) -> dict:
    """Median tokens/s and TFLOP/s after the warm-up steps, MFU against `peak_tflops`, last loss, peak GiB."""
    history = run.get("history") or []
    steady = history[WARMUP_STEPS:] or history
    tflops = median(m.get("tflops_per_device") for m in steady)
    return {"tokens_per_s": median(m.get("tokens_per_s") for m in steady), "tflops": tflops,
            "mfu": tflops / peak_tflops if tflops is not None and peak_tflops else None,
            "final_loss": history[-1]["loss"] if history else None,
            "peak_gib": run["peak_allocated_bytes"] / 2 ** 30 if run.get("peak_allocated_bytes") else None}


def resume_check(straight: list, resumed: list, tolerance: float = RESUME_TOLERANCE) -> dict:
    """Losses by global step of a straight run and of a stopped-and-resumed one, compared where both have them."""
    a = {m["global_step"]: m["loss"] for m in straight}
    b = {m["global_step"]: m["loss"] for m in resumed}
    steps = sorted(set(a) & set(b))
    if not steps:
        return {"steps": [], "max_abs_diff": None, "equal": False}
    diff = max(abs(a[s] - b[s]) for s in steps)
    return {"steps": steps, "max_abs_diff": diff, "equal": diff <= tolerance}


def estimate_gib(recipe: dict, fp8=None) -> float:
    """megamid's estimate of what torch allocates for `recipe` on one GPU (the runtime reserve left out:
    the CUDA context and NCCL are outside torch's allocator)."""
    from megamid.config import ModelConfig, ParallelConfig
    from megamid.config.recompute import RecomputeConfig
    from megamid.recipe.memory import GIB, estimate_memory

    model = ModelConfig(**recipe["model"])
    t = recipe["training"]
    est = estimate_memory(model, ParallelConfig(), seq_len=t["seq_len"], micro_batch_size=t["micro_batch_size"],
                          num_microbatches=t["global_batch_size"] // t["micro_batch_size"], data_parallel_size=1,
                          recompute=RecomputeConfig.from_value(t["recompute"]), fp8=fp8).peak
    return (est.total - est.runtime) / GIB


# ---- the table ----------------------------------------------------------------------------------------

def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def format_table(report: dict) -> str:
    """The printed table of a gpu_check JSON: stages, then one row per training run."""
    gpu = report.get("gpu") or {}
    lines = [f"gpu-check on {gpu.get('name', '?')} ({gpu.get('catalogue') or 'not in the catalogue'}), "
             f"TE {'yes' if report.get('te') else 'no'}, model {report.get('size', '?')}"]
    for name in STAGES:
        stage = (report.get("stages") or {}).get(name)
        if stage is not None and name in ("build", "tests", "bench"):
            lines.append(f"  {name:<7} {stage['status']} ({stage.get('seconds', 0):.0f} s)")
    header = ["run", "seq_len", "steps", "tokens/s", "TFLOP/s", "MFU", "peak GiB", "plan GiB", "peak/plan", "loss"]
    rows = [header]
    for name, run in (report.get("runs") or {}).items():
        s = run.get("summary") or {}
        plan = run.get("plan_gib")
        ratio = s["peak_gib"] / plan if s.get("peak_gib") and plan else None
        if run.get("status", "ok") != "ok":
            rows.append([name, str(run.get("seq_len", "")), "", run["status"], "", "", "", "", "", ""])
            continue
        rows.append([name, str(run.get("seq_len", "")), str(len(run.get("history") or [])),
                     _fmt(s.get("tokens_per_s"), ".0f"), _fmt(s.get("tflops"), ".0f"),
                     _fmt(None if s.get("mfu") is None else 100 * s["mfu"], ".1f") + ("%" if s.get("mfu") else ""),
                     _fmt(s.get("peak_gib"), ".1f"), _fmt(plan, ".1f"), _fmt(ratio, ".2f"),
                     _fmt(s.get("final_loss"), ".4f")])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for k, row in enumerate(rows):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    resume = report.get("resume")
    if resume:
        lines.append(f"save/resume: losses at steps {resume['steps'][0]}-{resume['steps'][-1]} "
                     f"{'equal' if resume['equal'] else 'DIFFER'} (max |diff| {_fmt(resume['max_abs_diff'], '.2e')}, "
                     f"tolerance {RESUME_TOLERANCE:g})" if resume["steps"] else "save/resume: no common steps")
    fp8 = report.get("fp8")
    if fp8:
        lines.append(f"fp8 vs bf16: {fp8}")
    return "\n".join(lines)


# ---- the whole check --------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args.child)
    if args.table:
        with open(args.table) as f:
            print(format_table(json.load(f)))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False): run `make gpu-check` on a "
              "machine with one H100/H200 (e.g. inside the Dockerfile's image)", file=sys.stderr)
        return 2
    sys.path.insert(0, ROOT)
    from megamid.recipe.gpus import gpu_from_device_name

    props = torch.cuda.get_device_properties(0)
    spec = gpu_from_device_name(props.name, props.total_memory / 2 ** 30)
    try:
        import transformer_engine  # noqa: F401
        te = True
    except Exception:  # TE raises more than ImportError without its libraries
        te = False
    os.makedirs(args.work_dir, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MEGAMID_BUILD_CUDA="1", MEGAMID_CUDA_ARCHS="%d%d" % torch.cuda.get_device_capability(0))
    report = {"gpu": {"name": props.name, "memory_gib": round(props.total_memory / 2 ** 30, 1),
                      "catalogue": spec.name if spec else None},
              "te": te, "size": args.size, "stages": {}, "runs": {}}
    stages, timeout = report["stages"], args.stage_timeout
    if "build" not in args.skip:
        stages["build"] = run_command([sys.executable, "setup.py", "build_ext", "--inplace"], timeout, env)
    if "tests" not in args.skip:
        stages["tests"] = run_command([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests",
                                       "--basetemp", os.path.join(args.work_dir, "pytest")], timeout, env)
    if "bench" not in args.skip:
        stages["bench"] = run_command([sys.executable, "benchmarks/rope.py", "--iters", "20", "--shapes", "8k,32k,thd"],
                                      timeout, env)
        attention = run_command([sys.executable, "benchmarks/attention.py", "--seqs", "8k,32k", "--iters", "3"],
                                timeout, env)
        stages["bench"]["output_tail"] += "\n" + attention["output_tail"]
        stages["bench"]["seconds"] += attention["seconds"]
        if attention["status"] != "ok":
            stages["bench"]["status"] = f"attention benchmark {attention['status']}"
    prefix = os.path.join(args.work_dir, "data", "synthetic_text_document")
    write_corpus(prefix, tokens=(args.steps + 2) * 8 * 8192 + (args.long_steps + 1) * 2 * 32768)
    peak = (spec.bf16_tflops if spec else None)

    def add_run(name, recipe, exit_after=None, fp8=None):
        run = train_run(name, recipe, args.work_dir, timeout, env, exit_after)
        run["seq_len"] = recipe["training"]["seq_len"]
        run["plan_gib"] = estimate_gib(recipe, fp8)
        run["summary"] = summarize(run, (spec.fp8_tflops if fp8 and spec else peak))
        report["runs"][name] = run
        return run

    ckpt = lambda name: os.path.join(args.work_dir, "ckpt", name)  # noqa: E731
    if "train" not in args.skip:
        straight = add_run("bf16-8k", recipe_dict(args.size, 8192, args.steps, ckpt("straight"), prefix))
        if "resume" not in args.skip:
            half = args.steps // 2
            resumed_recipe = recipe_dict(args.size, 8192, args.steps, ckpt("resumed"), prefix, save_interval=half)
            first = train_run("resume-first-half", resumed_recipe, args.work_dir, timeout, env, half)
            second = add_run("bf16-8k-resumed", resumed_recipe)
            report["resume"] = resume_check(straight.get("history") or [], (first.get("history") or [])
                                            + (second.get("history") or []))
        if "fp8" not in args.skip and te:
            fp8 = {"format": "hybrid", "recipe": "tensorwise"}
            run = add_run("fp8-8k", recipe_dict(args.size, 8192, args.steps, ckpt("fp8"), prefix, fp8=fp8), fp8=fp8)
            a, b = straight.get("summary") or {}, run.get("summary") or {}
            if a.get("tokens_per_s") and b.get("tokens_per_s"):
                report["fp8"] = (f"{b['tokens_per_s'] / a['tokens_per_s']:.2f}x tokens/s, final loss "
                                 f"{_fmt(b.get('final_loss'), '.4f')} vs {_fmt(a.get('final_loss'), '.4f')}")
            else:
                report["fp8"] = f"not compared: {run['status']}"
    if "long" not in args.skip:
        add_run("bf16-32k-full", recipe_dict(args.size, 32768, args.long_steps, ckpt("long"), prefix,
                                             recompute="full", global_batch_size=2))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(format_table(report))
    print(f"gpu-check: wrote {args.out}")
    failed = [n for n, s in stages.items() if s["status"] != "ok"]
    failed += [n for n, r in report["runs"].items() if r.get("status") != "ok"]
    if report.get("resume") and not report["resume"]["equal"]:
        failed.append("resume")
    if failed:
        print(f"gpu-check: not passed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
