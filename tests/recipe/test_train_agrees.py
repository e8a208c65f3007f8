"""pytest tests/recipe/test_train_agrees.py

`megamid train` runs every check `megamid plan` runs, at its own world size, before it builds anything:
a recipe that plan refuses never starts training, and the message is plan's.
"""

import os

import pytest

from megamid.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "examples", "tiny_cpu", "recipe.yaml")


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if the trainer is ever constructed."""
    from megamid.train import loop

    def refuse(*args, **kwargs):
        raise AssertionError("the trainer was built for a recipe that plan refuses")

    monkeypatch.setattr(loop.Trainer, "__init__", refuse)


def _errors(capsys, command, *args):
    rc = main([command, TINY, *args])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    return err.replace(f"megamid {command}: error: ", "")


@pytest.mark.parametrize("overrides", [
    # a rope that does not cover the phase's seq_len (plain RoPE at twice its window; YaRN x2 at 4x)
    ["phases.3.rope.type=default", "phases.3.rope.factor=null", "phases.3.rope.original_max_position_embeddings=null"],
    ["phases.4.rope.factor=2"],
    # context parallelism that does not divide the sequence into 2 x CP chunks
    ["phases.3.seq_len=254", "phases.3.parallel.context_parallel_size=2"],
    # the first phase takes its LR from a checkpoint, and there is none
    ["phases.0.lr.start_lr=from_checkpoint"],
])
def test_train_refuses_what_plan_refuses_with_the_same_message(capsys, monkeypatch, tmp_path, no_training, overrides):
    monkeypatch.chdir(ROOT)     # the example's data prefixes are relative; file checks must not be what fails
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = [*overrides, f"checkpoint.dir={tmp_path / 'ckpt'}"]
    planned = _errors(capsys, "plan", *args, "--no-files")
    trained = _errors(capsys, "train", *args)
    first_problem = planned.splitlines()[1].strip()
    assert first_problem in trained, (planned, trained)
    assert not os.path.exists(tmp_path / "ckpt")


def test_train_plans_at_the_launch_world_size(capsys, monkeypatch, no_training, tmp_path):
    # global batch 32 / micro 16 does not divide over 4 data-parallel ranks
    monkeypatch.setenv("WORLD_SIZE", "4")
    rc = main(["train", TINY, f"checkpoint.dir={tmp_path / 'ckpt'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "is invalid at world size 4: must be divisible by micro_batch_size x DP = 16 x 4 = 64" in err
