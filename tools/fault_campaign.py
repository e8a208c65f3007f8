"""python tools/fault_campaign.py --kills 20 [--kills-per-run 2] [--seed 0] [--work DIR]

Kills a small staged training run at random points with SIGKILL of its whole process group, relaunches
`megamid train` until the recipe is done, and checks the result against one uninterrupted run:
final checkpoint (weights, optimizer state, RNG, megamid state) bit-identical, every logged step's loss
identical, no leftover `*.partial` / `*.deleting` / `*.tmp` entries in the checkpoint folder, and no
process of a killed launch still alive. Prints one row per kill and the summary line
`N/N bit-identical, L leftovers, P stray processes`; exits 0 only when all hold.

Kill points (chosen at random, the kinds in turn):
  mid-save        when a new `iter_N.partial` directory appears (the save is writing its shards)
  phase-boundary  when metrics.jsonl logs a phase's last step (evaluation, final save, next phase set-up)
  mid-phase       when metrics.jsonl logs a random step inside a phase that is not a save step
  random          after a random delay within the expected length of the launch
A kill that comes too late (the launch finished first) is retried in a later run, so N kills land.
The tool only watches files and sends signals: it needs no hook in megamid.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("mid-save", "phase-boundary", "mid-phase", "random")
LEFTOVER_SUFFIXES = (".partial", ".deleting", ".tmp")
PHASES = [("warm", 6, {}), ("anneal", 4, {"lr": {"style": "linear", "peak_lr": 1.0e-3, "min_lr": 0.0}}),
          ("long", 4, {"seq_len": 64, "global_batch_size": 2, "micro_batch_size": 1,
                       "rope": {"type": "yarn", "theta": 10000, "factor": 2, "original_max_position_embeddings": 32}})]
SAVE_INTERVAL = 2
TOTAL_STEPS = sum(steps for _, steps, _ in PHASES)


def write_inputs(work: str) -> str:
    """A synthetic corpus and the staged recipe; returns the recipe path."""
    import yaml

    code = ("from megamid.data.synthetic import write_synthetic_corpus; from megamid.data.tokenizer import ByteTokenizer;"
            f"write_synthetic_corpus({os.path.join(work, 'syn')!r}, ByteTokenizer(), 300, 0);"
            f"write_synthetic_corpus({os.path.join(work, 'alt')!r}, ByteTokenizer(), 300, 1)")
    subprocess.run([sys.executable, "-c", code], check=True, env=_env(), capture_output=True)
    sources = [{"name": "syn", "prefix": os.path.join(work, "syn"), "weight": 0.7},
               {"name": "alt", "prefix": os.path.join(work, "alt"), "weight": 0.3}]
    recipe = {
        "name": "fault-campaign",
        "model": {"num_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "num_query_groups": 2,
                  "vocab_size": 258, "ffn_hidden_size": 64, "max_position_embeddings": 32},
        "training": {"global_batch_size": 4, "micro_batch_size": 2, "seq_len": 32, "train_steps": 1,
                     "lr": {"style": "cosine", "peak_lr": 2.0e-3, "min_lr": 2.0e-4, "warmup_steps": 1}, "seed": 3},
        "checkpoint": {"dir": "ckpt", "save_interval": SAVE_INTERVAL, "keep_last": 2},
        "data": {"sources": sources},
        "phases": [{"name": n, "steps": s, **extra} for n, s, extra in PHASES],
    }
    recipe["phases"][1]["data"] = {"sources": [{**sources[0], "weight": 0.2}, {**sources[1], "weight": 0.8}]}
    path = os.path.join(work, "recipe.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(recipe, f)
    return path


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# ---- one launch, and a kill at a chosen point -------------------------------------------------------

def _metrics(ckpt: str) -> list:
    """Records of CKPT/metrics.jsonl (a line torn by a kill is skipped)."""
    path = os.path.join(ckpt, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _partials(ckpt: str) -> set:
    return {n for n in os.listdir(ckpt) if n.endswith(".partial")} if os.path.isdir(ckpt) else set()


def _session_processes(sid: int) -> list:
    """PIDs whose session is `sid` (a launch starts its own session, so helpers it forks stay in it)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":    # fields: state ppid pgrp session ...
            pids.append(int(name))
    return pids


def launch(work: str, recipe: str, kill=None, log=None) -> dict:
    """Runs `megamid train RECIPE` in its own session; `kill(state) -> bool` is polled and, when true,
    the whole group gets SIGKILL. Returns {killed, rc, seconds, stray, note}."""
    out = open(log, "a") if log else subprocess.DEVNULL
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "megamid.cli", "train", recipe], cwd=work, env=_env(),
                            stdout=out, stderr=out, start_new_session=True)
    ckpt = os.path.join(work, "ckpt")
    state = {"start": start, "partials": _partials(ckpt), "ckpt": ckpt, "note": ""}
    killed = False
    while proc.poll() is None:
        if kill is not None and kill(state):
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.005)
    rc = proc.wait()
    seconds = time.monotonic() - start
    if not killed:
        try:
            os.killpg(proc.pid, 0)                     # anything left in the group after a normal exit?
        except ProcessLookupError:
            pass
    stray = []
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:                 # SIGKILL is asynchronous: give the kernel a moment
        stray = _session_processes(proc.pid)
        if not stray:
            break
        time.sleep(0.1)
    for pid in stray:                                  # count them, then do not leave them behind
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if log:
        out.close()
    return {"killed": killed, "rc": rc, "seconds": seconds, "stray": len(stray), "note": state["note"]}


