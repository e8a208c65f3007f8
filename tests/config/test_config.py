"""Recipe loading, overrides and the errors bad values get (each names the field and what is valid)."""

import glob
import os

import pytest

from megamid.config import ConfigError, RecipeConfig, apply_overrides, build, load_recipe
from megamid.recipe import load_plan

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "examples", "tiny_cpu", "recipe.yaml")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "examples", "**", "*.yaml"), recursive=True)))
def test_every_example_recipe_loads_and_plans(path):
    recipe = load_recipe(path)
    plan = load_plan(path, check_files=False)
    specs = recipe.phase_specs()
    assert [p.name for p in plan.phases] == [s.name for s in specs]
    for phase, spec in zip(plan.phases, specs):
        expected = spec.steps if spec.tokens is None else -(-spec.tokens // phase.tokens_per_step)
        assert phase.steps == expected and phase.tokens >= (spec.tokens or 0)


def test_overrides_reach_nested_fields_and_lists():
    recipe = load_recipe(TINY, ["training.seq_len=64", "parallel.use_distributed_optimizer=true",
                                "phases.2.steps=3", "checkpoint.keep_last=null"])
    assert recipe.training.seq_len == 64
    assert recipe.parallel.use_distributed_optimizer is True
    assert recipe.phases[2].steps == 3
    assert recipe.checkpoint.keep_last is None


@pytest.mark.parametrize("overrides, message", [
    (["parallel.tensor_model_parallel_size=3"], "num_attention_heads=4 is invalid with parallel.tensor_model_parallel_size=3"),
    (["training.global_batch_size=6", "training.micro_batch_size=4"], "training.global_batch_size=6 is invalid: must be divisible by training.micro_batch_size=4"),
    (["model.num_query_groups=3"], "model.num_attention_heads=4 is invalid: must be divisible by model.num_query_groups=3"),
    (["model.dtype=fp8"], "model.dtype='fp8' is invalid: expected one of fp32, bf16, fp16"),
    (["training.seq_len=-1"], "training.seq_len=-1 is invalid: must be > 0"),
    (["training.lr.style=triangle"], "style"),
    (["model.hidden=5"], "unknown key(s) 'hidden' in model; valid keys: num_layers"),
    (["parallel.pipeline_model_parallel_size=3"], "model.num_layers=2 is invalid with parallel.pipeline_model_parallel_size=3"),
    (["phases.3.rope.factor=0.5"], "phases[ctx256].rope"),
    (["phases.0.optimizer_state=keep"], "optimizer_state='keep' is invalid: expected one of carry, reset"),
    (["training.micro_batch_size=abc"], "training.micro_batch_size='abc' is invalid: expected an integer"),
    (["training"], "override 'training' is invalid: expected key.sub=value"),
])
def test_bad_values_are_rejected_with_the_field_named(overrides, message):
    with pytest.raises(ConfigError) as exc:
        load_plan(TINY, overrides, check_files=False)
    assert message in str(exc.value)


def test_missing_file_and_non_mapping_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_recipe(str(bad))


def test_phase_needs_exactly_one_budget():
    data = apply_overrides({}, [])
    with pytest.raises(ConfigError, match="exactly one of steps or tokens"):
        build(RecipeConfig, {"model": {"num_layers": 2, "hidden_size": 8, "num_attention_heads": 2, "vocab_size": 16},
                             "training": {"global_batch_size": 2, "micro_batch_size": 1, "seq_len": 8, "train_steps": 1},
                             "phases": [{"name": "a", "steps": 1, "tokens": 10}], **data})


def test_tokens_budget_becomes_steps():
    plan = load_plan(TINY, ["phases.0.steps=null", "phases.0.tokens=100000"], check_files=False)
    # 32 samples x 128 tokens per step: ceil(100000 / 4096) = 25 steps
    assert plan.phases[0].steps == 25 and plan.phases[0].budget_tokens == 100000


def test_cli_reports_config_errors_and_exits_2(capsys):
    from megamid.cli import main

    assert main(["train", TINY, "model.dtype=fp8"]) == 2
    assert "model.dtype='fp8' is invalid" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2


@pytest.mark.parametrize("override, message", [
    ("training.weight_decay=.nan", "training.weight_decay=nan is invalid: expected a finite number >= 0"),
    ("training.clip_grad=.inf", "training.clip_grad=inf is invalid"),
    ("training.adam_beta1=.nan", "training.adam_beta1=nan is invalid: expected a finite number in [0, 1)"),
    ("training.adam_beta2=.inf", "training.adam_beta2=inf is invalid"),
    ("training.adam_eps=.nan", "training.adam_eps=nan is invalid"),
    ("model.norm_epsilon=.nan", "model.norm_epsilon=nan is invalid"),
    ("model.init_method_std=.inf", "model.init_method_std=inf is invalid"),
    ("model.hidden_dropout=.nan", "model.hidden_dropout=nan is invalid"),
    ("model.hidden_size=.inf", "model.hidden_size=inf is invalid: expected an integer"),
    ("training.train_steps=.nan", "training.train_steps=nan is invalid: expected an integer"),
])
def test_non_finite_numbers_are_rejected_by_every_validator(override, message):
    with pytest.raises(ConfigError) as exc:
        load_recipe(TINY, [override])
    assert message in str(exc.value)


def test_check_positive_refuses_nan_and_inf_directly():
    from megamid.config.base import check_positive, check_range

    for value in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ConfigError, match="finite"):
            check_positive("x", value)
        with pytest.raises(ConfigError, match="finite"):
            check_range("x", value, 0.0, 1.0)
    check_positive("x", 0, allow_zero=True)
    check_range("x", 1.0, 0.0, 1.0, high_open=False)
