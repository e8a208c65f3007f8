"""python -m pytest -q tests/checkpoint/test_hf_conversion.py

HF <-> megamid checkpoint conversion on small random transformers models (Llama with GQA and full biases,
Mistral with and without its sliding window, Qwen2 with q/k/v biases, tied embeddings, and a window on every
layer, Qwen3 with q/k norms and a head_dim of its own), the six HF rope types across them:
- imported at --tp 1 and --tp 2 and loaded as a recipe's base at TP=1 (one process) and TP=2 (one gloo
  torchrun launch for all cases), megamid's fp32 logits equal HF's within TOL;
- the TP=2-written checkpoint exported back loads with AutoModelForCausalLM and gives HF's logits
  exactly; a checkpoint saved in a phase with another rope exports that rope;
- the shards written for TP=2 are the ones a TP=2 GPTModel declares;
- bad inputs fail with errors naming the file / tensor / field, before any megatron work.
The megatron work runs in tests/checkpoint/convert_driver.py subprocesses (megamid's CPU mode is
process-global).
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers
import yaml

from megamid.checkpoint.hf_conversion import check_out_dir, import_hf
from megamid.checkpoint.safetensors_files import CheckpointFileError, SafetensorsReader
from megamid.config import ConfigError, ModelConfig, build

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "tests", "checkpoint", "convert_driver.py")
# fp32 on both sides; TP=2 changes summation orders (~1e-6) and dynamic NTK's base differs by float32
# ulps (~4e-6, see tests/rope/test_hf_logits.py); a wrong mapping or rope moves logits of ~5 by O(1)
TOL = 1e-4
SEQ = 48  # past every rope's switch point below (original lengths of 32)
SHORT = [1.0, 1.05, 1.1, 1.2, 1.4, 1.6, 1.8, 2.0]
LONG = [1.0, 1.3, 2.0, 3.1, 4.5, 6.0, 8.0, 11.0]
SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128)
CASES = {
    "llama_gqa_yarn": (transformers.LlamaConfig, dict(
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                         "rope_theta": 10000.0})),
    "llama_bias_llama3_sharded": (transformers.LlamaConfig, dict(
        attention_bias=True, mlp_bias=True,
        rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 32, "rope_theta": 500000.0})),
    "llama_longrope": (transformers.LlamaConfig, dict(
        rope_parameters={"rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG, "factor": 4.0,
                         "original_max_position_embeddings": 32, "rope_theta": 10000.0})),
    "mistral_linear": (transformers.MistralConfig, dict(
        sliding_window=None, rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0})),
    "qwen2_tied_dynamic": (transformers.Qwen2Config, dict(
        tie_word_embeddings=True, max_position_embeddings=32,
        rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0})),
    "qwen2_default": (transformers.Qwen2Config, dict(rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    # sliding windows shorter than SEQ: every query past the window loses keys
    "mistral_window": (transformers.MistralConfig, dict(
        sliding_window=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    "qwen2_window_all_layers": (transformers.Qwen2Config, dict(
        use_sliding_window=True, sliding_window=12, max_window_layers=0,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                         "rope_theta": 10000.0})),
    # per-head q/k norms, and head_dim 32 with hidden 64 / 4 heads: q_proj has 128 rows, o_proj 128 columns
    "qwen3_qknorm_headdim_yarn": (transformers.Qwen3Config, dict(
        head_dim=32, tie_word_embeddings=True,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                         "rope_theta": 1000000.0})),
}


def randomize(model, seed):
    """Weights ~ N(0, 0.2^2), norm gains 1 + N(0, 0.1^2), biases N(0, 0.1^2): logits of O(1) that depend
    strongly on attention (HF's 0.02 init would hide a wrong rope)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if "norm" in name else (0.2 if p.dim() == 2 else 0.1) * noise)


def hf_logits(model_dir, tokens):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(input_ids=tokens, position_ids=torch.arange(tokens.shape[1]).expand_as(tokens)).logits


def write_tokenizer(directory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(127)} | {"<unk>": 127}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>"}, f)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The HF dirs, their logits, and both driver stages run over them."""
    root = tmp_path_factory.mktemp("convert")
    tokens = torch.randint(0, SMALL["vocab_size"], (2, SEQ), generator=torch.Generator().manual_seed(7))
    torch.save(tokens, root / "tokens.pt")
    cases, expected = {}, {}
    for seed, (case, (config_cls, kw)) in enumerate(CASES.items()):
        config = config_cls(**{**SMALL, **kw})
        model = transformers.AutoModelForCausalLM.from_config(config)
        randomize(model, seed)
        hf_dir = root / "hf" / case
        model.save_pretrained(hf_dir, safe_serialization=True,
                              max_shard_size="60KB" if case.endswith("_sharded") else "5GB")
        if case == "qwen2_default":
            write_tokenizer(hf_dir)
        cases[case] = str(hf_dir)
        expected[case] = hf_logits(hf_dir, tokens)
    (root / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for cmd in ([sys.executable, DRIVER, "single", str(root)],
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                 DRIVER, "tp2", str(root)]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=480)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd[-3:])} failed ({proc.returncode}):\n{proc.stderr[-5000:]}")
    return {"root": root, "tokens": tokens, "expected": expected, "cases": cases,
            "layout": json.loads((root / "tp2.json").read_text()),
            "single": json.loads((root / "single.json").read_text())}


