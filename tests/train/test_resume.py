"""Stop after N steps, resume, run N more: identical losses and weights to 2N uninterrupted (CPU fp32)."""

import os

import pytest
import torch

from helpers.training import load_result, load_weights, run


def _assert_same_weights(a, b):
    assert len(a) == len(b)
    for chunk_a, chunk_b in zip(a, b):
        assert chunk_a.keys() == chunk_b.keys()
        for key in chunk_a:
            assert torch.equal(chunk_a[key], chunk_b[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("distributed_optimizer", [False, True])
def test_resume_is_bit_identical(tmp_path, recipe_file, distributed_optimizer):
    recipe = recipe_file(parallel={"use_distributed_optimizer": distributed_optimizer},
                         checkpoint={"load": "auto", "save_final": True})
    ckpt = os.path.join(os.path.dirname(recipe), "ckpt")
    straight = tmp_path / "straight"
    run(straight, recipe, f"checkpoint.dir={tmp_path / 'other'}")
    first = tmp_path / "first"
    run(first, recipe, "--exit-after-steps", "2")
    assert open(os.path.join(ckpt, "latest")).read().strip() == "iter_0000002"
    second = tmp_path / "second"
    run(second, recipe)
    full = load_result(straight)["default"]
    assert len(full) == 4
    resumed = load_result(first)["default"] + load_result(second)["default"]
    assert resumed == full  # exact float equality, not a tolerance
    _assert_same_weights(load_weights(straight), load_weights(second))
    assert open(os.path.join(ckpt, "latest")).read().strip() == "iter_0000004"


@pytest.mark.slow
def test_crash_between_shards_and_latest_keeps_previous_checkpoint(tmp_path, recipe_file):
    recipe = recipe_file(checkpoint={"load": "auto", "save_interval": 2, "save_final": True})
    ckpt = os.path.join(os.path.dirname(recipe), "ckpt")
    # The save at step 4 dies after writing its shards, before publishing them.
    proc = run(tmp_path / "crash", recipe, "--crash-before-publish", "4", check=False)
    assert proc.returncode == 17, proc.stderr[-2000:]
    assert open(os.path.join(ckpt, "latest")).read().strip() == "iter_0000002"
    assert os.path.isdir(os.path.join(ckpt, "iter_0000004.partial"))
    assert not os.path.exists(os.path.join(ckpt, "iter_0000004"))
    # The relaunch resumes from step 2, redoes steps 3-4 exactly, and cleans the partial save up.
    run(tmp_path / "resumed", recipe)
    run(tmp_path / "straight", recipe, f"checkpoint.dir={tmp_path / 'other'}")
    assert load_result(tmp_path / "resumed")["default"] == load_result(tmp_path / "straight")["default"][2:]
    assert open(os.path.join(ckpt, "latest")).read().strip() == "iter_0000004"
    assert not os.path.exists(os.path.join(ckpt, "iter_0000004.partial"))


@pytest.mark.slow
def test_keep_last_prunes_old_checkpoints(tmp_path, recipe_file):
    recipe = recipe_file(checkpoint={"load": "auto", "save_interval": 1, "keep_last": 2, "save_final": True})
    ckpt = os.path.join(os.path.dirname(recipe), "ckpt")
    run(tmp_path / "out", recipe)
    assert sorted(n for n in os.listdir(ckpt) if n.startswith("iter_")) == ["iter_0000003", "iter_0000004"]


@pytest.mark.slow
def test_a_corrupt_latest_fails_or_falls_back_to_the_previous_checkpoint(tmp_path, recipe_file):
    recipe = recipe_file(checkpoint={"load": "auto", "save_interval": 2, "save_final": True})
    ckpt = os.path.join(os.path.dirname(recipe), "ckpt")
    run(tmp_path / "first", recipe)
    shard = os.path.join(ckpt, "iter_0000004", "__0_0.distcp")
    with open(shard, "r+b") as f:
        f.truncate(100)
    proc = run(tmp_path / "fail", recipe, check=False)
    assert proc.returncode != 0 and f"{shard}: 100 bytes, MANIFEST.json says" in proc.stderr
    # on_corrupt=previous: resumes from iter_2 and redoes steps 3-4 exactly
    run(tmp_path / "previous", recipe, "checkpoint.on_corrupt=previous")
    run(tmp_path / "straight", recipe, f"checkpoint.dir={tmp_path / 'other'}")
    assert load_result(tmp_path / "previous")["default"] == load_result(tmp_path / "straight")["default"][2:]
    assert open(os.path.join(ckpt, "latest")).read().strip() == "iter_0000004"