def resume_step(ckpt: str) -> int:
    """The global step the next launch resumes from (0 before the first checkpoint)."""
    try:
        with open(os.path.join(ckpt, "latest")) as f:
            return int(f.read().strip().split("_")[1])
    except (OSError, IndexError, ValueError):
        return 0


def kill_point(kind: str, rng: random.Random, timing: dict, resumed: int):
    """(kind, predicate for `launch`): when to kill. Targets lie after the step the launch resumes from;
    a kind with no target left there becomes `random`."""
    boundaries, step = [], 0
    for _, steps, _ in PHASES:
        step += steps
        boundaries.append(step)
    total = boundaries[-1]
    saves_left = (total - resumed) // SAVE_INTERVAL        # every phase length is a multiple of the interval
    if kind == "mid-save" and saves_left:
        skip = rng.randrange(min(3, saves_left))           # the 1st, 2nd or 3rd save this launch starts

        def predicate(state):
            new = _partials(state["ckpt"]) - state["partials"]
            if new:
                state["partials"] |= new
                if state.setdefault("seen", 0) == skip:
                    state["note"] = f"{sorted(new)[0]} being written"
                    return True
                state["seen"] += 1
            return False
        return kind, predicate
    if kind == "phase-boundary":
        targets = [b for b in boundaries[:-1] if b > resumed]
    else:
        targets = [s for s in range(resumed + 1, total) if s % SAVE_INTERVAL and s not in boundaries]
    if kind in ("phase-boundary", "mid-phase") and targets:
        target = rng.choice(targets)

        def predicate(state):
            records = _metrics(state["ckpt"])
            state.setdefault("old", len(records))          # records of earlier launches do not count
            if any(r["global_step"] >= target for r in records[state["old"]:]):
                state["note"] = f"after step {target} was logged"
                return True
            return False
        return kind, predicate
    expected = timing["startup"] + timing["train"] * (total - resumed) / total
    delay = rng.uniform(0.5, max(1.0, 0.9 * expected))

    def predicate(state):
        if time.monotonic() - state["start"] >= delay:
            state["note"] = f"after {delay:.1f}s"
            return True
        return False
    return "random", predicate


# ---- comparisons ------------------------------------------------------------------------------------

