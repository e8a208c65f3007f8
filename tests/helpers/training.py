"""Shared test helpers for training runs: the tiny recipe, a synthetic corpus, and the driver launcher.

    from helpers.training import TINY, load_result, load_weights, run, write_corpus

(pytest puts tests/ on sys.path through tests/conftest.py, so `helpers` imports from any test folder.)
"""

import json
import os
import signal
import subprocess
import sys
import tempfile

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


def write_corpus(prefix: str, num_documents: int = 400, seed: int = 0) -> str:
    """A synthetic indexed corpus (byte tokens) at `prefix`, written in a subprocess (no megatron import here)."""
    code = ("from megamid.data.synthetic import write_synthetic_corpus;"
            "from megamid.data.tokenizer import ByteTokenizer;"
            f"write_synthetic_corpus({prefix!r}, ByteTokenizer(), {num_documents}, {seed})")
    subprocess.run([sys.executable, "-c", code], check=True)
    return prefix


def recipe_dict(corpus: str, ckpt_dir: str, **sections) -> dict:
    """TINY with `sections` merged in (mappings update, other values replace), one source, its own checkpoints."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY.items()}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    data["data"] = {"sources": [{"name": "syn", "prefix": corpus, "weight": 1.0}]}
    data["checkpoint"] = {**data["checkpoint"], "dir": ckpt_dir}
    return data


def run(out, recipe, *args, nproc=1, env=None, check=True):
    """Runs the test driver in fresh process(es); returns a CompletedProcess.

    Each run gets its own session and output files, and the whole session is killed afterwards:
    megatron's checkpoint writer starts a multiprocessing Manager that outlives a process killed
    mid-save and would hold captured pipes open forever."""
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
    with open(os.path.join(out, "result.json")) as f:
        return json.load(f)


def load_weights(out, layout_index=0, rank=0):
    import torch

    return torch.load(os.path.join(out, f"weights_{layout_index}_rank{rank}.pt"), weights_only=True)
