"""pytest tests/e2e/test_user_path.py   (slow: the whole user path through the commands, ~3 min on 2 cores)

A user's path, command by command, on random tiny HF Llamas written with transformers (GQA; untied and
tied embeddings) and a byte-level tokenizer.json whose end-of-text id is the model's eos:

    convert_hf_to_megamid.py -> megamid data prepare -> megamid plan -> megamid train (an anneal, then YaRN x2
    at twice the length) -> a branch of the YaRN phase -> average_checkpoints.py (main + branch) ->
    megamid eval on the base, the trained checkpoint (with --baseline BASE), the branch and the soup ->
    convert_megamid_to_hf.py of each -> transformers

Checks: every command succeeds; transformers' logits of each export equal megamid.load's within 1e-4 at
the extended length; config.json carries the eos/pad ids, the rope each trained with and the extended
window; generation_config.json and the tokenizer files are written and load in transformers.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "tests", "e2e", "logits_driver.py")
EOS, PAD = 256, 257          # the tokenizer's <|endoftext|> and <pad>, after the 256 byte symbols
WINDOW = 64                  # the HF model's max_position_embeddings; YaRN x2 extends it to 128
YARN = {"type": "yarn", "theta": 10000.0, "factor": 2.0, "original_max_position_embeddings": WINDOW}
TOL = 1e-4
CHECKPOINTS = ("base", "trained", "branch", "soup", "tied_base")

pytestmark = pytest.mark.slow


def write_tokenizer(directory) -> None:
    """A byte-level tokenizer.json (one token per UTF-8 byte) with <|endoftext|> = 256 and <pad> = 257."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE({c: i for i, c in enumerate(alphabet)}, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<pad>"])
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "pad_token": "<pad>",
                   "model_max_length": WINDOW}, f)


def write_hf_model(directory, tied: bool, seed: int) -> None:
    config = transformers.LlamaConfig(
        vocab_size=258, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=WINDOW, tie_word_embeddings=tied, bos_token_id=None,
        eos_token_id=EOS, pad_token_id=PAD, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = transformers.LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # O(1) logits that depend on attention (HF's 0.02 init would hide a wrong rope)
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if "norm" in name else 0.2 * noise)
    model.save_pretrained(directory, safe_serialization=True)
    write_tokenizer(directory)


def write_documents(path) -> None:
    """Plain-text documents of 400-700 bytes (ppl at 320 tokens needs that many) as JSONL."""
    import random

    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    with open(path, "w") as f:
        for _ in range(40):
            text = ""
            target = rng.randint(400, 700)
            while len(text) < target:
                a, b = rng.randint(0, 99), rng.randint(0, 99)
                text += f"{a} + {b} = {a + b}. " if rng.random() < 0.5 else " ".join(rng.choices(words, k=4)) + ". "
            f.write(json.dumps({"text": text[:target]}) + "\n")


def recipe(root, base_dir, corpus, long_lr: float) -> dict:
    """The converted base's recipe_base.yaml (base, tokenizer, model) plus what a user adds."""
    import yaml

    with open(os.path.join(base_dir, "recipe_base.yaml")) as f:
        data = yaml.safe_load(f)
    data.update({
        "name": "e2e",
        "training": {"global_batch_size": 2, "micro_batch_size": 1, "seq_len": WINDOW, "train_steps": 2, "seed": 3,
                     "lr": {"style": "linear", "peak_lr": 1.0e-3, "warmup_steps": 0, "min_lr": 0.0}},
        "data": {"sources": [{"name": "docs", "prefix": corpus, "weight": 1.0}]},
        "checkpoint": {"dir": os.path.join(root, "run"), "save_interval": None, "save_final": True, "load": "auto"},
        "phases": [{"name": "anneal", "steps": 2},
                   {"name": "long", "steps": 2, "seq_len": 2 * WINDOW, "rope": YARN,
                    "lr": {"style": "linear", "peak_lr": long_lr, "warmup_steps": 0, "min_lr": 0.0}}],
    })
    return data


