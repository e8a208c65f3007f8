"""pytest tests/study/test_study.py   (`megamid data synthetic` and the plumbing of `megamid study`)

The synthetic documents are exact in length, their answer spans hold the answers, the held-out sets on
disk are the documents an evaluator regenerates, and the passkey text is the eval's short form. The
studies run a few steps of everything (--quick) and write their report; the numbers of a real run are
in the README, not asserted here.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from megamid.data.synthetic import (PASSKEY_HEAD, PASSKEY_NEEDLE, PASSKEY_QUESTION, heldout_documents, task_documents,
                                    write_synthetic)
from megamid.data.tokenizer import ByteTokenizer
from megamid.eval.retrieval import PASSKEY_SHORT

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def megamid(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "megamid.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def test_passkey_text_is_the_evals_short_form():
    assert (PASSKEY_HEAD, PASSKEY_NEEDLE, PASSKEY_QUESTION) == PASSKEY_SHORT


@pytest.mark.parametrize("task", ["passkey", "mqar", "copy"])
def test_documents_are_exact_and_spans_hold_the_answers(task):
    tok = ByteTokenizer()
    docs = list(task_documents(task, tok, 20, 128, 256, seed=3, exact=True))
    for ids, _ in docs:  # lengths drawn from the range, each document filled to its own
        assert len(ids) in range(128, 257)
    assert len({len(ids) for ids, _ in docs}) > 1
    for ids, spans in docs:
        text = tok.decode(ids)
        for lo, hi, depth in spans:
            answer = tok.decode(ids[lo:hi])
            assert 0 <= depth <= 1
            if task == "copy":  # the repeat is the string
                assert text.startswith("Copy:" + answer + "\nAgain:" + answer)
            elif task == "passkey":  # the key asked for is the key planted
                assert text.endswith(PASSKEY_QUESTION + answer) and f"The pass key is{answer}" in text
            else:  # the queried value is the one paired with the key before the queries
                key = tok.decode(ids[:lo]).rsplit(" ", 1)[1]
                assert len(key) == 1 and len(answer) == 1 and f" {key}{answer}" in text.split("\nQuery:")[0]
    assert [d for d in task_documents(task, tok, 3, 128, 128, 5)] == [d for d in task_documents(task, tok, 3, 128, 128, 5)]


def test_heldout_sets_on_disk_match_the_regenerated_documents(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    tok = ByteTokenizer()
    manifest = write_synthetic(str(tmp_path), tok, "byte", ("passkey", "mqar"), train_docs=10, heldout_docs=3,
                               min_length=128, max_length=128, heldout_lengths=(128, 256), code_docs=2,
                               code_length=256, code_train_docs=2)
    assert set(manifest["sets"]) == {"passkey_train", "mqar_train", "passkey_heldout_128", "passkey_heldout_256",
                                     "mqar_heldout_128", "mqar_heldout_256", "code_heldout", "code_train"}
    train = IndexedDataset(str(tmp_path / "mqar_train"))
    assert set(np.asarray(train.sequence_lengths).tolist()) == {128}  # L tokens with the EOD: windows align
    for task in ("passkey", "mqar"):
        ds = IndexedDataset(str(tmp_path / f"{task}_heldout_256"))
        regenerated = heldout_documents(task, tok, 256, 3)
        assert [np.array(ds[i]).tolist() for i in range(len(ds))] == [ids for ids, _ in regenerated]
    code = IndexedDataset(str(tmp_path / "code_heldout"))
    assert len(code) == 2 and min(code.sequence_lengths) >= 256
    assert json.load(open(tmp_path / "synthetic.json"))["sets"]["code_heldout"]["held_out"] is True


def test_cli_data_synthetic_errors_are_one_line(tmp_path):
    for args, message in ((["--tasks", "passkey,foo"], "--tasks='passkey,foo' is invalid"),
                          (["--min-length", "40", "--max-length", "40"], "too short for a passkey document"),
                          (["--heldout-lengths", "12a"], "--heldout-lengths='12a' is invalid")):
        proc = megamid("data", "synthetic", tmp_path / "x", *args)
        assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]


def test_cli_data_synthetic_placed_writes_aligned_documents_with_masks(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    proc = megamid("data", "synthetic", tmp_path / "s", "--placed", "--min-length", "90", "--max-length", "128",
                   "--train-docs", "12", "--heldout-docs", "1", "--heldout-lengths", "128", "--code-docs", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for task in ("passkey", "mqar"):
        tokens = IndexedDataset(str(tmp_path / "s" / f"{task}_train"))
        mask = IndexedDataset(str(tmp_path / "s" / f"{task}_train.lossmask"))
        assert set(np.asarray(tokens.sequence_lengths).tolist()) == {128}  # L tokens with the EOD: windows align
        assert np.asarray(mask.sequence_lengths).tolist() == np.asarray(tokens.sequence_lengths).tolist()


def _check_report(out, names):
    report = open(os.path.join(out, "report.md")).read()
    for name in names:
        assert name in report
    assert "## Time" in report and "## Commands" in report and "megamid train" in report
    return json.load(open(os.path.join(out, "results.json")))


@pytest.mark.slow
def test_study_extension_plumbing(tmp_path):
    proc = megamid("study", "extension", tmp_path / "ext", "--quick")
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = _check_report(tmp_path / "ext", ["none", "pi", "ntk", "dynamic_ntk", "yarn", "abf", "longrope", "Zero-shot"])
    assert r["base_steps"] == 4 and set(r["fine_tuned"]) == set(r["methods"]) and len(r["methods"]) == 7
    for m in r["methods"]:
        assert os.path.isdir(tmp_path / "ext" / "ft" / m / "branches" / m)  # each fine-tune is a branch anneal
    # LongRoPE's rows use the searched factors (monotone, >= 1), for 2L and 4L
    from megamid.study.longrope import monotone

    for factor in ("2", "4"):
        found = r["longrope_search"][factor]
        assert monotone(found["factors"]) and min(found["factors"]) >= 1 and found["evaluations"] >= 4
        assert found["score"] <= min(found["seeds"].values())  # the search never returns worse than its seeds
    assert r["rope"]["longrope"]["long_factor"] == r["longrope_search"]["4"]["factors"]
    # zero-shot really switched the rope: perplexity at 4L differs between methods
    assert len({round(r["zero_shot"][m]["ppl"]["512"]["ppl_mean"], 6) for m in r["methods"]}) > 1


def test_study_anneal_plumbing(tmp_path):
    proc = megamid("study", "anneal", tmp_path / "ann", "--quick")
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = _check_report(tmp_path / "ann", ["wsd", "curated", "cosine"])
    runs = r["runs"]
    assert runs["wsd"]["tokens"] == runs["cosine"]["tokens"] == runs["curated"]["tokens"]
    assert "branches/curated" in runs["curated"]["checkpoint"]
    assert len(r["curves"]["cosine"]) == r["stable_steps"] + r["anneal_steps"]


def test_study_cli_errors(tmp_path):
    proc = megamid("study", "extension", tmp_path / "x", "--threads", "0")
    assert proc.returncode == 2 and "--threads=0 is invalid" in proc.stderr
    proc = megamid("study", "extension", tmp_path / "x", "--base-max-steps", "1000")
    assert proc.returncode == 2 and "--base-max-steps=1000 is invalid: the base's first phase alone takes 1500" \
        in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "x")
