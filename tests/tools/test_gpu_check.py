"""The CPU-testable parts of tools/gpu_check.py: arguments, the run recipes, the numbers and the table."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import gpu_check  # noqa: E402

from megamid.config import ModelConfig, RecipeConfig, build  # noqa: E402
from megamid.recipe import plan_recipe  # noqa: E402


def test_arguments():
    args = gpu_check.parse_args(["--skip", "bench,fp8", "--out", "/tmp/x/gpu.json"])
    assert args.skip == {"bench", "fp8"} and args.steps == 20 and args.work_dir == "/tmp/x/work"
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--skip", "benchmarks"])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--steps", "1"])


def test_recipes_are_valid_and_the_model_is_about_1b(tmp_path):
    recipe = gpu_check.recipe_dict("1b", 8192, 20, str(tmp_path / "ckpt"), "data/x", save_interval=10)
    config = build(RecipeConfig, recipe)
    (phase,) = plan_recipe(config, world_size=1, check_files=False).phases
    assert phase.steps == 20 and phase.training.seq_len == 8192 and config.checkpoint.save_interval == 10
    assert 0.9e9 < ModelConfig(**gpu_check.MODELS["1b"]).num_parameters() < 1.1e9
    long = build(RecipeConfig, gpu_check.recipe_dict("1b", 32768, 4, "c", "d", recompute="full", global_batch_size=2))
    (long_phase,) = plan_recipe(long, world_size=1, check_files=False).phases
    assert long_phase.recompute.granularity == "full" and long_phase.tokens_per_step == 65536
    assert gpu_check.recipe_dict("1b", 8192, 2, "c", "d", fp8={"recipe": "tensorwise"})["phases"][0]["fp8"]


def test_estimate_for_the_1b_runs():
    eight = gpu_check.estimate_gib(gpu_check.recipe_dict("1b", 8192, 20, "c", "d"))
    long = gpu_check.estimate_gib(gpu_check.recipe_dict("1b", 32768, 4, "c", "d", recompute="full"))
    assert 15 < eight < 40 and 15 < long < 40   # 18 B/param x 0.98B + activations, well inside 80 GB


def test_numbers():
    history = [{"global_step": i + 1, "loss": 10.0 - i, "tokens_per_s": 100.0 * (i + 1),
                "tflops_per_device": float(i + 1)} for i in range(6)]
    s = gpu_check.summarize({"history": history, "peak_allocated_bytes": 3 * 2 ** 30}, peak_tflops=10.0)
    assert s["tokens_per_s"] == 500.0 and s["tflops"] == 5.0 and s["mfu"] == 0.5   # median of steps 4-6
    assert s["final_loss"] == 5.0 and s["peak_gib"] == 3.0
    same = gpu_check.resume_check(history, history[:3] + [dict(m, loss=m["loss"] + 1e-4) for m in history[3:]])
    assert same["equal"] and same["steps"] == [1, 2, 3, 4, 5, 6]
    off = gpu_check.resume_check(history, [dict(history[5], loss=0.0)])
    assert not off["equal"] and off["steps"] == [6] and off["max_abs_diff"] == 5.0
    assert gpu_check.median([3, None, 1, float("nan"), 2]) == 2


REPORT = {
    "gpu": {"name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.1, "catalogue": "h100-80gb"}, "te": True, "size": "1b",
    "stages": {"build": {"status": "ok", "seconds": 61.0}, "tests": {"status": "failed (exit 1)", "seconds": 30.0}},
    "runs": {
        "bf16-8k": {"status": "ok", "seq_len": 8192, "history": [{}] * 20, "plan_gib": 30.0,
                    "summary": {"tokens_per_s": 61000.0, "tflops": 410.0, "mfu": 0.415, "peak_gib": 27.0,
                                "final_loss": 5.4321}},
        "fp8-8k": {"status": "failed (exit 2)", "seq_len": 8192},
    },
    "resume": {"steps": [11, 20], "max_abs_diff": 1e-4, "equal": True},
}


def test_table_from_json(tmp_path, capsys):
    text = gpu_check.format_table(REPORT)
    lines = text.splitlines()
    assert lines[0] == "gpu-check on NVIDIA H100 80GB HBM3 (h100-80gb), TE yes, model 1b"
    assert lines[1] == "  build   ok (61 s)" and lines[2] == "  tests   failed (exit 1) (30 s)"
    assert lines[3].split() == ["run", "seq_len", "steps", "tokens/s", "TFLOP/s", "MFU", "peak", "GiB", "plan",
                                "GiB", "peak/plan", "loss"]
    assert lines[5].split() == ["bf16-8k", "8192", "20", "61000", "410", "41.5%", "27.0", "30.0", "0.90", "5.4321"]
    assert lines[6].split()[:4] == ["fp8-8k", "8192", "failed", "(exit"]
    assert lines[7] == "save/resume: losses at steps 11-20 equal (max |diff| 1.00e-04, tolerance 0.002)"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(REPORT))
    assert gpu_check.main(["--table", str(path)]) == 0
    assert capsys.readouterr().out.strip() == text


def test_without_cuda_exits_with_a_message(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "g.json")]) == 2
    assert "gpu-check: no CUDA device here" in capsys.readouterr().err
    assert not (tmp_path / "g.json").exists()


@pytest.mark.slow
def test_child_runs_and_resume_check_on_cpu(tmp_path):
    """The training children on a tiny model: a straight run and a stopped-and-resumed one give equal losses."""
    prefix = str(tmp_path / "data" / "synthetic_text_document")
    gpu_check.write_corpus(prefix, tokens=40_000)
    env = dict(os.environ, PYTHONPATH=ROOT)

    def recipe(name, save_interval=None):
        r = gpu_check.recipe_dict("small", 128, 4, str(tmp_path / name), prefix, global_batch_size=2,
                                  save_interval=save_interval)
        r["model"].update(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                          ffn_hidden_size=128, vocab_size=512, dtype="fp32")
        return r

    straight = gpu_check.train_run("straight", recipe("a"), str(tmp_path), 300, env)
    first = gpu_check.train_run("first", recipe("b", 2), str(tmp_path), 300, env, exit_after_steps=2)
    second = gpu_check.train_run("second", recipe("b", 2), str(tmp_path), 300, env)
    assert straight["status"] == "ok", straight["output_tail"]
    assert [m["global_step"] for m in first["history"]] == [1, 2]
    assert [m["global_step"] for m in second["history"]] == [3, 4]
    check = gpu_check.resume_check(straight["history"], first["history"] + second["history"], tolerance=0.0)
    assert check["equal"] and check["steps"] == [1, 2, 3, 4]
