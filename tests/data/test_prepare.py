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
    with pytest.raises(DataError, match="not found; valid: 'byte'"):
        prepare([str(bad)], str(tmp_path / "nope.model"), str(tmp_path / "z"))


def test_non_utf8_input_is_refused_naming_the_file_and_byte_offset(tmp_path):
    import gzip

    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"input .*latin\.jsonl' is not UTF-8: byte 0xe9 at byte offset 28 "):
        prepare([str(latin)], "byte", str(tmp_path / "x"))
    gz = tmp_path / "latin.jsonl.gz"
    gz.write_bytes(gzip.compress(latin.read_bytes()))
    with pytest.raises(DataError, match=r"byte 0xe9 at byte offset 28 of the decompressed stream"):
        prepare([str(gz)], "byte", str(tmp_path / "x"))
    raw = tmp_path / "random.txt"
    raw.write_bytes(b"fine text then \xff\xfe")
    with pytest.raises(DataError, match=r"random\.txt' is not UTF-8: byte 0xff at byte offset 15"):
        prepare([str(raw)], "byte", str(tmp_path / "x"))
    assert not list(tmp_path.glob("x*"))      # nothing half-written is left behind


def test_utf8_policy_keeps_bom_free_universal_newline_text(tmp_path):
    from megamid.data.documents import iter_documents

    path = tmp_path / "doc.txt"
    path.write_bytes("\ufeffa\r\nb\rc\n".encode("utf-8"))
    assert list(iter_documents(str(path))) == [("a\nb\nc\n", None)]


def test_a_directory_input_is_reported_as_a_directory(tmp_path):
    with pytest.raises(DataError, match=r"input .* is a directory; valid inputs: existing text"):
        prepare([str(tmp_path)], "byte", str(tmp_path / "x"))


@pytest.mark.parametrize("name, content, match", [
    ("bad.model", b"\x00\x01 not a model proto" * 50, r"bad\.model' cannot be loaded: expected a sentencepiece \.model"),
    ("tokenizer.json", b"\xff\x00random" * 50, r"tokenizer\.json' cannot be loaded: expected a Hugging Face tokenizer\.json"),
    ("t.json", b'{"version": "1.0"}', r"t\.json' cannot be loaded: expected a Hugging Face tokenizer\.json"),
])
def test_a_tokenizer_that_does_not_load_is_named(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    doc = tmp_path / "doc.txt"
    doc.write_text("hello")
    with pytest.raises(DataError, match=match):
        prepare([str(doc)], str(tmp_path / name), str(tmp_path / "x"))


def test_a_failed_prepare_leaves_the_existing_pair_untouched(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("hello world")
    prepare([str(good)], "byte", str(tmp_path / "x"))
    before = {p.name: p.read_bytes() for p in tmp_path.glob("x*")}
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff")
    with pytest.raises(DataError):
        prepare([str(good), str(bad)], "byte", str(tmp_path / "x"))
    assert {p.name: p.read_bytes() for p in tmp_path.glob("x*")} == before


def test_prepare_and_tokenizer_files_import_no_cycle():
    """data.prepare -> data.tokenizer_files -> data.documents; no path back (function-local imports count)."""
    import ast
    import os

    import megamid.data as pkg

    root = os.path.dirname(pkg.__file__)

    def imports(name):
        tree = ast.parse(open(os.path.join(root, name + ".py")).read())
        return {n.module.split(".")[2] for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("megamid.data.")}

    assert "prepare" not in imports("tokenizer_files") and "prepare" not in imports("tokenizer")
    assert "prepare" not in imports("documents") and "tokenizer_files" not in imports("documents")
