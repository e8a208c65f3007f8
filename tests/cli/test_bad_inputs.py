"""python -m pytest -q tests/cli/test_bad_inputs.py

Every bad input of issue 15 through the real `megamid` command (a subprocess): exit status 2, one line
`megamid <cmd>: error: ...` naming the problem, no traceback, and no input or checkpoint file changed.
Most cases fail before a model is built; the checkpoint cases share one tiny run stopped at step 2.
"""

import gzip
import hashlib
import os
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


MODEL = {"num_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "num_query_groups": 2, "vocab_size": 258,
         "ffn_hidden_size": 64, "max_position_embeddings": 64}


def recipe_dict(work, **sections) -> dict:
    data = {"name": "bad-inputs", "model": dict(MODEL),
            "training": {"global_batch_size": 2, "micro_batch_size": 1, "seq_len": 32, "train_steps": 4,
                         "lr": {"style": "cosine", "peak_lr": 2.0e-3, "warmup_steps": 1}, "seed": 7},
            "checkpoint": {"dir": str(work / "ckpt"), "save_interval": 2},
            "data": {"sources": [{"name": "syn", "prefix": str(work / "syn"), "weight": 1.0}]}}
    data.update(sections)
    return data


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A work folder: corpus syn.{bin,idx}, other.{bin,idx}, recipe.yaml, ckpt/ stopped at step 2 (of 4)."""
    work = tmp_path_factory.mktemp("bad_inputs")
    code = ("from megamid.data.synthetic import write_synthetic_corpus; from megamid.data.tokenizer import ByteTokenizer;"
            f"write_synthetic_corpus({str(work / 'syn')!r}, ByteTokenizer(), 200, 0);"
            f"write_synthetic_corpus({str(work / 'other')!r}, ByteTokenizer(), 50, 3)")
    subprocess.run([sys.executable, "-c", code], check=True, env=_env(), capture_output=True)
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe_dict(work)))
    proc = megamid(work, "train", "recipe.yaml", "--exit-after-steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "ckpt" / "latest").read_text().strip() == "iter_0000002"
    return work


@pytest.fixture
def work(base, tmp_path):
    """A private copy of the base folder (paths inside recipe.yaml rewritten to it)."""
    out = tmp_path / "w"
    shutil.copytree(base, out, symlinks=True)
    (out / "recipe.yaml").write_text((out / "recipe.yaml").read_text().replace(str(base), str(out)))
    return out


def _env():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def megamid(cwd, *argv, timeout=300):
    return subprocess.run([sys.executable, "-m", "megamid.cli", *map(str, argv)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def hashes(folder) -> dict:
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                with open(path, "rb") as f:
                    out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


# ---- how each case damages the work folder -----------------------------------------------------

def write_recipe(w, **sections):
    (w / "recipe.yaml").write_text(yaml.safe_dump(recipe_dict(w, **sections)))


def random_bytes(w, name, size=4096, seed=0):
    import random

    (w / name).write_bytes(random.Random(seed).randbytes(size))


def truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def first_shard(w, step="iter_0000002"):
    return sorted((w / "ckpt" / step).glob("*.distcp"))[0]


def phased(w, seq_len, rope):
    write_recipe(w, checkpoint={"dir": str(w / "fresh"), "save_interval": 2},
                 phases=[{"name": "a", "steps": 2}, {"name": "b", "steps": 2, "seq_len": seq_len, "rope": rope}])


def base_of_other_shape(w):
    write_recipe(w, model={**MODEL, "hidden_size": 64}, base=str(w / "ckpt"),
                 checkpoint={"dir": str(w / "fresh"), "save_interval": 2})


def resume_with_other_shape(w):
    write_recipe(w, model={**MODEL, "ffn_hidden_size": 96})


YARN_WIDE = {"type": "yarn", "theta": 10000, "factor": 2000000, "original_max_position_embeddings": 64}
YARN_2X = {"type": "yarn", "theta": 10000, "factor": 2, "original_max_position_embeddings": 64}

# (id, command and arguments, set-up of the work folder, text the error must contain[, marks])
CASES = [
    # non-finite numbers in any validator
    ("lr-nan", ["train", "recipe.yaml", "training.lr.peak_lr=.nan"], None,
     "training.lr.peak_lr=nan is invalid: expected a finite number > 0"),
    ("lr-inf-plan", ["plan", "recipe.yaml", "training.lr.peak_lr=.inf"], None,
     "training.lr.peak_lr=inf is invalid: expected a finite number > 0"),
    ("min-lr-nan", ["train", "recipe.yaml", "training.lr.min_lr=.nan"], None, "training.lr.min_lr=nan is invalid"),
    ("beta-nan", ["train", "recipe.yaml", "training.adam_beta2=.nan"], None,
     "training.adam_beta2=nan is invalid: expected a finite number in [0, 1)"),
    ("weight-decay-inf", ["train", "recipe.yaml", "training.weight_decay=.inf"], None,
     "training.weight_decay=inf is invalid: expected a finite number >= 0"),
    ("dropout-nan", ["train", "recipe.yaml", "model.hidden_dropout=.nan"], None, "model.hidden_dropout=nan is invalid"),
    ("rope-theta-inf", ["train", "recipe.yaml", "model.rope={type: default, theta: .inf}"], None, "theta"),
    ("source-weight-inf", ["train", "recipe.yaml", "data.sources.0.weight=.inf"], None,
     "data.sources[0].weight=inf is invalid: expected a finite number >= 0"),
    # absurd sizes
    ("steps-1e15", ["train", "recipe.yaml", "training.train_steps=1000000000000000", "checkpoint.dir=fresh"], None,
     "17.8 PiB (10 bytes per sample) in host memory"),      # the data layer's bound, or the plan's first
    ("steps-1e15-plan", ["plan", "recipe.yaml", "training.train_steps=1000000000000000", "checkpoint.dir=fresh"], None,
     "training.train_steps is too large: 2,000,000,000,000,000 samples"),
    ("seq-len-1e8-plan", ["plan", "recipe.yaml"], lambda w: phased(w, 100000000, YARN_WIDE),
     "phases[b].seq_len=100000000 is too large: the activations of one micro-batch"),
    ("seq-len-1e8-train", ["train", "recipe.yaml"], lambda w: phased(w, 100000000, YARN_WIDE),
     "phases[b].seq_len=100000000 is too large: the activations of one micro-batch"),
    ("hidden-262144-plan", ["plan", "recipe.yaml", "model.hidden_size=262144", "checkpoint.dir=fresh"], None,
     "model.hidden_size=262144 (num_layers=2"),
    ("hidden-262144-train", ["train", "recipe.yaml", "model.hidden_size=262144", "checkpoint.dir=fresh"], None,
     "model.hidden_size=262144 (num_layers=2"),
    # recipes and overrides (already handled)
    ("recipe-missing", ["train", "nope.yaml"], None, "recipe file 'nope.yaml' does not exist"),
    ("recipe-not-yaml", ["plan", "recipe.yaml"], lambda w: (w / "recipe.yaml").write_text("a: [1,\n"),
     "is not valid YAML"),
    ("unknown-key", ["train", "recipe.yaml", "model.hidden=5"], None, "unknown key(s) 'hidden' in model"),
    ("bad-override", ["train", "recipe.yaml", "training"], None, "override 'training' is invalid"),
    ("steps-not-integer", ["train", "recipe.yaml", "training.train_steps=1e15"], None,
     "training.train_steps='1e15' is invalid: expected an integer"),
    ("data-prefix-missing", ["plan", "recipe.yaml", "data.sources.0.prefix=gone"], None,
     "data.sources[0].prefix='gone' is invalid: gone.bin and gone.idx not found"),
    # data prepare
    ("prepare-random-bytes", ["data", "prepare", "--input", "random.txt", "--tokenizer", "byte", "--output", "out/x"],
     lambda w: random_bytes(w, "random.txt"), "input 'random.txt' is not UTF-8: byte 0x"),
    ("prepare-latin1-jsonl-gz", ["data", "prepare", "--input", "l.jsonl.gz", "--tokenizer", "byte", "--output", "out/x"],
     lambda w: (w / "l.jsonl.gz").write_bytes(gzip.compress(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')),
     "input 'l.jsonl.gz' is not UTF-8: byte 0xe9 at byte offset 28 of the decompressed stream"),
    ("prepare-not-gzip", ["data", "prepare", "--input", "r.jsonl.gz", "--tokenizer", "byte", "--output", "out/x"],
     lambda w: random_bytes(w, "r.jsonl.gz"), "input 'r.jsonl.gz' cannot be read as gzip"),
    ("prepare-directory", ["data", "prepare", "--input", "corpus", "--tokenizer", "byte", "--output", "out/x"],
     lambda w: (w / "corpus").mkdir(), "input 'corpus' is a directory"),
    ("prepare-missing", ["data", "prepare", "--input", "nope.txt", "--tokenizer", "byte", "--output", "out/x"], None,
     "input 'nope.txt' not found"),
    ("prepare-bad-json", ["data", "prepare", "--input", "b.jsonl", "--tokenizer", "byte", "--output", "out/x"],
     lambda w: (w / "b.jsonl").write_text('{"text": "a"}\nnot json\n'), "line 2: not valid JSON"),
    ("prepare-corrupt-sp-model", ["data", "prepare", "--input", "recipe.yaml", "--tokenizer", "bad.model", "--output",
                                  "out/x"], lambda w: random_bytes(w, "bad.model"),
     "tokenizer 'bad.model' cannot be loaded: expected a sentencepiece .model"),
    ("prepare-random-tokenizer-json", ["data", "prepare", "--input", "recipe.yaml", "--tokenizer", "tok/tokenizer.json",
                                       "--output", "out/x"],
     lambda w: ((w / "tok").mkdir(), random_bytes(w, "tok/tokenizer.json")),
     "tokenizer 'tok/tokenizer.json' cannot be loaded: expected a Hugging Face tokenizer.json"),
    ("prepare-tokenizer-folder-empty", ["data", "prepare", "--input", "recipe.yaml", "--tokenizer", "tok", "--output",
                                        "out/x"], lambda w: (w / "tok").mkdir(), "tokenizer 'tok' is a folder without"),
    ("prepare-quality-flags", ["data", "prepare", "--input", "recipe.yaml", "--tokenizer", "byte", "--output", "out/x",
                               "--quality-key", "q"], None, "--quality-key and --min-quality go together"),
    # tokenizers and indexed data in train
    ("train-corrupt-sp-model", ["train", "recipe.yaml", "tokenizer=bad.model"], lambda w: random_bytes(w, "bad.model"),
     "tokenizer 'bad.model' cannot be loaded: expected a sentencepiece .model"),
    ("train-random-tokenizer-json", ["train", "recipe.yaml", "tokenizer=tokenizer.json"],
     lambda w: random_bytes(w, "tokenizer.json"), "tokenizer 'tokenizer.json' cannot be loaded"),
    ("train-bin-with-other-idx", ["train", "recipe.yaml", "checkpoint.load=none"],
     lambda w: shutil.copy(w / "other.idx", w / "syn.idx"), "syn.bin (", ),
    ("train-truncated-idx", ["train", "recipe.yaml", "checkpoint.load=none"], lambda w: truncate(w / "syn.idx", 100),
     "syn.idx is not a valid index for"),
    ("train-garbage-idx", ["train", "recipe.yaml", "checkpoint.load=none"], lambda w: random_bytes(w, "syn.idx"),
     "expected a Megatron indexed-dataset header"),
    ("train-truncated-bin", ["train", "recipe.yaml", "checkpoint.load=none"], lambda w: truncate(w / "syn.bin", 100),
     "the .bin is truncated"),
    # eval arguments
    ("eval-samples-0", ["eval", "ckpt", "--samples", "0"], None, "--samples 0 is invalid: expected an integer >= 1"),
    ("eval-depth-nan", ["eval", "ckpt", "--depths", "0.5,nan"], None, "--depths nan is invalid"),
    ("eval-unknown-task", ["eval", "ckpt", "--tasks", "bogus"], None, "--tasks: unknown bogus"),
    # checkpoints (verified checkpoints, CLI error path: other parts of issue 15)
    ("latest-missing-dir", ["train", "recipe.yaml"], lambda w: (w / "ckpt" / "latest").write_text("iter_0000009\n"),
     "iter_0000009"),
    ("latest-garbage", ["train", "recipe.yaml"], lambda w: random_bytes(w, "ckpt/latest", 64),
     "latest"),
    ("truncated-shard", ["train", "recipe.yaml"], lambda w: truncate(first_shard(w), 100),
     ".distcp"),
    ("deleted-shard", ["train", "recipe.yaml"], lambda w: first_shard(w).unlink(), ".distcp"),
    ("deleted-metadata", ["train", "recipe.yaml"], lambda w: (w / "ckpt" / "iter_0000002" / ".metadata").unlink(),
     ".metadata"),
    ("corrupt-megamid-json", ["train", "recipe.yaml"],
     lambda w: (w / "ckpt" / "iter_0000002" / "megamid.json").write_text("{not json"), "megamid.json"),
    ("base-of-other-shape", ["train", "recipe.yaml"], base_of_other_shape, "hidden_size"),
    ("resume-with-other-shape", ["train", "recipe.yaml"], resume_with_other_shape, "ffn"),
    ("rope-short-of-seq-len", ["train", "recipe.yaml"], lambda w: phased(w, 256, YARN_2X), "phases[b]"),
    ("rope-short-of-seq-len-default", ["train", "recipe.yaml"], lambda w: phased(w, 128, {"type": "default",
                                                                                           "theta": 10000}),
     "phases[b]"),
]


def _params():
    out = []
    for case in CASES:
        name, argv, setup, message, *marks = case
        out.append(pytest.param(argv, setup, message, id=name, marks=marks))
    return out


@pytest.mark.parametrize("argv, setup, message", _params())
def test_bad_input_is_one_line_exit_2_and_changes_no_file(work, argv, setup, message):
    if setup is not None:
        setup(work)
    before = hashes(work)
    proc = megamid(work, *argv)
    after = hashes(work)
    command = argv[0]
    lines = proc.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith(f"megamid {command}: error: ")]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1, proc.stderr[-3000:]
    # one line; `megamid plan` lists all of a recipe's problems, indented, under its one error line
    block = [lines[errors[0]]] + [line for line in lines[errors[0] + 1:] if line.startswith("  ")]
    assert lines[errors[0] + len(block):] == [] or command == "plan" or len(block) == 1
    assert message in "\n".join(block), "\n".join(block)
    assert {k: v for k, v in after.items() if k in before} == before          # nothing changed or deleted
    assert not [k for k in after if k.startswith("out/")]                    # prepare published nothing
