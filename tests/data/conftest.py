"""python -m pytest -q tests/data   (fixtures for every test in tests/data)

Tiny corpora for the data tests: a few hundred documents per source, byte tokenizer."""

import json
import random

import pytest


def write_source(tmp_dir, name: str, texts) -> str:
    """texts -> tmp_dir/<name>.jsonl -> tmp_dir/<name>_text_document.{bin,idx}; returns the prefix."""
    from megamid.data.prepare import prepare

    path = tmp_dir / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    prefix = str(tmp_dir / f"{name}_text_document")
    prepare([str(path)], "byte", prefix, workers=1)
    return prefix


def random_texts(seed: int, count: int, lengths, alphabet: str):
    rng = random.Random(seed)
    return [f"{seed}:{i}:" + "".join(rng.choice(alphabet) for _ in range(rng.randint(*lengths))) for i in range(count)]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """{name: prefix}: code/prose/web short documents, long = 6 documents >= 1500 bytes + 10 short ones."""
    d = tmp_path_factory.mktemp("corpus")
    return {
        "code": write_source(d, "code", random_texts(1, 40, (20, 200), "abcdef(){}:=\n ")),
        "prose": write_source(d, "prose", random_texts(2, 30, (20, 300), "ghijklmn .,\n")),
        "long": write_source(d, "long", random_texts(3, 6, (1500, 3000), "opqrstu \n") + random_texts(4, 10, (10, 80), "vw")),
        "web": write_source(d, "web", random_texts(5, 50, (20, 200), "xyz0123456789 ")),
    }


@pytest.fixture
def source_writer():
    """write_source, for tests that build their own small source."""
    return write_source
