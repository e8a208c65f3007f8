"""python -m pytest -q tests/data/test_demo_corpus.py

The demo corpus: every domain present, deterministic for a seed, different for another seed."""

import json

from megamid.data.demo_corpus import build_documents, write_corpus


def test_domains_and_determinism():
    a, b = build_documents("test", seed=0), build_documents("test", seed=0)
    assert a == b
    assert set(a) == {"code", "prose", "math", "long", "pretrain"}
    assert all(a[d] for d in a)
    assert build_documents("test", seed=1) != a
    assert any("Answer:" in d["text"] for d in a["math"])
    assert any(d["origin"] == "retrieval" and "Question: what is the value of key" in d["text"] for d in a["long"])
    assert any(d["origin"].startswith("repo:") and "# file: " in d["text"] for d in a["long"])
    assert min(len(d["text"]) for d in a["long"]) >= 16_000
    assert not {d["origin"] for d in a["code"]} & {d["origin"] for d in a["pretrain"]}  # replay is disjoint


def test_write_corpus_tokenizes_each_domain(tmp_path):
    manifest = write_corpus(str(tmp_path), "test", seed=0)
    with open(tmp_path / "corpus.json") as f:
        assert json.load(f) == manifest
    for domain, entry in manifest["domains"].items():
        assert (tmp_path / f"{domain}_text_document.bin").stat().st_size == 2 * entry["tokens"]  # uint16