def load(work, case, name):
    return torch.load(work["root"] / case / f"{name}.pt", weights_only=True)


def max_diff(a, b):
    return float((a - b).abs().max())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("run", ["written_tp1_run_tp1", "written_tp2_run_tp1", "written_tp1_run_tp2",
                                 "written_tp2_run_tp2"])
def test_imported_logits_equal_hf(work, case, run):
    want = work["expected"][case]
    assert want.abs().max() > 1.0  # logits large enough that a wrong rope or layout would show
    assert max_diff(load(work, case, run), want) < TOL


@pytest.mark.parametrize("case", CASES)
def test_round_trip_loads_in_transformers_with_the_same_logits(work, case):
    back = work["root"] / case / "back"
    original = json.loads((work["root"] / "hf" / case / "config.json").read_text())
    config = json.loads((back / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == original["rope_parameters"]["rope_type"]
    assert config["tie_word_embeddings"] == original.get("tie_word_embeddings", False)
    windowed = original.get("sliding_window") if original.get("use_sliding_window", case.startswith("mistral")) else None
    assert config.get("sliding_window") == windowed
    assert config["architectures"][0] == ("MistralForCausalLM" if case == "mistral_window" else
                                          original["architectures"][0].replace("Mistral", "Llama"))
    # 40 kB files: several safetensors files and an index, read back by transformers
    assert (back / "model.safetensors.index.json").is_file()
    assert torch.equal(hf_logits(back, work["tokens"]), work["expected"][case])


def test_export_writes_the_rope_of_the_phase_it_was_saved_in(work):
    from convert_driver import PHASE_CASE, PHASE_ROPE

    back = work["root"] / PHASE_CASE / "back_phase"
    params = json.loads((back / "config.json").read_text())["rope_parameters"]
    assert params["rope_type"] == "yarn" and params["factor"] == PHASE_ROPE["factor"]
    megamid_logits = load(work, PHASE_CASE, "phase_run_tp1")
    assert max_diff(hf_logits(back, work["tokens"]), megamid_logits) < TOL
    assert max_diff(megamid_logits, work["expected"][PHASE_CASE]) > 100 * TOL  # the rope did change
    assert (back / "tokenizer.json").is_file() and (back / "tokenizer_config.json").is_file()


@pytest.mark.parametrize("case", CASES)
def test_tp2_shards_are_the_ones_megatron_declares(work, case):
    assert work["layout"][case] == {"ours_only": [], "theirs_only": []}


@pytest.mark.parametrize("case", CASES)
def test_model_config_counts_the_parameters_megatron_builds(work, case):
    built, counted = work["single"]["parameter_counts"][case]
    assert built == counted


@pytest.mark.parametrize("case", CASES)
def test_streamed_checkpoint_equals_megatrons_own_save(work, case):
    # same DCP metadata (keys, global shapes, chunks) and the same tensors as dist_checkpointing.save
    assert work["single"]["streamed_vs_megatron_save"][case] == []


def test_streaming_save_makes_each_chunk_once_and_drops_it(work):
    live = work["single"]["streaming_liveness"]
    assert sorted(live["made"]) == live["declared"]  # every TP chunk of every weight made exactly once
    # when a chunk is made, at most the previous one (just written, still DCP's loop variable) is alive
    assert live["max_alive"] <= 1


def test_checkpoint_holds_the_model_section_a_recipe_snippet_and_the_tokenizer(work):
    ckpt = work["root"] / "qwen2_default" / "tp2"
    meta = json.loads((ckpt / "megamid.json").read_text())
    assert meta["layout"] is None and meta["shard_layout"] == {"tp": 2, "pp": 1}
    model = build(ModelConfig, meta["config"]["model"], "model")
    assert model.add_qkv_bias and model.query_groups == 2 and model.rope["theta"] == 1e6
    snippet = yaml.safe_load((ckpt / "recipe_base.yaml").read_text())
    assert snippet["base"] == str(ckpt) and snippet["model"] == meta["config"]["model"]
    assert snippet["tokenizer"] == str(ckpt / "hf_tokenizer" / "tokenizer.json")
    assert os.path.isfile(snippet["tokenizer"])
    mistral = json.loads((work["root"] / "mistral_linear" / "tp1" / "megamid.json").read_text())
    assert mistral["config"]["tokenizer"] == "byte"


# ---- errors: raised before any megatron work, so they run in this process --------------------------
@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_hf")
    config = transformers.LlamaConfig(**{**SMALL, "num_hidden_layers": 1})
    transformers.LlamaForCausalLM(config).save_pretrained(d, safe_serialization=True)
    return d


def copy_dir(src, dst, config_update=None, drop=()):
    import shutil

    shutil.copytree(src, dst)
    for name in drop:
        os.remove(os.path.join(dst, name))
    if config_update:
        config = json.loads((dst / "config.json").read_text())
        config.update(config_update)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_sliding_windows_convert_when_every_layer_has_one():
    from megamid.checkpoint.hf_llama import attention_window_notes, model_config_from_hf

    def convert(config_cls, **kw):
        config = config_cls(**{**SMALL, **kw}).to_dict()
        config["architectures"] = [config_cls.__name__.replace("Config", "ForCausalLM")]
        return model_config_from_hf(config).sliding_window, attention_window_notes(config)

    assert convert(transformers.MistralConfig, sliding_window=8) == (8, [])
    assert convert(transformers.MistralConfig, sliding_window=None) == (None, [])
    assert convert(transformers.Qwen2Config, use_sliding_window=True, sliding_window=8, max_window_layers=0) == (8, [])
    assert convert(transformers.Qwen3Config, use_sliding_window=False, sliding_window=8) == (None, [])
    window, notes = convert(transformers.Qwen2Config, use_sliding_window=True, sliding_window=8, max_window_layers=1)
    assert window is None and len(notes) == 1 and "some layers only" in notes[0]


@pytest.mark.parametrize("update, match", [
    ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "architectures.*GPT2LMHeadModel"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"attention_bias": True}, "attention_bias"),
    ({"num_key_value_heads": 4}, r"k_proj.weight has shape \[32, 64\], expected \[64, 64\]"),
    ({"rope_parameters": {"rope_type": "nope", "rope_theta": 1.0}}, "rope_type"),
])
def test_bad_configs_name_the_field(tiny_hf, tmp_path, update, match):
    bad = copy_dir(tiny_hf, tmp_path / "hf", update)
    with pytest.raises((ConfigError, CheckpointFileError), match=match):
        import_hf(str(bad), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_missing_files_and_tensors_are_named(tiny_hf, tmp_path):
    with pytest.raises(CheckpointFileError, match="config.json: missing"):
        import_hf(str(copy_dir(tiny_hf, tmp_path / "a", drop=["config.json"])), str(tmp_path / "out"))
    with pytest.raises(CheckpointFileError, match="only safetensors"):
        import_hf(str(copy_dir(tiny_hf, tmp_path / "b", drop=["model.safetensors"])), str(tmp_path / "out"))
    from safetensors.torch import load_file, save_file

    c = copy_dir(tiny_hf, tmp_path / "c")
    state = load_file(c / "model.safetensors")
    del state["model.layers.0.mlp.up_proj.weight"]
    save_file(state, c / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointFileError, match="model.layers.0.mlp.up_proj.weight"):
        import_hf(str(c), str(tmp_path / "out"))
    (c / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-00002.safetensors"}}))
    with pytest.raises(CheckpointFileError, match="model-00002.safetensors: missing"):
        SafetensorsReader(str(c))


def test_layouts_that_do_not_divide_are_rejected(tiny_hf, tmp_path):
    with pytest.raises(ConfigError, match=r"config.json num_key_value_heads=2 is invalid with --tp 4: key/value heads "
                                          r"must be divisible by the tensor-parallel size \(try --tp 2\)") as err:
        import_hf(str(tiny_hf), str(tmp_path / "out"), tp=4)
    assert "(parallel)" not in str(err.value) and "tensor_model_parallel_size" not in str(err.value)
    with pytest.raises(ConfigError, match="num_hidden_layers=1 is invalid with --pp 2"):
        import_hf(str(tiny_hf), str(tmp_path / "out"), pp=2)


def test_a_non_empty_out_needs_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    check_out_dir(str(tmp_path / "out"), overwrite=False)  # empty: fine
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(CheckpointFileError, match="--overwrite"):
        check_out_dir(str(tmp_path / "out"), overwrite=False)
    check_out_dir(str(tmp_path / "out"), overwrite=True)


def test_cli_exits_non_zero_with_the_message(tiny_hf, tmp_path):
    bad = copy_dir(tiny_hf, tmp_path / "hf", {"architectures": ["GPT2LMHeadModel"]})
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_hf_to_megamid.py"), "--hf-dir",
                           str(bad), "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "GPT2LMHeadModel" in proc.stderr and "Traceback" not in proc.stderr
