"""python -m pytest -q tests/data/test_loss_mask.py

Per-source loss masks (`loss_mask: true`, the PREFIX.lossmask sidecar): only the marked labels are
scored, the mask follows its tokens through the stream's permutation and across sample windows,
a mismatched or missing mask is refused by name, and `megamid data synthetic` marks exactly the answers."""

import numpy as np
import pytest

from megamid.config.base import ConfigError
from megamid.config.data import DataConfig
from megamid.data import DataError
from megamid.data.mixture_dataset import MixtureDataset
from megamid.data.synthetic import answer_mask, heldout_documents, write_indexed, write_synthetic
from megamid.data.tokenizer_files import load_tokenizer

BYTE = dict(eod=257, pad=256, vocab_size=258)


def masked_source(tmp_path, docs, masks, name="task"):
    prefix = str(tmp_path / name)
    write_indexed(prefix, docs, 258)
    write_indexed(prefix + ".lossmask", masks, 2, dtype=np.uint8)
    return prefix


def test_only_marked_labels_are_scored_through_the_permutation(tmp_path):
    rng = np.random.default_rng(0)
    # every document: tokens 1..n, the mask marks the even token ids; so the rule is checkable per label
    docs = [list(range(1, int(n) + 1)) + [257] for n in rng.integers(5, 40, size=60)]
    masks = [np.array([t % 2 == 0 and t != 257 for t in d], dtype=np.uint8) for d in docs]
    prefix = masked_source(tmp_path, docs, masks)
    plain = str(tmp_path / "plain")
    write_indexed(plain, docs, 258)
    cfg = DataConfig.from_dict({"sources": [{"name": "task", "prefix": prefix, "weight": 1.0, "loss_mask": True},
                                            {"name": "plain", "prefix": plain, "weight": 1.0}], "seed": 5})
    ds = MixtureDataset(cfg, seq_len=16, num_samples=64, **BYTE)
    b = ds.get_batch(0, 64)
    task = b["source"] == ds.names.index("task")
    assert task.any() and (~task).any()
    labels, mask = b["labels"][task], b["loss_mask"][task]
    expected = ((labels % 2 == 0) & (labels != 257)).float()
    assert mask.tolist() == expected.tolist()
    assert bool((b["loss_mask"][~task] == 1).all())  # the other source scores every token
    assert DataConfig.from_dict(cfg.to_dict()).sources[0].loss_mask is True  # round trip


def test_a_mask_that_does_not_match_its_tokens_is_refused(tmp_path):
    docs = [[1, 2, 3, 257], [4, 5, 257]]
    prefix = masked_source(tmp_path, docs, [np.ones(4, np.uint8), np.ones(2, np.uint8)])
    cfg = DataConfig.from_dict({"sources": [{"name": "task", "prefix": prefix, "loss_mask": True}]})
    with pytest.raises(DataError, match=r"loss mask .*does not match.*first difference at document 1"):
        MixtureDataset(cfg, seq_len=4, num_samples=2, **BYTE)
    bad = masked_source(tmp_path, docs, [np.full(4, 2, np.uint8), np.ones(3, np.uint8)], name="bad")
    cfg = DataConfig.from_dict({"sources": [{"name": "task", "prefix": bad, "loss_mask": True}]})
    with pytest.raises(DataError, match=r"uint8 0/1 values, found uint8 up to 2"):
        MixtureDataset(cfg, seq_len=4, num_samples=2, **BYTE)
    with pytest.raises(ConfigError, match=r"loss_mask=.yes. is invalid"):
        DataConfig.from_dict({"sources": [{"name": "task", "prefix": prefix, "loss_mask": "yes"}]})


def test_plan_names_a_missing_mask(tmp_path):
    from megamid.config import RecipeConfig, build
    from megamid.recipe.plan import plan_recipe

    prefix = str(tmp_path / "plain")
    write_indexed(prefix, [[1, 2, 3, 257]] * 8, 258)
    recipe = {"model": {"num_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "vocab_size": 258,
                        "max_position_embeddings": 64},
              "training": {"global_batch_size": 2, "micro_batch_size": 2, "seq_len": 16, "train_steps": 2},
              "checkpoint": {"dir": str(tmp_path / "ckpt")},
              "data": {"sources": [{"name": "task", "prefix": prefix, "loss_mask": True}]}}
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.loss_mask=true is invalid: its mask .*plain\.lossmask\.bin"):
        plan_recipe(build(RecipeConfig, recipe), world_size=1)


def test_synthetic_masks_mark_exactly_the_answers(tmp_path):
    tok = load_tokenizer("byte")
    manifest = write_synthetic(str(tmp_path), tok, "byte", ("passkey", "mqar", "copy"), train_docs=6,
                               heldout_docs=1, min_length=160, max_length=160, heldout_lengths=(160,), code_docs=0)
    from megamid.data.token_stream import TokenStream

    for task in ("passkey", "mqar", "copy"):
        info = manifest["sets"][f"{task}_train"]
        stream = TokenStream(task, info["prefix"], 0, 258, mask_prefix=info["loss_mask"]["prefix"])
        tokens, mask = stream.read(0, stream.epoch_tokens), stream.read_mask(0, stream.epoch_tokens)
        assert 0 < mask.sum() == info["loss_mask"]["scored_tokens"] < len(mask) / 3
        text = bytes(int(t) for t, m in zip(tokens, mask) if m and t < 256).decode()
        if task == "passkey":  # " 12345." per document
            assert len(text) == 6 * 7 and all(c in "0123456789 ." for c in text)
        if task == "mqar":  # one digit per query
            assert set(text) <= set("0123456789")
    assert answer_mask(6, [(1, 3, 0.0), (4, 5, 0.5)]).tolist() == [0, 1, 1, 0, 1, 0]
    # held-out sets are not masked: evaluation reads the spans from heldout_documents
    assert "loss_mask" not in manifest["sets"]["passkey_heldout_160"]
    assert heldout_documents("passkey", tok, 160, 1)[0][1]


@pytest.mark.parametrize("task", ["passkey", "mqar", "copy"])
def test_placed_documents_are_whole_windows_with_answers_anywhere(task):
    """placed: every document exactly max_length tokens, the task at a random offset with spaces around it;
    the spans still hold the answers, and the answers' positions vary (no fixed-position shortcut)."""
    from megamid.data.synthetic import task_documents

    tok = load_tokenizer("byte")
    docs = list(task_documents(task, tok, 40, 88, 127, seed=3, placed=True))
    ends = set()
    for ids, spans in docs:
        assert len(ids) == 127
        text = tok.decode(ids)
        assert text.strip()[:4] in ("Reme", "Reca", "Copy")  # the task itself starts after the front spaces
        for lo, hi, _ in spans:
            answer = tok.decode(ids[lo:hi])
            if task == "passkey":
                assert answer.strip().rstrip(".").isdigit()
            elif task == "mqar":
                assert answer.isdigit() and len(answer) == 1
            ends.add(hi)
    assert len(ends) > 10
