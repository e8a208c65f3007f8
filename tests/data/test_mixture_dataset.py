"""python -m pytest -q tests/data/test_mixture_dataset.py

MixtureDataset: streams never repeat or skip across weight changes, resume is sample-exact,
packed rows expose document boundaries, long-document shares and upsampling hold."""

import numpy as np
import pytest
import torch

from megamid.config.data import DataConfig
from megamid.data.mixture_dataset import MixtureDataset
from megamid.data.token_stream import TokenStream

BYTE = dict(eod=257, pad=256, vocab_size=258)


def config(corpus, weights, ends=None, replay=0.0, pack=False, **extra):
    sources = [{"name": n, "prefix": corpus[n], "weight": w} for n, w in weights.items()]
    for s in sources:
        if ends and s["name"] in ends:
            s["weight_end"] = ends[s["name"]]
    d = {"sources": sources, "pack": pack, "seed": 3, **extra}
    if replay:
        d["replay"] = {"share": replay, "sources": [{"name": "web", "prefix": corpus["web"]}]}
    return DataConfig.from_dict(d)


def per_source_tokens(ds, count):
    """{name: the tokens of its samples among the first `count`, each sample's seq_len tokens in order}."""
    out = {n: [] for n in ds.names}
    batch = ds.get_batch(0, count)
    for row, s in zip(batch["tokens"].numpy(), batch["source"].numpy()):
        out[ds.names[s]].append(row)
    return {n: np.concatenate(v) if v else np.zeros(0, np.int64) for n, v in out.items()}


def test_no_repeat_no_skip_across_weight_and_seq_len_changes(corpus):
    # phase 1: code-heavy, shares moving within the phase; phase 2: other weights, longer rows
    p1 = MixtureDataset(config(corpus, {"code": 0.7, "prose": 0.3}, ends={"code": 0.2}, replay=0.25), 32, 300, **BYTE)
    done1 = 211  # the phase stops part-way; the next phase starts from the saved offsets
    consumed = p1.consumed_per_source(done1)
    p2 = MixtureDataset(config(corpus, {"code": 0.1, "prose": 0.9}, replay=0.1), 48, 200, **BYTE,
                        start_tokens=consumed)
    read1, read2 = per_source_tokens(p1, done1), per_source_tokens(p2, 200)
    final = p2.consumed_per_source(200)
    for name in ("code", "prose", "web"):
        stream = TokenStream(name, corpus[name], 3, 258)
        both = np.concatenate([read1[name], read2[name]])
        assert consumed[name] == len(read1[name]) and final[name] == len(both)
        np.testing.assert_array_equal(both, stream.read(0, len(both)))  # contiguous from 0: no skip, no repeat


def test_stream_epoch_is_a_permutation_of_documents(corpus):
    stream = TokenStream("code", corpus["code"], 3, 258)
    epoch = stream.read(0, stream.epoch_tokens)
    docs = np.split(epoch, np.flatnonzero(epoch == 257)[:-1] + 1)
    originals = [stream.dataset.get(i).astype(np.int64) for i in range(len(stream.lengths))]
    assert sorted(map(bytes, map(np.ndarray.tobytes, docs))) == sorted(map(bytes, map(np.ndarray.tobytes, originals)))
    assert not np.array_equal(epoch, stream.read(stream.epoch_tokens, stream.epoch_tokens))  # epoch 1 reshuffled


def test_resume_is_sample_exact(corpus):
    cfg = config(corpus, {"code": 0.5, "prose": 0.5}, ends={"prose": 0.1}, replay=0.2, pack=True)
    a = MixtureDataset(cfg, 40, 120, **BYTE, start_tokens={"code": 1000, "other": 5})
    b = MixtureDataset(DataConfig.from_dict(cfg.to_dict()), 40, 120, **BYTE, start_tokens={"code": 1000, "other": 5})
    batch_a, batch_b = a.get_batch(57, 16), b.get_batch(57, 16)
    for key in batch_a:
        assert torch.equal(batch_a[key], batch_b[key]), key
    for key, value in a[67].items():
        assert torch.equal(value, batch_a[key][67 - 57]), key
    assert a.consumed_per_source(120)["other"] == 5  # streams not in the phase pass through
    assert a.consumed_per_source(0)["code"] == 1000


