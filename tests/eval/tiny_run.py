"""A tiny two-phase training run with `eval:` in both phases, trained once per test session in a
subprocess (`megamid train`); the in-loop and checkpoint-eval tests share its outputs.

Phases: `short` (2 steps at 32 tokens, default rope, eval every step under linear x2) and `long` (2 steps at 64
tokens, YaRN x2, eval at its end). The corpus holds documents of 400-700 byte tokens, so passkey
(~300 tokens with the byte tokenizer) and ppl at 320 tokens have material.
"""

import os
import subprocess
import sys

import yaml

from helpers.training import TINY

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EVAL = {"tasks": ["passkey", "ppl"], "lengths": [320], "samples": 1, "depths": [0.5], "max_documents": 2,
        "num_buckets": 4, "use_matplotlib": False}


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def megamid(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "megamid.cli", *map(str, args)], capture_output=True, text=True,
                          env=env(), cwd=cwd, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"megamid {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def write_corpus(prefix: str) -> None:
    code = ("import numpy as np\n"
            "from megamid.data.synthetic import synthetic_documents, write_indexed\n"
            "from megamid.data.tokenizer import ByteTokenizer\n"
            "tok, texts, docs = ByteTokenizer(), synthetic_documents(400, 0), []\n"
            "rng = np.random.default_rng(0)\n"
            "while len(docs) < 24:\n"
            "    target, text = int(rng.integers(400, 700)), ''\n"
            "    while len(text) < target:\n"
            "        text += next(texts) + ' '\n"
            "    docs.append(tok.encode(text[:target]) + [tok.eod])\n"
            f"write_indexed({prefix!r}, docs, tok.vocab_size)\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=env())


def recipe(root: str, corpus: str) -> dict:
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY.items()}
    data["data"] = {"sources": [{"name": "long", "prefix": corpus, "weight": 1.0}]}
    data["checkpoint"] = {"dir": os.path.join(root, "ckpt"), "save_interval": None, "save_final": True, "load": "none"}
    data["phases"] = [
        # evaluated under another rope (zero-shot) every step: training must go on under its own
        {"name": "short", "steps": 2, "eval": {**EVAL, "interval": 1, "rope": {"type": "linear", "factor": 2}}},
        {"name": "long", "steps": 2, "seq_len": 64, "global_batch_size": 2,
         "rope": {"type": "yarn", "theta": 10000, "factor": 2, "original_max_position_embeddings": 32},
         "eval": dict(EVAL)},
    ]
    return data


def trained(root: str) -> dict:
    """Trains the tiny run under `root` once (later calls reuse it); returns its paths and train log."""
    done = os.path.join(root, "train.log")
    paths = {"root": root, "corpus": os.path.join(root, "corpus", "long"), "ckpt": os.path.join(root, "ckpt"),
             "recipe": os.path.join(root, "recipe.yaml"), "log": done}
    if not os.path.isfile(done):
        os.makedirs(os.path.join(root, "corpus"), exist_ok=True)
        write_corpus(paths["corpus"])
        with open(paths["recipe"], "w") as f:
            yaml.safe_dump(recipe(root, paths["corpus"]), f)
        proc = megamid("train", paths["recipe"])
        with open(done + ".tmp", "w") as f:
            f.write(proc.stdout + proc.stderr)
        os.replace(done + ".tmp", done)
    return paths
