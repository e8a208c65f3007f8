"""pytest tests/eval/test_eval_perplexity.py

Perplexity by position against a model with known per-position log-probs, the short-context ratio,
and document loading.
"""

import math

import numpy as np
import pytest
import torch

from megamid.eval import evaluate
from megamid.eval.perplexity import load_documents, position_bucket_edges, ppl_by_position, short_regression
from megamid.eval.scoring import token_logprobs


def test_bucket_edges():
    assert position_bucket_edges(64, 4) == [0, 16, 32, 48, 64]
    assert position_bucket_edges(10, 3) == [0, 3, 7, 10]
    assert position_bucket_edges(2, 8) == [0, 1, 2]


def test_ppl_by_position_matches_known_log_probs(position_model, make_documents):
    model = position_model(slope=0.05, max_batch=3)
    docs = make_documents([64, 100, 30, 64, 70])  # the 30-token one is too short for length 64
    r = ppl_by_position(model, docs, length=64, num_buckets=4)
    assert r["documents"] == 4 and r["skipped_short_documents"] == 1
    assert r["bucket_edges"] == [0, 16, 32, 48, 64]
    assert r["tokens"] == [4 * 15, 4 * 16, 4 * 16, 4 * 16]  # position 0 is never predicted
    for (lo, hi), nll, ppl in zip([(1, 16), (16, 32), (32, 48), (48, 64)], r["nll"], r["ppl"]):
        want = np.mean([model.expected_nll(p) for p in range(lo, hi)])
        assert nll == pytest.approx(want, rel=1e-6) and ppl == pytest.approx(math.exp(want), rel=1e-6)  # float32 logits
    assert r["nll"] == sorted(r["nll"], reverse=True)  # the model grows surer with position
    assert r["nll_mean"] == pytest.approx(np.mean([model.expected_nll(p) for p in range(1, 64)]))


def test_documents_cut_by_max_documents_are_not_counted_short(position_model, make_documents):
    docs = make_documents([64, 100, 30, 64, 70])  # one too short, four long enough
    r = ppl_by_position(position_model(), docs, length=64, num_buckets=4, max_documents=2)
    assert r["documents"] == 2 and r["skipped_short_documents"] == 1 and r["unused_documents"] == 2


def test_model_provided_token_logprobs_are_used(position_model, make_documents):
    model = position_model()
    tokens = torch.as_tensor(np.stack(make_documents([20, 20])))
    plain = token_logprobs(model, tokens)

    class Fused(position_model):
        def token_logprobs(self, toks):
            return plain * 2  # visibly not the logits path

    assert torch.equal(token_logprobs(Fused(), tokens), plain * 2)
    assert plain.shape == (2, 19)


def test_short_regression_ratio(position_model, make_documents):
    docs = make_documents([40, 10, 200])
    model, base = position_model(slope=0.02), position_model(slope=0.05)
    r = short_regression(model, docs, length=32, baseline=base)

    def ppl(m):
        nll = [m.expected_nll(p) for n in (32, 10, 32) for p in range(1, n)]
        return math.exp(np.mean(nll))

    assert r["documents"] == 3 and r["tokens"] == 31 + 9 + 31
    assert r["ppl"] == pytest.approx(ppl(model)) and r["baseline_ppl"] == pytest.approx(ppl(base))
    assert r["ratio"] == pytest.approx(ppl(model) / ppl(base)) and r["ratio"] > 1
    assert short_regression(model, docs, 32)["ratio"] is None


def test_evaluate_ppl_and_short(position_model, make_documents, tokenizer):
    docs = make_documents([128] * 3 + [64])
    r = evaluate(position_model(), tokenizer, ["ppl", "short"], [64, 128], documents=docs, short_length=16,
                 baseline=position_model(slope=0.0), num_buckets=2)
    assert r["ppl"]["by_length"]["64"]["documents"] == 4 and r["ppl"]["by_length"]["128"]["documents"] == 3
    assert r["short"]["ratio"] < 1  # slope 0.01 beats a flat model


def test_load_documents(tmp_path):
    a, b = np.arange(10, dtype=np.int32), np.arange(5, dtype=np.int32)
    np.save(tmp_path / "one.npy", a)
    np.save(tmp_path / "rows.npy", np.stack([a, a + 1]))
    np.savez(tmp_path / "many.npz", a, b)
    assert [d.tolist() for d in load_documents(str(tmp_path / "one.npy"))] == [a.tolist()]
    assert len(load_documents(str(tmp_path / "rows.npy"))) == 2
    docs = load_documents(str(tmp_path / "many.npz"), max_documents=1)
    assert len(docs) == 1 and docs[0].tolist() == a.tolist()
    with pytest.raises(FileNotFoundError, match="no documents"):
        load_documents(str(tmp_path / "missing"))
