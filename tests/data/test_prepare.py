"""python -m pytest -q tests/data/test_prepare.py

megamid data prepare / train-tokenizer: formats, filter, dedup, EOD, stats, worker-count invariance."""

import gzip
import json

import pytest

from megamid.cli import main
from megamid.data import DataError
from megamid.data.prepare import prepare


@pytest.fixture
def inputs(tmp_path):
    rows = [{"text": "hello world", "score": 0.9}, {"text": "low quality", "score": 0.1},
            {"text": "hello world", "score": 0.8}, {"text": "   ", "score": 1.0}, {"text": "é unicode", "score": 0.7}]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    gz = tmp_path / "b.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write("".join(json.dumps({"text": f"doc {i} " * (i + 1), "score": 1.0}) + "\n" for i in range(40)))
    txt = tmp_path / "c.txt"
    txt.write_text("a whole file\nis one document\n")
    return [str(jsonl), str(gz), str(txt)]


def read(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    return [ds.get(i).tolist() for i in range(len(ds))]


def test_formats_filter_dedup_eod_and_stats(inputs, tmp_path):
    prefix = str(tmp_path / "out")
    stats = prepare(inputs, "byte", prefix, quality_key="score", min_quality=0.5)
    docs = read(prefix)
    assert docs[0] == list(b"hello world") + [257]  # EOD appended
    assert docs[1] == list("é unicode".encode()) + [257]
    assert docs[-1] == list(b"a whole file\nis one document\n") + [257]
    a, b, c = (stats["inputs"][p] for p in inputs)
    assert a["documents"] == 2 and a["dropped"] == {"quality": 1, "duplicate": 1, "empty": 1}
    assert b["documents"] == 40 and c["documents"] == 1
    total = stats["total"]
    assert total["tokens"] == sum(map(len, docs)) and total["max_token_id"] == 257
    assert sum(total["length_histogram"].values()) == len(docs) == 43
    with open(prefix + ".stats.json") as f:
        assert json.load(f)["tokenizer"] == {"spec": "byte", "vocab_size": 258, "eod": 257, "pad": 256}


def test_workers_give_identical_output(inputs, tmp_path):
    prepare(inputs, "byte", str(tmp_path / "one"), workers=1)
    prepare(inputs, "byte", str(tmp_path / "two"), workers=2)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"one{ext}").read_bytes() == (tmp_path / f"two{ext}").read_bytes()


def test_hf_tokenizer_json(inputs, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "<|endoftext|>": 1, "hello": 2, "world": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = str(tmp_path / "tokenizer.json")
    tok.save(path)
    prepare(inputs[:1], path, str(tmp_path / "hf"))
    assert read(str(tmp_path / "hf"))[0] == [2, 3, 1]


def test_train_sentencepiece_then_prepare_via_cli(inputs, tmp_path, capsys):
    corpus = tmp_path / "train.txt"
    corpus.write_text("\n".join(f"the quick brown fox {i} jumps over the lazy dog" for i in range(300)))
    model = str(tmp_path / "sp" / "tok")
    assert main(["data", "train-tokenizer", "--input", str(corpus), "--output", model, "--vocab-size", "300"]) == 0
    out = str(tmp_path / "sp_out")
    assert main(["data", "prepare", "--input", *inputs, "--tokenizer", model + ".model", "--output", out,
                 "--workers", "1"]) == 0
    docs = read(out)
    assert all(d[-1] == 3 for d in docs) and max(max(d) for d in docs) < 300  # eos id 3 is EOD
    assert "documents" in capsys.readouterr().out


def test_bad_inputs(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(DataError, match=r"input .*bad\.jsonl' line 2: not valid JSON"):
        prepare([str(bad)], "byte", str(tmp_path / "x"))
    assert main(["data", "prepare", "--input", str(tmp_path / "missing.txt"), "--tokenizer", "byte",
                 "--output", str(tmp_path / "y")]) == 2
    assert "missing.txt' not found" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="valid: 'byte'"):
        prepare([str(bad)], str(tmp_path / "nope.model"), str(tmp_path / "z"))
