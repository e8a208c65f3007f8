"""python -m pytest -q tests/data/test_prepare_prompts.py

`megamid data prepare --prompt-key`: JSONL prompt/answer pairs become one document each (prompt then answer,
tokenized part by part) with a PREFIX.lossmask sidecar that scores the answer and its EOD only; the mixture
reads it as a `loss_mask: true` source; the worker count does not change a byte; bad input is refused by
name and never replaces an existing dataset."""

import filecmp
import json

import numpy as np
import pytest

from megamid.cli import main
from megamid.config.data import DataConfig
from megamid.data import DataError
from megamid.data.mixture_dataset import MixtureDataset
from megamid.data.prepare import prepare

PAIRS = [("Q: 2+2?\nA:", " 4"), ("Q: capital of France?\nA:", " Paris"), ("Q: 2+2?\nA:", " 4"),  # a duplicate pair
         ("Q: 3+3?\nA:", " 4"), ("", " no prompt"), ("Q: empty?\nA:", "  ")]                  # same answer, other prompt


def write_pairs(path, pairs, prompt="prompt", answer="answer"):
    path.write_text("".join(json.dumps({prompt: p, answer: a}) + "\n" for p, a in pairs))
    return str(path)


def read(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    return [np.array(ds[i]).tolist() for i in range(len(ds))]


def test_prompts_are_masked_and_answers_scored(tmp_path):
    src = write_pairs(tmp_path / "qa.jsonl", PAIRS)
    prefix = str(tmp_path / "qa")
    stats = prepare([src], "byte", prefix, text_key="answer", prompt_key="prompt")
    docs, masks = read(prefix), read(prefix + ".lossmask")
    kept = [PAIRS[i] for i in (0, 1, 3, 4)]  # the duplicate pair and the blank answer are dropped
    assert stats["total"]["dropped"] == {"duplicate": 1, "empty": 1}
    for (p, a), doc, mask in zip(kept, docs, masks, strict=True):
        assert doc == list(p.encode()) + list(a.encode()) + [257]
        assert mask == [0] * len(p.encode()) + [1] * (len(a.encode()) + 1)  # the answer and its EOD
    assert stats["total"]["scored_tokens"] == sum(map(sum, masks)) == sum(len(a.encode()) + 1 for _, a in kept)
    with open(prefix + ".stats.json") as f:
        assert json.load(f)["total"]["scored_tokens"] == stats["total"]["scored_tokens"]


def test_the_mixture_scores_only_the_answers(tmp_path):
    pairs = [(f"Question {i}: what is {i} times 3?\nAnswer:", f" {3 * i}.") for i in range(40)]
    prefix = str(tmp_path / "qa")
    prepare([write_pairs(tmp_path / "qa.jsonl", pairs)], "byte", prefix, text_key="answer", prompt_key="prompt")
    cfg = DataConfig.from_dict({"sources": [{"name": "qa", "prefix": prefix, "loss_mask": True}], "seed": 3})
    batch = MixtureDataset(cfg, seq_len=32, num_samples=16, eod=257, pad=256, vocab_size=258).get_batch(0, 16)
    scored = batch["labels"][batch["loss_mask"].bool()].tolist()
    assert scored and set(scored) <= set(b" 0123456789.") | {257}  # answers' digits, spaces, full stops, EOD
    unscored = batch["labels"][~batch["loss_mask"].bool()].tolist()
    assert set(b"Qestion") <= set(unscored)  # the prompts are read, not scored


def test_worker_count_does_not_change_a_byte(tmp_path):
    pairs = [(f"prompt {i} " * (i % 7 + 1), f" answer {i}" * (i % 5 + 1)) for i in range(700)]
    src = write_pairs(tmp_path / "qa.jsonl", pairs)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    prepare([src], "byte", one, text_key="answer", prompt_key="prompt", workers=1)
    prepare([src], "byte", two, text_key="answer", prompt_key="prompt", workers=2)
    for ext in (".bin", ".idx", ".lossmask.bin", ".lossmask.idx"):
        assert filecmp.cmp(one + ext, two + ext, shallow=False), ext


def test_bad_inputs_are_named_and_leave_an_existing_dataset(tmp_path, capsys):
    good = write_pairs(tmp_path / "qa.jsonl", PAIRS[:2])
    prefix = str(tmp_path / "qa")
    assert main(["data", "prepare", "--input", good, "--tokenizer", "byte", "--output", prefix, "--text-key", "answer",
                 "--prompt-key", "prompt"]) == 0
    out = capsys.readouterr().out
    assert f"2 documents, 44 tokens, 10 scored (mask {prefix}.lossmask)" in out  # (10 + 2 + 1) + (24 + 6 + 1)
    before = {ext: open(prefix + ext, "rb").read() for ext in (".bin", ".idx", ".lossmask.bin", ".lossmask.idx")}
    text = tmp_path / "notes.txt"
    text.write_text("plain text\n")
    with pytest.raises(DataError, match=r"notes.txt' is invalid with prompt_key='prompt': a prompt/answer split needs "
                                        r"JSONL inputs"):
        prepare([good, str(text)], "byte", prefix, text_key="answer", prompt_key="prompt")
    missing = write_pairs(tmp_path / "bad.jsonl", PAIRS[:2], prompt="question")
    assert main(["data", "prepare", "--input", good, missing, "--tokenizer", "byte", "--output", prefix,
                 "--text-key", "answer", "--prompt-key", "prompt"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl' line 1: no string field 'prompt'; fields present: ['answer', 'question']" in err
    assert "Traceback" not in err
    for ext, data in before.items():  # the failed runs replaced nothing and left no partial files
        assert open(prefix + ext, "rb").read() == data, ext
    assert not list(tmp_path.glob("*.partial"))