def _same(a, b) -> bool:
    import numpy as np
    import torch

    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape \
            and torch.equal(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def final_checkpoint(ckpt: str) -> dict:
    """Everything the final checkpoint holds, as plain objects (torch.distributed.checkpoint read in one process)."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with open(os.path.join(ckpt, "latest")) as f:
        path = os.path.join(ckpt, f.read().strip())
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(path, os.path.join(tmp, "all.pt"))
        shards = torch.load(os.path.join(tmp, "all.pt"), weights_only=False)
    common = torch.load(os.path.join(path, "common.pt"), weights_only=False) \
        if os.path.isfile(os.path.join(path, "common.pt")) else None
    with open(os.path.join(path, "megamid.json")) as f:
        meta = json.load(f)
    return {"name": os.path.basename(path), "shards": shards, "common": common,
            "state": {"step": meta["step"], "state": meta["state"]}}


def leftovers(ckpt: str) -> list:
    return sorted(n for n in os.listdir(ckpt) if n.endswith(LEFTOVER_SUFFIXES)) if os.path.isdir(ckpt) else []


def compare(run_ckpt: str, reference: dict, reference_losses: dict) -> str:
    """'' when identical to the reference, else what differs."""
    losses = {}
    for r in _metrics(run_ckpt):
        losses.setdefault(r["global_step"], set()).add(r["loss"])
    if sorted(losses) != sorted(reference_losses):
        return f"logged steps {sorted(losses)} != {sorted(reference_losses)}"
    bad = [s for s, values in losses.items() if values != {reference_losses[s]}]
    if bad:
        return f"losses differ at steps {bad[:5]}"
    final = final_checkpoint(run_ckpt)
    for key in ("name", "state", "common", "shards"):
        if not _same(final[key], reference[key]):
            return f"final checkpoint differs in {key}"
    return ""


# ---- the campaign -----------------------------------------------------------------------------------

def run_campaign(kills: int, kills_per_run: int, seed: int, work: str, out=print) -> bool:
    rng = random.Random(seed)
    recipe_src = write_inputs(work)
    ref_dir = os.path.join(work, "reference")
    os.makedirs(ref_dir)
    shutil.copy(recipe_src, os.path.join(ref_dir, "recipe.yaml"))
    seen = {}

    def first_record(state):      # never kills: notes when the first step is logged (start-up time)
        if "t" not in seen and _metrics(state["ckpt"]):
            seen["t"] = time.monotonic() - state["start"]
        return False

    ref = launch(ref_dir, "recipe.yaml", first_record, log=os.path.join(ref_dir, "train.log"))
    startup = seen.get("t", 0.5 * ref["seconds"])
    timing = {"startup": startup, "train": max(ref["seconds"] - startup, 0.1)}
    if ref["rc"] != 0:
        out(f"the uninterrupted run failed (rc {ref['rc']}); see {ref_dir}/train.log")
        return False
    ref_ckpt = os.path.join(ref_dir, "ckpt")
    reference = final_checkpoint(ref_ckpt)
    reference_losses = {r["global_step"]: r["loss"] for r in _metrics(ref_ckpt)}
    out(f"reference: {len(reference_losses)} steps in {ref['seconds']:.1f}s, final {reference['name']}")
    queue = [KINDS[i % len(KINDS)] for i in range(kills)]
    rng.shuffle(queue)
    landed = identical = total_leftovers = missed = runs = 0
    total_stray = ref["stray"]
    header = f"{'kill':>4} {'run':>3} {'kind':<15} {'where':<36} {'launches':>8} {'result':<14}"
    out(header)
    out("-" * len(header))
    while queue and runs < 3 * kills:
        runs += 1
        run_dir = os.path.join(work, f"run{runs:02d}")
        ckpt = os.path.join(run_dir, "ckpt")
        os.makedirs(run_dir)
        shutil.copy(recipe_src, os.path.join(run_dir, "recipe.yaml"))
        pending, queue = queue[:kills_per_run], queue[kills_per_run:]
        notes, launches, stray, failed = [], 0, 0, ""
        while True:
            launches += 1
            if launches > 3 * kills_per_run + 6:
                failed = "gave up: too many launches"
                break
            resumed = resume_step(ckpt)
            kind, predicate = kill_point(pending[0], rng, timing, resumed) if pending else (None, None)
            result = launch(run_dir, "recipe.yaml", predicate, log=os.path.join(run_dir, "train.log"))
            stray += result["stray"]
            if result["killed"]:
                pending.pop(0)
                notes.append((kind, result["note"]))
                continue
            if result["rc"] != 0:
                failed = f"launch failed (rc {result['rc']})"
                break
            _adapt(timing, result["seconds"], resumed)
            missed += len(pending)        # the run finished before these kills: they go to a later run
            queue.extend(pending)
            break
        left = leftovers(ckpt)
        total_leftovers += len(left)
        total_stray += stray
        problem = failed or compare(ckpt, reference, reference_losses)
        for kind, note in notes:
            landed += 1
            good = not problem and not left and not stray
            identical += good
            result = "bit-identical" if good else (problem or f"{len(left)} leftover, {stray} stray")
            out(f"{landed:>4} {runs:>3} {kind:<15} {note[:36]:<36} {launches:>8} {result:<14}")
        if problem and not notes:
            out(f"{'-':>4} {runs:>3} {'-':<15} {'(no kill landed)':<36} {launches:>8} {problem:<14}")
    retried = f" ({missed} kill{'s' if missed != 1 else ''} that came too late retried in a later run)" if missed else ""
    summary = f"{identical}/{kills} bit-identical, {total_leftovers} leftovers, {total_stray} stray processes"
    out(f"{landed} kills over {runs} runs{retried}; {summary}")
    return identical == kills and total_leftovers == 0 and total_stray == 0


def _adapt(timing: dict, seconds: float, resumed: int) -> None:
    """A launch that finished sooner than expected scales the estimate down (the machine got faster)."""
    expected = timing["startup"] + timing["train"] * (TOTAL_STEPS - resumed) / TOTAL_STEPS
    if seconds < expected:
        timing["startup"] *= seconds / expected
        timing["train"] *= seconds / expected


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fault_campaign.py", description=__doc__.splitlines()[2])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs in all (default 20)")
    parser.add_argument("--kills-per-run", type=int, default=2, help="kills before a run may finish (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="folder for the runs (default: a temporary one, removed afterwards)")
    args = parser.parse_args(argv)
    if args.kills < 1 or args.kills_per_run < 1:
        parser.error("--kills and --kills-per-run must be >= 1")
    if args.work:
        os.makedirs(args.work, exist_ok=True)
        if os.listdir(args.work):
            parser.error(f"--work {args.work!r} is not empty")
        return 0 if run_campaign(args.kills, args.kills_per_run, args.seed, args.work) else 1
    with tempfile.TemporaryDirectory(prefix="fault_campaign_") as work:
        return 0 if run_campaign(args.kills, args.kills_per_run, args.seed, work) else 1


if __name__ == "__main__":
    sys.exit(main())
