"""pytest tests/recipe/test_plan.py

`megamid plan`: the phase table of the tiny recipe, the checks (each error names the phase and the
field), the Llama-3 example at 8 and 64 GPUs, and --plot where matplotlib is installed.
"""

import json
import os

import pytest

from megamid.cli import main
from megamid.config import ConfigError, load_recipe
from megamid.recipe import plan_recipe
from megamid.recipe.checks import describe_rope, rope_limit
from megamid.recipe.plan import rope_scaling_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "examples", "tiny_cpu", "recipe.yaml")
LLAMA = os.path.join(ROOT, "examples", "llama3_8b_128k", "recipe.yaml")


def plan_cli(capsys, *argv):
    rc = main(["plan", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_tiny_recipe_prints_the_phase_table(corpus_dir, capsys):
    rc, out, err = plan_cli(capsys, TINY)
    assert rc == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[3:] if line and not line.startswith("-")}
    assert list(rows) == ["induction", "pretrain", "anneal", "ctx256", "ctx512", "total"]
    assert [rows[n][1] for n in rows] == ["200", "60", "20", "20", "60", "360"]
    assert [rows[n][2] for n in rows] == ["819.2K", "245.8K", "81.9K", "81.9K", "245.8K", "1.5M"]   # steps x batch x seq_len
    assert rows["ctx512"][3] == "512" and rows["ctx512"][4] == "TP1xPP1xCP1xDP1"
    assert "yarn x4 of 128" in out and "long 50%" in out and "world size 1" in out
    assert "3.00e-03->3.02e-04" in out and "3.00e-04->1.50e-05" in out  # pretrain's and the anneal's first->last LR


def test_plan_values_match_the_schedule_and_the_mixture():
    plan = plan_recipe(load_recipe(TINY), world_size=2, check_files=False)
    anneal = plan.phases[2]
    assert anneal.start_tokens == (200 + 60) * 32 * 128 and anneal.data_parallel_size == 2
    assert anneal.lr_start == pytest.approx(3.0e-4) and anneal.lr_end == pytest.approx(3.0e-4 / 20)
    assert anneal.shares_start == pytest.approx({"pretrain": 0.3, "code": 0.3, "math": 0.2, "prose": 0.1,
                                                 "passkey": 0.1})
    moving = load_recipe(TINY, ["phases.2.data.sources.0.weight_end=0.0"])
    row = plan_recipe(moving, check_files=False).phases[2]
    assert row.shares_end["pretrain"] == 0.0 and row.shares_end["code"] == pytest.approx(0.3 / 0.7)


@pytest.mark.parametrize("overrides, world, message", [
    # rope: yarn x2 over 128 covers 256 positions
    (["phases.3.seq_len=1024"], 1, "phases[ctx256].seq_len=1024 is invalid: phases[ctx256].rope (yarn factor=2 "
                                   "x original 128) covers 256 positions; use seq_len <= 256 or factor >= 8"),
    # default rope beyond max_position_embeddings
    (["phases.0.seq_len=256"], 1, "phases[induction].seq_len=256 is invalid: model.rope (default, theta=10000) "
                                  "covers model.max_position_embeddings=128"),
    # a token budget below one global batch
    (["phases.2.steps=null", "phases.2.tokens=100"], 1, "phases[anneal].tokens=100 is invalid: less than one "
                                                         "global batch"),
    # world size not divisible by TP x PP x CP
    (["parallel.tensor_model_parallel_size=2"], 3, "phases[induction]: parallel: TP=2 x PP=1 x CP=1 = 2 does not "
                                                   "divide the world size 3"),
    # global batch vs micro batch x DP, inherited from training
    ([], 16, "phases[induction]: training.global_batch_size=32 is invalid at world size 16: must be divisible by "
             "micro_batch_size x DP = 16 x 16 = 256"),
    # LR schedule vs budget
    (["phases.4.lr.warmup_steps=31"], 1, "phases[ctx512].lr.decay_steps=30 is invalid: warmup_steps=31 + decay"),
    # context parallelism splits a sequence into 2 x CP chunks
    (["phases.4.parallel.context_parallel_size=3"], 3,
     "phases[ctx512].seq_len=512 is invalid with context_parallel_size=3: load-balanced context parallelism "
     "splits a sequence into 2 x CP = 6 chunks"),
    (["phases.3.eval.tasks=[bogus]"], 1, "phases[ctx256].eval.tasks=['bogus'] is invalid"),
])
def test_errors_name_the_phase_and_the_field(overrides, world, message):
    with pytest.raises(ConfigError) as exc:
        plan_recipe(load_recipe(TINY, overrides), world_size=world, check_files=False)
    assert message in str(exc.value)


def test_missing_files_are_listed_once_each_and_exit_2(corpus_dir, capsys):
    os.remove("corpus/long_text_document.idx")
    rc, out, err = plan_cli(capsys, TINY, "tokenizer=nope.model", f"base={corpus_dir / 'no_ckpt'}")
    assert rc == 2 and out == ""
    assert err.count("corpus/long_text_document.idx not found") == 1
    assert ("phases[ctx256].data.sources[0].prefix='corpus/long_text_document' (also phases[ctx512].data) is "
            "invalid: corpus/long_text_document.idx not found") in err
    assert "tokenizer='nope.model' is invalid" in err and "is invalid: no such checkpoint directory" in err


def test_base_checkpoint_must_have_the_recipe_model_shape(corpus_dir):
    recipe = load_recipe(TINY)
    from megamid.config import to_dict

    saved = to_dict(recipe)
    saved["model"]["hidden_size"] = 256
    os.makedirs("base/iter_0000010")
    with open("base/iter_0000010/megamid.json", "w") as f:
        json.dump({"step": 10, "config": saved}, f)
    with open("base/latest", "w") as f:
        f.write("iter_0000010\n")
    plan_recipe(load_recipe(TINY, ["base=base"]), check_files=False)  # file checks off: the base is not read
    with pytest.raises(ConfigError, match=r"model.hidden_size=128 is invalid: the base checkpoint 'base' has "
                                          r"hidden_size=256"):
        plan_recipe(load_recipe(TINY, ["base=base"]))


def test_rope_limits():
    model = load_recipe(TINY).model

    def limit(rope):
        return rope_limit(model, rope_scaling_for(model, rope, "rope"))

    assert limit({"type": "default", "theta": 10000}) == 128
    assert limit({"type": "abf", "theta": 1e6}) is None          # ABF: no formula
    assert limit({"type": "linear", "factor": 4}) == 512
    assert limit({"type": "dynamic", "factor": 2, "original_max_position_embeddings": 256}) is None
    assert limit({"type": "llama3", "factor": 8, "original_max_position_embeddings": 128}) == 1024


@pytest.mark.parametrize("world", [8, 64])
def test_llama3_example_validates_at_8_and_64_gpus(world):
    plan = plan_recipe(load_recipe(LLAMA), world_size=world, check_files=False)
    assert [r.name for r in plan.phases] == ["anneal8k", "ctx32k", "ctx128k"]
    assert [r.seq_len for r in plan.phases] == [8192, 32768, 131072]
    assert all(r.tokens >= spec.tokens for r, spec in zip(plan.phases, load_recipe(LLAMA).phases))
    assert plan.phases[0].lr_end < 1e-6  # the anneal decays to ~0
    assert describe_rope(plan.phases[2].rope_scaling).startswith("yarn x16 of 8192")


def test_llama3_example_without_its_files_names_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as exc:
        plan_recipe(load_recipe(LLAMA), world_size=8)
    text = str(exc.value)
    assert "tokenizer='/path/to/Meta-Llama-3-8B/tokenizer.json' is invalid" in text
    assert "base='checkpoints/llama3-8b-base' is invalid" in text
    assert "phases[ctx32k].data.sources[0].prefix='data/llama3/books_long_text_document'" in text


def test_plot_writes_a_png(corpus_dir, capsys):
    pytest.importorskip("matplotlib")
    rc, out, err = plan_cli(capsys, "--plot", "plan.png", TINY)
    assert rc == 0, err
    with open("plan.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
