"""Fixtures for the plan tests."""

import pytest

CORPUS = ("pretrain", "code", "prose", "math", "long")
TASKS = ("tasks/copy_train", "tasks/passkey_train", "tasks256/passkey_train", "tasks512/passkey_train")
HELD_OUT = "tasks/code_heldout"   # the in-loop perplexity's documents


@pytest.fixture
def corpus_dir(tmp_path, monkeypatch):
    """The tiny recipe's corpus/ (text and synthetic task sets) as empty files (plan checks that they exist,
    not their contents)."""
    (tmp_path / "corpus").mkdir()
    for name in CORPUS:
        for ext in (".bin", ".idx"):
            (tmp_path / "corpus" / f"{name}_text_document{ext}").write_bytes(b"")
    for name in TASKS:  # run_demo.py's `megamid data synthetic` sets, with their loss masks
        (tmp_path / "corpus" / name).parent.mkdir(exist_ok=True)
        for ext in (".bin", ".idx", ".lossmask.bin", ".lossmask.idx"):
            (tmp_path / "corpus" / f"{name}{ext}").write_bytes(b"")
    for ext in (".bin", ".idx"):
        (tmp_path / "corpus" / f"{HELD_OUT}{ext}").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return tmp_path
