"""pytest tests/e2e/test_demo.py   (slow: `make demo`'s script end to end, every phase a few steps, ~40 s)

examples/tiny_cpu/run_demo.py as `make demo` runs it (demo corpus -> the synthetic retrieval sets with loss
masks -> train, stopped mid-phase -> relaunch, resumed -> report), with overrides that shorten every phase
of the example recipe. Checks the joins, not the learning (the full demo's numbers are in the README):
each command ran, the run stopped and resumed, every evaluation reached the report, the task sources
trained, and a failing command stops the demo with megamid's message and status, without a traceback.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "examples", "tiny_cpu", "run_demo.py")
SHORT = ["training.lr.warmup_steps=1", "phases.0.steps=4", "phases.0.eval.interval=2", "phases.1.steps=2",
         "phases.2.steps=2", "phases.3.steps=2", "phases.4.steps=2", "phases.3.lr.warmup_steps=0",
         "phases.4.lr.warmup_steps=0", "checkpoint.save_interval=null"]

pytestmark = pytest.mark.slow


def run_demo(out, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, DEMO, "--out", str(out), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


def test_the_demo_runs_every_phase_resumes_and_reports_each_evaluation(tmp_path):
    proc = run_demo(tmp_path / "demo", "--exit-after", "2", *SHORT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr  # megamid logs to stderr
    for folder in ("tasks", "tasks256", "tasks512"):
        assert f"$ megamid data synthetic corpus/{folder} " in out
        assert os.path.isfile(tmp_path / "demo" / "corpus" / folder / "passkey_train.lossmask.bin")
    assert "stopped early" in out and "resumed from checkpoints/iter_0000002 (phase induction, step 2)" in out
    report = (tmp_path / "demo" / "report.md").read_text()
    section = report.split("## Long-context evaluation during the run")[1]
    table = next(block for block in section.split("\n\n") if block.startswith("| phase | step | passkey@128 |"))
    evals = [tuple(cell.strip() for cell in line.strip("|").split("|")[:2]) for line in table.splitlines()[2:]]
    # every evaluation (the curriculum's every 2 steps and each phase's end), by global step
    assert evals == [("induction", "2"), ("induction", "4"), ("pretrain", "6"), ("anneal", "8"), ("ctx256", "10"),
                     ("ctx512", "12")]
    assert "Retrieval forms during `induction`: passkey@128" in report
    ckpt = tmp_path / "demo" / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "iter_0000012"
    metrics = [json.loads(line) for line in open(ckpt / "metrics.jsonl")]
    assert {"copy", "passkey"} <= set(metrics[0]["loss_by_source"]), metrics[0]


def test_a_failing_command_stops_the_demo_with_megamids_message(tmp_path):
    proc = run_demo(tmp_path / "demo", "phases.0.seq_len=256")
    assert proc.returncode == 2
    assert "phases[induction].seq_len=256 is invalid" in proc.stderr
    assert "demo: `megamid train" in proc.stderr and "failed with exit status 2" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "demo" / "checkpoints")
