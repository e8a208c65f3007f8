"""FlexAttention block masks from block extremes: exact full blocks, partial blocks covering every allowed
pair, the same BlockMask structure as create_block_mask's dense evaluation, and one mask per micro-batch."""

import gc

import pytest
import torch

from megamid.attention import block_mask as bm
from megamid.attention.local import allowed, document_ids
from megamid.rope.positions import cp_shard_positions

flex = pytest.importorskip("torch.nn.attention.flex_attention")


def dense_blocks(mask: torch.Tensor, block: int):
    """(any allowed, all allowed) per block of a token mask [B, sq, sk]; padding counts as allowed for 'all'."""
    b, sq, sk = mask.shape
    qb, kb = -(-sq // block), -(-sk // block)
    some = torch.zeros(b, qb, kb, dtype=torch.bool)
    every = torch.zeros(b, qb, kb, dtype=torch.bool)
    for i in range(qb):
        for j in range(kb):
            tile = mask[:, i * block:(i + 1) * block, j * block:(j + 1) * block]
            some[:, i, j] = tile.flatten(1).any(-1)
            every[:, i, j] = tile.flatten(1).all(-1)
    return some, every


CASES = [
    # (S, cu_seqlens over 2 rows or None, window, cp, rank, src)
    (256, [0, 100, 256, 300, 512], None, 1, 0, 0),
    (256, [0, 100, 256, 300, 512], 48, 1, 0, 0),
    (256, None, 40, 1, 0, 0),
    (200, [0, 37, 200, 201, 400], None, 1, 0, 0),          # not a multiple of the block
    (512, [0, 130, 512, 700, 1024], None, 2, 0, 1),        # CP: rank 0's queries, rank 1's keys
    (512, [0, 130, 512, 700, 1024], 100, 2, 1, 1),
    (512, None, None, 4, 3, 0),
]


@pytest.mark.parametrize("seq_len,cu,window,cp,rank,src", CASES)
def test_structure_against_the_dense_mask(seq_len, cu, window, cp, rank, src):
    block = 32
    q_pos = cp_shard_positions(seq_len, cp, rank)
    k_pos = cp_shard_positions(seq_len, cp, src)
    doc = None if cu is None else document_ids(torch.tensor(cu, dtype=torch.int32), 2, seq_len)
    q_doc, k_doc = (None, None) if doc is None else (doc[:, q_pos], doc[:, k_pos])
    mask = allowed(q_pos, k_pos, q_doc, k_doc, window).expand(2, -1, -1)
    some, every = dense_blocks(mask, block)
    partial, full = bm.block_structure(q_pos, k_pos, q_doc, k_doc, window, block)
    partial, full = partial.expand_as(some), full.expand_as(some)
    assert torch.equal(full, every & some)                 # full blocks are exactly the all-allowed ones
    assert not (some & ~(partial | full)).any()            # every allowed pair lies in a kept block
    assert not (partial & full).any()


@pytest.mark.parametrize("seq_len,cu,window,cp,rank,src", CASES)
def test_block_mask_matches_create_block_mask(seq_len, cu, window, cp, rank, src):
    q_pos = cp_shard_positions(seq_len, cp, rank)
    k_pos = cp_shard_positions(seq_len, cp, src)
    doc = None if cu is None else document_ids(torch.tensor(cu, dtype=torch.int32), 2, seq_len)
    q_doc, k_doc = (None, None) if doc is None else (doc[:, q_pos], doc[:, k_pos])
    ours = bm.sparse_block_mask(q_pos, k_pos, q_doc, k_doc, 2, window, block=128)

    def mask_mod(b, h, qi, ki):
        seen = (k_pos[ki] <= q_pos[qi])
        if window is not None:
            seen = seen & (k_pos[ki] > q_pos[qi] - window)
        return seen if q_doc is None else seen & (q_doc[b, qi] == k_doc[b, ki])

    exact = flex.create_block_mask(mask_mod, B=2, H=None, Q_LEN=q_pos.numel(), KV_LEN=k_pos.numel(), device="cpu")
    assert ours.shape == exact.shape
    dense_ours, dense_exact = ours.to_dense(), exact.to_dense()
    assert not (dense_exact.bool() & ~dense_ours.bool()).any()
    assert torch.equal(ours.full_kv_num_blocks, exact.full_kv_num_blocks)
    # the mask function gives the same token mask (FlexAttention evaluates it inside partial blocks)
    b, h = torch.arange(2)[:, None, None], torch.zeros(1, dtype=torch.long)
    qi, ki = torch.arange(q_pos.numel())[None, :, None], torch.arange(k_pos.numel())[None, None, :]
    assert torch.equal(ours.mask_mod(b, h, qi, ki).expand(2, -1, -1),
                       allowed(q_pos, k_pos, q_doc, k_doc, window).expand(2, -1, -1))


def test_no_quadratic_tensor_at_128k():
    """Block extremes only: the largest tensor is (S / 128)^2 entries per row, not S^2."""
    seq_len = 131072
    pos = torch.arange(seq_len)
    cu = torch.tensor([0, 50000, 90000, seq_len], dtype=torch.int32)
    doc = document_ids(cu, 1, seq_len)
    partial, full = bm.block_structure(pos, pos, doc, doc)
    assert partial.shape == (1, 1024, 1024)
    assert full.sum() > 0 and partial.sum() > 0
    # the three documents' diagonal blocks hold every allowed block
    assert not (full & (torch.arange(1024)[None, :, None] < torch.arange(1024)[None, None, :])).any()


def test_one_mask_per_micro_batch():
    pos = torch.arange(256)
    doc = document_ids(torch.tensor([0, 100, 256], dtype=torch.int32), 1, 256)
    first = bm.cached_block_mask(pos, pos, doc, doc, 1, None, key=("local",), doc=doc)
    assert bm.cached_block_mask(pos, pos, doc, doc, 1, None, key=("local",), doc=doc) is first   # next layer
    assert bm.cached_block_mask(pos, pos, doc, doc, 1, 64, key=("local",), doc=doc) is not first  # window differs
    other = doc.clone()                                                                           # next micro-batch
    assert bm.cached_block_mask(pos, pos, other, other, 1, None, key=("local",), doc=other) is not first
    n = len(bm._BY_DOCS)
    del other
    gc.collect()
    assert len(bm._BY_DOCS) == n - 1                     # freed with its micro-batch
    plain = bm.cached_block_mask(pos, pos, None, None, 2, 32, key=("window",))
    assert bm.cached_block_mask(pos, pos, None, None, 2, 32, key=("window",)) is plain


def test_key_buckets_and_padding_change_nothing():
    from megamid.attention.local import _math_block

    assert [bm.key_bucket(n) for n in (1, 128, 129, 1000, 4096, 4097)] == [128, 128, 256, 1024, 4096, 8192]
    torch.manual_seed(0)
    b, hq, hk, sk, d = 2, 4, 2, 77, 16
    q = torch.randn(b, hq, 1, d, dtype=torch.float64)           # decoding: one query, the last position
    k, v = torch.randn(2, b, hk, sk, d, dtype=torch.float64)
    q_pos, k_pos = torch.tensor([sk - 1]), torch.arange(sk)
    doc = document_ids(torch.tensor([0, 30, sk, sk + 50, 2 * sk], dtype=torch.int32), b, sk)
    q_doc = doc[:, -1:]
    for window in (None, 20):
        ref = _math_block(q, k, v, allowed(q_pos, k_pos, q_doc, doc, window), 0.25)
        kp, vp, kpos, kdoc = bm.pad_keys(k, v, k_pos, doc, bm.key_bucket(sk))
        assert kp.shape[2] == 128 and kdoc.shape == (b, 128)
        out = _math_block(q, kp, vp, allowed(q_pos, kpos, q_doc, kdoc, window), 0.25)
        assert torch.allclose(out[0], ref[0]) and torch.allclose(out[1], ref[1])
        partial, full = bm.block_structure(q_pos, kpos, q_doc, kdoc, window, block=16)
        assert not (partial | full)[:, :, 5:].any()             # blocks of padding only are skipped
