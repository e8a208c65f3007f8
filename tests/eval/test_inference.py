"""pytest tests/eval/test_inference.py   (MegatronLM and megamid.load on a checkpoint made by `megamid train`)

`megamid eval` on the tiny run's checkpoint end to end, and the adapter under TP=2, PP=2 and interleaved
PP=2 x 2 (and megamid.load at tp=2 and pp=2) in one two-process gloo launch: logits and log-probs equal to TP=1's within 1e-5, the same
on every rank, and the model back in train mode afterwards.
"""

import json
import os
import subprocess
import sys

import pytest

import tiny_run
from megamid.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run.trained(str(tmp_path_factory.getbasetemp() / "tiny_eval_run"))


def test_megamid_eval_on_a_trained_checkpoint(run_dir, tmp_path):
    out = tmp_path / "eval"
    proc = tiny_run.megamid("eval", run_dir["ckpt"], "--tasks", "passkey,ppl", "--lengths", "320", "--samples", "1",
                            "--depths", "0,1", "--documents", run_dir["corpus"], "--max-documents", "2", "--out", out)
    summary = json.loads(proc.stdout.splitlines()[0])
    assert set(summary) == {"passkey", "ppl"} and summary["ppl"]["320"] > 1
    results = json.load(open(out / "results.json"))
    assert results["passkey"]["samples"] == 2 and results["passkey"]["grid"]["lengths"] == [320]
    ppl = results["ppl"]["by_length"]["320"]
    assert ppl["documents"] == 2 and len(ppl["nll"]) == 8 and all(v is not None for v in ppl["nll"])
    # an untrained byte model is near uniform over 258 tokens; 4 steps already beat it
    assert 1 < ppl["ppl_mean"] < 258
    assert (out / "results.md").exists() and (out / "passkey_heatmap.png").exists()


def test_megamid_eval_under_another_rope(run_dir, tmp_path):
    """--rope: the checkpoint evaluated zero-shot under linear x4 (theta from the checkpoint) scores other ppl."""
    args = ["--tasks", "ppl", "--lengths", "320", "--documents", run_dir["corpus"], "--max-documents", "2"]
    own = json.loads(tiny_run.megamid("eval", run_dir["ckpt"], *args, "--out", tmp_path / "own").stdout.splitlines()[0])
    proc = tiny_run.megamid("eval", run_dir["ckpt"], *args, "--rope", "pi:factor=4", "--out", tmp_path / "pi")
    pi = json.loads(proc.stdout.splitlines()[0])
    assert pi["ppl"]["320"] != own["ppl"]["320"]
    results = json.load(open(tmp_path / "pi" / "results.json"))
    assert results["config"]["rope"]["type"] == "pi" and results["config"]["rope"]["factor"] == 4
    assert json.load(open(tmp_path / "own" / "results.json"))["config"]["rope"] is None


@pytest.mark.parametrize("rope, message", [
    ("yarn:factor=-1,original_max_position_embeddings=32", "--rope: rope.factor=-1.0 is invalid: must be >= 1"),
    ("yarn:factor=2", "--rope: rope.original_max_position_embeddings=None is invalid: missing"),
    ("nope:factor=2", "--rope: rope.type='nope' is invalid"),
    ("yarn:factor", "--rope='yarn:factor' is invalid: 'factor' is not key=value"),
])
def test_megamid_eval_rope_errors(run_dir, rope, message):
    proc = subprocess.run([sys.executable, "-m", "megamid.cli", "eval", run_dir["ckpt"], "--tasks", "passkey",
                           "--lengths", "320", "--rope", rope], capture_output=True, text=True, env=tiny_run.env(),
                          timeout=300)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_shared_prefix_scores_equal_one_row_per_candidate(run_dir, tmp_path):
    out = tmp_path / "scores.json"
    cmd = [sys.executable, os.path.join(tiny_run.HERE, "scoring_driver.py"), run_dir["ckpt"], str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=tiny_run.env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["takes_masks"] and r["masked_calls"] >= 2 * r["samples"]  # 4 candidates in groups of max_batch=3
    assert len(r["candidate_lengths"]) > 1  # candidates of several token lengths
    assert r["max_diff"] < 1e-4 and r["rankings_agree"]


def test_megamid_eval_rejects_a_directory_that_is_not_a_checkpoint(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--tasks", "passkey", "--lengths", "320"]) == 2
    assert "is not a megamid checkpoint" in capsys.readouterr().err


LAYOUTS = ("tp2", "pp2_ddp", "pp2_vpp2", "cp2_allgather", "cp2_ring", "load_tp2", "load_pp2")


@pytest.mark.slow
def test_adapter_is_layout_independent(run_dir, tmp_path):
    driver = os.path.join(tiny_run.HERE, "adapter_driver.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", driver,
           run_dir["ckpt"], str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=tiny_run.env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = [json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)]
    for rep in reports:
        assert rep["reference"]["logprobs_vs_log_softmax"] < 1e-5 and rep["reference"]["last_vs_all"] == 0
        for layout in LAYOUTS:
            assert max(rep[layout][k] for k in ("logits", "last", "logprobs", "scores")) < 1e-5, (layout, rep[layout])
            assert rep[layout]["train_mode_restored"], layout
    for layout in LAYOUTS:
        assert reports[0][layout]["checksum"] == reports[1][layout]["checksum"], layout
