"""pytest tests/eval/test_in_loop.py   (a phase's `eval:` mapping runs in `megamid train`)

The tiny two-phase run (tests/eval/tiny_run.py) evaluates every step of `short` and at the end of
`long`; results land in CKPT_DIR/eval/<phase>/step_<N>/ and a summary line in the log, and the
training losses are exactly those of the same run without `eval:`.
"""

import json
import os

import pytest
import yaml

import tiny_run
from megamid.config import ConfigError
from megamid.config import EvalConfig
from megamid.eval.in_loop import summary


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run.trained(str(tmp_path_factory.getbasetemp() / "tiny_eval_run"))


def test_phase_eval_results_land_on_disk(run_dir):
    evals = os.path.join(run_dir["ckpt"], "eval")
    assert sorted(os.listdir(os.path.join(evals, "short"))) == ["step_1", "step_2"]
    assert os.listdir(os.path.join(evals, "long")) == ["step_2"]
    for phase, step, global_step in (("short", 1, 1), ("short", 2, 2), ("long", 2, 4)):
        out = os.path.join(evals, phase, f"step_{step}")
        res = json.load(open(os.path.join(out, "results.json")))
        assert (res["phase"], res["step"], res["global_step"]) == (phase, step, global_step)
        assert res["passkey"]["grid"]["lengths"] == [320] and res["passkey"]["samples"] == 1
        ppl = res["ppl"]["by_length"]["320"]  # documents default to the phase's first data source ...
        assert ppl["documents"] == 2 and len(ppl["nll"]) == 4 and ppl["ppl_mean"] > 1
        assert res["ppl"]["held_out"] is False  # ... which is training data, and the results say so
        rope = res["config"]["rope"]
        assert rope == ({"type": "linear", "factor": 2, "theta": 10000} if phase == "short" else None), rope
        assert os.path.isfile(os.path.join(out, "results.md"))
    log = open(run_dir["log"]).read()
    assert "[short] eval step 1: passkey " in log and "ppl@320 " in log and "[long] eval step 2:" in log
    assert "(ppl on training data, not held out)" in log


def test_eval_does_not_change_training(run_dir, tmp_path):
    """Without `eval:` the losses are the same: evaluation (under another rope in `short`) leaves the run alone."""
    recipe = yaml.safe_load(open(run_dir["recipe"]))
    for phase in recipe["phases"]:
        del phase["eval"]
    recipe["checkpoint"]["dir"] = str(tmp_path / "ckpt")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    tiny_run.megamid("train", path)

    def losses(ckpt):
        return [json.loads(line)["loss"] for line in open(os.path.join(ckpt, "metrics.jsonl"))]

    assert losses(run_dir["ckpt"]) == losses(tmp_path / "ckpt") and len(losses(run_dir["ckpt"])) == 4


@pytest.mark.parametrize("cfg, message", [
    ({"lenghts": [512]}, "phases[ctx].eval.lenghts is not a valid key; valid: tasks, lengths"),
    ({"lengths": 512}, "phases[ctx].eval.lengths=512 is invalid: expected a list of positive token counts"),
    ({"tasks": ["passkey", "lambada"]}, "phases[ctx].eval.tasks=['passkey', 'lambada'] is invalid: unknown lambada"),
    ({"interval": 0}, "phases[ctx].eval.interval=0 is invalid: expected a positive number of steps"),
    ({"depths": [0.5, 2]}, "phases[ctx].eval.depths=[0.5, 2] is invalid"),
    ({"num_candidates": 1}, "phases[ctx].eval.num_candidates=1 is invalid: expected an integer >= 2"),
    ([512], "phases[ctx].eval=[512] is invalid: expected a mapping"),
    ({"rope": "yarn"}, "phases[ctx].eval.rope='yarn' is invalid: expected a rope mapping with a string 'type'"),
    ({"rope": {"factor": 2}}, "phases[ctx].eval.rope={'factor': 2} is invalid: expected a rope mapping"),
])
def test_eval_mapping_errors_name_the_key(cfg, message):
    with pytest.raises(ConfigError) as exc:
        EvalConfig.from_mapping("ctx", cfg)
    assert message in str(exc.value)


def test_eval_mapping_accepts_evaluate_keywords():
    cfg = {"tasks": ["passkey", "ppl", "ruler"], "lengths": [512, 1024], "interval": 100, "samples": 2,
           "depths": [0, 0.5, 1], "documents": "corpus/long_text_document", "max_documents": 4, "max_batch": 2,
           "num_buckets": 4, "seed": 1, "greedy": False, "ruler_tasks": ["niah_single"], "use_matplotlib": None}
    config = EvalConfig.from_mapping("ctx", cfg)
    assert config.to_dict() == {k: v for k, v in cfg.items() if v is not None}
    assert config.interval == 100 and config.needs_documents and config.max_batch == 2
    assert config.evaluate_kwargs() == {"samples": 2, "depths": (0, 0.5, 1), "seed": 1, "greedy": False,
                                        "ruler_tasks": ("niah_single",), "num_buckets": 4, "max_documents": 4}


def test_summary_line():
    results = {"passkey": {"accuracy": 0.5, "chance": 0.25},
               "ppl": {"by_length": {"512": {"ppl_mean": 12.345}, "1024": {"ppl_mean": None}}}}
    assert summary(results) == "passkey 0.50 (chance 0.25) | ppl@512 12.35 | ppl@1024 -"


def test_eval_rope_is_checked_against_the_model(tmp_path):
    from megamid.recipe import plan_recipe
    from megamid.config import load_recipe

    recipe = tiny_run.recipe(str(tmp_path), str(tmp_path / "corpus"))
    recipe["phases"][0]["eval"]["rope"] = {"type": "yarn", "factor": 0.5, "original_max_position_embeddings": 32}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError) as exc:
        plan_recipe(load_recipe(str(path)), 1, check_files=False)
    assert "phases[short].eval.rope: rope.factor=0.5 is invalid" in str(exc.value)


@pytest.mark.parametrize("text, expected", [
    ("yarn:factor=4,original_max_position_embeddings=256",
     {"type": "yarn", "factor": 4, "original_max_position_embeddings": 256}),
    ("pi:factor=2.5", {"type": "pi", "factor": 2.5}),
    ("abf:theta=500000", {"type": "abf", "theta": 500000}),
    ("default", {"type": "default"}),
])
def test_parse_rope_spec(text, expected):
    from megamid.config.eval import parse_rope_spec

    assert parse_rope_spec(text) == expected


@pytest.mark.parametrize("text", [":factor=2", "yarn:factor", "yarn:=2"])
def test_parse_rope_spec_errors_are_one_line(text):
    from megamid.config.eval import parse_rope_spec

    with pytest.raises(ConfigError) as exc:
        parse_rope_spec(text)
    assert str(exc.value).startswith(f"--rope={text!r} is invalid") and "\n" not in str(exc.value)