def run(*cmd, cwd=ROOT, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    env.pop("RANK", None)  # each command is a world of one, whatever launched pytest
    proc = subprocess.run([sys.executable, *map(str, cmd)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def megamid(*args, **kw) -> subprocess.CompletedProcess:
    return run("-m", "megamid.cli", *args, **kw)


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    """Runs the whole user path once; returns its directories and outputs."""
    import yaml

    root = tmp_path_factory.mktemp("user_path")
    hf, hf_tied = root / "hf" / "untied", root / "hf" / "tied"
    write_hf_model(hf, tied=False, seed=0)
    write_hf_model(hf_tied, tied=True, seed=1)
    base, tied_base = root / "bases" / "untied", root / "bases" / "tied"
    run("tools/convert_hf_to_megamid.py", "--hf-dir", hf, "--out", base, "--tp", "2")
    run("tools/convert_hf_to_megamid.py", "--hf-dir", hf_tied, "--out", tied_base)

    write_documents(root / "docs.jsonl")
    corpus = root / "corpus" / "docs"
    megamid("data", "prepare", "--input", root / "docs.jsonl", "--tokenizer", base / "hf_tokenizer" / "tokenizer.json",
            "--output", corpus, "--workers", "1")
    main, branch_recipe = root / "recipe.yaml", root / "recipe_branch.yaml"
    main.write_text(yaml.safe_dump(recipe(root, base, str(corpus), 1.0e-3)))
    branch_recipe.write_text(yaml.safe_dump(recipe(root, base, str(corpus), 3.0e-3)))
    plan = megamid("plan", main).stdout
    megamid("train", main)
    megamid("train", branch_recipe, "--from-phase", "long", "--branch", "b2")
    soup = root / "soup"
    run("tools/average_checkpoints.py", root / "run", root / "run" / "branches" / "b2", "--out", soup)
    ckpts = {"base": base, "trained": root / "run", "branch": root / "run" / "branches" / "b2", "soup": soup,
             "tied_base": tied_base}

    evals = {}
    for name, ckpt in ckpts.items():
        extra = ["--tasks", "passkey,ppl,short", "--baseline", base] if name == "trained" else ["--tasks", "passkey,ppl"]
        proc = megamid("eval", ckpt, *extra, "--lengths", "320", "--samples", "1", "--depths", "0.5",
                       "--documents", corpus, "--max-documents", "2", "--out", root / "eval" / name)
        evals[name] = json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("{")))
    exports = {}
    for name, ckpt in ckpts.items():
        exports[name] = root / "export" / name
        run("tools/convert_megamid_to_hf.py", "--ckpt", ckpt, "--out", exports[name])

    tokens = torch.randint(0, 256, (2, 2 * WINDOW), generator=torch.Generator().manual_seed(5))
    torch.save(tokens, root / "tokens.pt")
    run(DRIVER, root / "megamid_logits.pt", root / "tokens.pt", *[f"{n}={p}" for n, p in ckpts.items()])
    return {"root": root, "ckpts": ckpts, "exports": exports, "evals": evals, "plan": plan, "tokens": tokens,
            "logits": torch.load(root / "megamid_logits.pt", weights_only=True),
            "records": json.loads((root / "megamid_logits.json").read_text())}


def hf_logits(directory, tokens):
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(input_ids=tokens, position_ids=torch.arange(tokens.shape[1]).expand_as(tokens)).logits


def test_plan_shows_both_phases(path):
    assert "anneal" in path["plan"] and "long" in path["plan"] and "yarn" in path["plan"]


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_eval_runs_on_every_kind_of_checkpoint(path, name):
    summary = path["evals"][name]
    assert 0.0 <= summary["passkey"] <= 1.0 and summary["ppl"]["320"] > 1
    results = json.loads((path["root"] / "eval" / name / "results.json").read_text())
    assert results["ppl"]["by_length"]["320"]["documents"] == 2
    assert results["ppl"]["by_length"]["320"]["skipped_short_documents"] == 0  # cut by --max-documents, not short


def test_baseline_on_a_converted_base(path):
    short = json.loads((path["root"] / "eval" / "trained" / "results.json").read_text())["short"]
    assert short["baseline_ppl"] > 1 and short["ratio"] == pytest.approx(short["ppl"] / short["baseline_ppl"])


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_export_loads_in_transformers_with_megamids_logits(path, name):
    want = path["logits"][name]
    assert want.abs().max() > 1.0  # large enough that a wrong rope or mapping would show
    got = hf_logits(path["exports"][name], path["tokens"])
    assert float((got - want).abs().max()) < TOL


def test_training_changed_the_weights_and_the_branch_and_soup_differ(path):
    logits = path["logits"]
    assert float((logits["trained"] - logits["base"]).abs().max()) > 100 * TOL
    assert float((logits["branch"] - logits["trained"]).abs().max()) > 100 * TOL
    assert float((logits["soup"] - logits["trained"]).abs().max()) > 10 * TOL


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_exported_config_carries_ids_rope_window_and_tokenizer(path, name):
    out = path["exports"][name]
    config = json.loads((out / "config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"]) == (EOS, PAD)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == EOS and generation["pad_token_id"] == PAD
    scaled = name in ("trained", "branch", "soup")
    assert config["rope_parameters"]["rope_type"] == ("yarn" if scaled else "default")
    assert config["max_position_embeddings"] == (2 * WINDOW if scaled else WINDOW)
    if scaled:
        assert config["rope_scaling"]["rope_type"] == "yarn" and config["rope_scaling"]["factor"] == 2.0
        assert config["rope_scaling"]["original_max_position_embeddings"] == WINDOW
    loaded = transformers.AutoConfig.from_pretrained(out)
    assert loaded.eos_token_id == EOS and loaded.max_position_embeddings == config["max_position_embeddings"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer.eos_token_id == EOS and tokenizer("ab")["input_ids"] == tokenizer.convert_tokens_to_ids(["a", "b"])


def test_every_checkpoint_records_what_it_is(path):
    records = path["records"]
    assert records["base"]["provenance"]["kind"] == "hf-import" and records["soup"]["provenance"]["kind"] == "average"
    assert records["trained"]["provenance"]["kind"] == "train" and records["branch"]["provenance"]["kind"] == "branch"
    for name in ("trained", "branch", "soup"):
        assert records[name]["rope"]["type"] == "yarn", name
    for name in CHECKPOINTS:
        assert records[name]["tokenizer_special_ids"]["eos"] == EOS, name
