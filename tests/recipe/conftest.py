"""Fixtures for the plan tests."""

import pytest

CORPUS = ("pretrain", "code", "prose", "math", "long")


@pytest.fixture
def corpus_dir(tmp_path, monkeypatch):
    """The tiny recipe's corpus/ as empty .bin/.idx files (plan checks that they exist, not their contents)."""
    (tmp_path / "corpus").mkdir()
    for name in CORPUS:
        for ext in (".bin", ".idx"):
            (tmp_path / "corpus" / f"{name}_text_document{ext}").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return tmp_path