def test_labels_shift_and_packing_boundaries(corpus):
    ds = MixtureDataset(config(corpus, {"code": 1.0}, pack=True), 64, 50, **BYTE)
    batch = ds.get_batch(0, 50)
    tokens, labels, pos, mask = (batch[k].numpy() for k in ("tokens", "labels", "position_ids", "loss_mask"))
    np.testing.assert_array_equal(tokens[:, 1:], labels[:, :-1])
    assert (tokens == 257).any()
    cu = batch["cu_seqlens"].numpy()
    for r in range(len(tokens)):
        expect, p = [], 0
        for t in tokens[r]:
            expect.append(p)
            p = 0 if t == 257 else p + 1
        np.testing.assert_array_equal(pos[r], expect)
        assert (mask[r][tokens[r] == 257] == 0).all() and (mask[r][tokens[r] != 257] == 1).all()
    starts = np.flatnonzero(pos.reshape(-1) == 0)
    np.testing.assert_array_equal(cu, np.append(starts, tokens.size))
    plain = MixtureDataset(config(corpus, {"code": 1.0}), 64, 5, **BYTE)[3]
    assert plain["position_ids"].tolist() == list(range(64)) and plain["loss_mask"].min() == 1
    assert set(plain) == {"tokens", "labels", "loss_mask", "position_ids", "source"}


def test_long_share_by_tokens_and_upsampling(corpus):
    cfg = config(corpus, {"code": 1.0, "prose": 1.0, "long": 1.0}, replay=0.2,
                 long_short={"long_share": 0.6, "long_sources": ["long"], "long_threshold_tokens": 1000})
    ds = MixtureDataset(cfg, 128, 1000, **BYTE)
    shares = ds.realised_shares()
    assert abs(shares["long"] - 0.8 * 0.6) <= 1.5 / 1000 and abs(shares["web"] - 0.2) <= 1.5 / 1000
    # upsample_long 2: each document >= 1000 tokens appears twice per epoch, short ones once
    plain = TokenStream("long", corpus["long"], 3, 258)
    up = TokenStream("long", corpus["long"], 3, 258, upsample_long=2.0, long_threshold_tokens=1000)
    is_long = plain.lengths >= 1000
    assert is_long.sum() == 6
    assert up.epoch_tokens == plain.epoch_tokens + plain.lengths[is_long].sum()
    order, _ = up.epoch(0)
    np.testing.assert_array_equal(np.bincount(order, minlength=len(is_long)), np.where(is_long, 2, 1))
    frac = TokenStream("long", corpus["long"], 3, 258, upsample_long=1.5, long_threshold_tokens=1000)
    assert set(frac.copies[is_long].tolist()) <= {1, 2} and (frac.copies[~is_long] == 1).all()


def test_shares_move_linearly_within_a_phase(corpus):
    ds = MixtureDataset(config(corpus, {"code": 0.9, "prose": 0.1}, ends={"code": 0.1, "prose": 0.9}), 16, 2000, **BYTE)
    source = ds.source_index
    assert abs((source[:200] == 0).mean() - 0.86) < 0.02 and abs((source[-200:] == 1).mean() - 0.86) < 0.02


def test_default_collate_and_index_errors(corpus):
    ds = MixtureDataset(config(corpus, {"code": 1.0}, pack=True), 16, 8, **BYTE)
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert batch["tokens"].shape == (4, 16) and batch["tokens"].dtype == torch.int64
    with pytest.raises(IndexError):
        ds[8]
