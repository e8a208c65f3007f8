"""python -m pytest -q tests/tools/test_fault_campaign.py   (slow: about a dozen short launches)

tools/fault_campaign.py with 3 kills (mid-save, phase boundary, mid-phase or random, SIGKILL of the
whole process group): every run resumes to a final checkpoint and per-step losses bit-identical to an
uninterrupted run, with no leftover partial/deleting entries and no stray process."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_three_kills_resume_bit_identical(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "fault_campaign.py"), "--kills", "3",
                           "--kills-per-run", "3", "--seed", "1", "--work", str(tmp_path / "campaign")],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].endswith(
        "3/3 bit-identical, 0 leftovers, 0 stray processes"), proc.stdout
    rows = [line for line in proc.stdout.splitlines() if re.match(r"^\s*\d+\s+\d+\s+[a-z-]+\s", line)]
    assert len(rows) == 3 and all(r.rstrip().endswith("bit-identical") for r in rows), proc.stdout


def test_kill_points_target_steps_after_the_resume_point():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import random

    import fault_campaign as fc

    timing = {"startup": 1.0, "train": 1.0}
    rng = random.Random(0)
    assert fc.kill_point("phase-boundary", rng, timing, 6)[0] == "phase-boundary"     # 10 is still ahead
    assert fc.kill_point("phase-boundary", rng, timing, 10)[0] == "random"            # no boundary left
    assert fc.kill_point("mid-save", rng, timing, 14)[0] == "random"                  # no save left
    assert fc.leftovers("/nonexistent") == []
