import os
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNNER = os.path.join(ROOT, "tests", "train", "run_recipe.py")

TINY = {
    "name": "tiny-test",
    "model": {"num_layers": 4, "hidden_size": 64, "num_attention_heads": 4, "num_query_groups": 2,
              "vocab_size": 258, "ffn_hidden_size": 128},
    "training": {"global_batch_size": 4, "micro_batch_size": 1, "seq_len": 32, "train_steps": 4,
                 "lr": {"style": "cosine", "peak_lr": 2.0e-3, "warmup_steps": 1, "start_lr": 1.0e-4},
                 "seed": 7},
    "checkpoint": {"save_interval": None, "save_final": False, "load": "none"},
}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A synthetic indexed corpus (byte tokens), written once per session in a subprocess."""
    prefix = str(tmp_path_factory.mktemp("corpus") / "syn")
    code = ("from megamid.data.synthetic import write_synthetic_corpus;"
            "from megamid.data.tokenizer import ByteTokenizer;"
            f"write_synthetic_corpus({prefix!r}, ByteTokenizer(), 400, 0)")
    subprocess.run([sys.executable, "-c", code], check=True)
    return prefix


@pytest.fixture
def recipe_file(tmp_path, corpus):
    def make(**sections):
        data = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY.items()}
        for key, value in sections.items():
            data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
        data["data"] = {"sources": [{"name": "syn", "prefix": corpus, "weight": 1.0}]}
        data["checkpoint"] = {**data["checkpoint"], "dir": str(tmp_path / "ckpt")}
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(data))
        return str(path)

    return make


def run(out, recipe, *args, nproc=1, env=None, check=True):
    """Runs the test driver in fresh process(es); returns a CompletedProcess.

    Each run gets its own session and output files, and the whole session is killed afterwards:
    megatron's checkpoint writer starts a multiprocessing Manager that outlives a process killed
    mid-save and would hold captured pipes open forever."""
    import signal
    import tempfile

    cmd = [sys.executable]
    if nproc > 1:
        cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += [RUNNER, str(out), recipe, *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True, env=full_env, start_new_session=True)
        try:
            returncode = proc.wait(timeout=900)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stdout.seek(0)
        stderr.seek(0)
        result = subprocess.CompletedProcess(cmd, returncode, stdout.read(), stderr.read())
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def load_result(out):
    import json

    with open(os.path.join(out, "result.json")) as f:
        return json.load(f)


def load_weights(out, layout_index=0, rank=0):
    import torch

    return torch.load(os.path.join(out, f"weights_{layout_index}_rank{rank}.pt"), weights_only=True)
