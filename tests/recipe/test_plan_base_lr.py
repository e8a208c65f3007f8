"""pytest tests/recipe/test_plan_base_lr.py

`megamid plan` reports a first phase with `start_lr: from_checkpoint` that has no LR to start from (a
converted HF base, a soup, or no base at all), which `megamid train` would otherwise reject after
building the model; a base that recorded its LR passes.
"""

import json
import os

import pytest

from megamid.config import ConfigError, load_recipe, to_dict
from megamid.recipe import plan_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "examples", "tiny_cpu", "recipe.yaml")
FROM_CKPT = "training.lr.start_lr=from_checkpoint"  # the first phase (induction) inherits training.lr


def write_base(state: dict) -> None:
    os.makedirs("base", exist_ok=True)
    with open("base/megamid.json", "w") as f:
        json.dump({"step": 0, "state": state, "config": {"model": to_dict(load_recipe(TINY).model)}}, f)


def test_a_converted_base_has_no_lr_to_start_from(corpus_dir):
    write_base({"source": "hf", "hf_dir": "/models/llama"})
    with pytest.raises(ConfigError, match=r"phases\[induction\].lr.start_lr='from_checkpoint' is invalid: the base "
                                          r"checkpoint 'base' \(hf-import\) holds no LR"):
        plan_recipe(load_recipe(TINY, ["base=base", FROM_CKPT]))


def test_no_base_has_no_lr_either(corpus_dir):
    with pytest.raises(ConfigError, match="starts from random weights, which have no LR"):
        plan_recipe(load_recipe(TINY, [FROM_CKPT]), check_files=False)


def test_a_trained_base_with_its_lr_passes(corpus_dir):
    write_base({"phase": "anneal", "lr": 3.0e-4})
    plan = plan_recipe(load_recipe(TINY, ["base=base", FROM_CKPT]))
    assert plan.phases[0].lr_start is None  # shown as "ckpt": resolved by the trainer from the base
