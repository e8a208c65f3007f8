"""Killing only the main process (what an OOM killer does) leaves no helper process of it alive."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_recipe.py")


def _descendants(pid: int) -> set:
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _alive(pids: set) -> list:
    alive = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return alive


def kill_main_mid_run(out, recipe, ready, timeout_s: float = 300.0) -> tuple:
    """Starts a training run, SIGKILLs its main PID once ready() is true, and returns (every process it had
    started, those still alive 5 s later)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, RUNNER, str(out), recipe], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = set()
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert proc.poll() is None, f"the run ended ({proc.returncode}) before the kill point"
            assert time.monotonic() < deadline, f"no kill point in {timeout_s} s"
            seen |= _descendants(proc.pid)
            time.sleep(0.01)
        seen |= _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the main process only, not its group
        proc.wait()
        time.sleep(5)
        return seen, _alive(seen)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left, so that a failure does not leak processes
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_killing_the_main_process_leaves_no_helper_alive(tmp_path, recipe_file):
    recipe = recipe_file(training={"train_steps": 400},
                         checkpoint={"save_interval": 1, "save_final": True, "keep_last": 2, "load": "none"})
    ckpt = os.path.join(os.path.dirname(recipe), "ckpt")

    def mid_save():  # a save in progress (its partial directory exists) after two were published
        names = os.listdir(ckpt) if os.path.isdir(ckpt) else []
        published = [n for n in names if n.startswith("iter_") and "." not in n]
        return len(published) >= 2 and any(n.endswith(".partial") for n in names)

    seen, alive = kill_main_mid_run(tmp_path / "out", recipe, mid_save)
    assert alive == [], f"still alive 5 s after the main process was killed: {alive} (it had started {len(seen)})"
