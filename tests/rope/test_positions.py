"""python -m pytest -q tests/rope/test_positions.py

Positions of context-parallel shards (Megatron's dual-chunk layout) and of packed documents.
"""

import pytest
import torch

from helpers.fake_group import FakeGroup
from megamid.config import ConfigError
from megamid.kernels.doc_positions import doc_positions_reference
from megamid.rope import cp_shard_positions, packed_cp_shard_positions, packed_positions


def test_cp_shards_by_hand():
    # 16 tokens, cp=2: chunks of 4; rank 0 holds chunks 0 and 3, rank 1 chunks 1 and 2
    assert cp_shard_positions(16, 2, 0).tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert cp_shard_positions(16, 2, 1).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    assert cp_shard_positions(8, 1, 0).tolist() == list(range(8))


@pytest.mark.parametrize("cp_size", [1, 2, 3, 4, 8])
def test_cp_shards_partition_the_sequence(cp_size):
    seq_len = 2 * cp_size * 5
    shards = [cp_shard_positions(seq_len, cp_size, r) for r in range(cp_size)]
    assert all(s.numel() == seq_len // cp_size for s in shards)
    assert sorted(torch.cat(shards).tolist()) == list(range(seq_len))
    # load balance: every rank gets the same causal work (sum of positions + 1)
    assert len({int((s + 1).sum()) for s in shards}) == 1


@pytest.mark.parametrize("cp_size", [2, 4])
def test_cp_shards_match_megatron_slicing(cp_size, monkeypatch):
    from megatron.core.models.common.embeddings import rope_utils

    # megatron's function pins memory and copies to CUDA; let it run on this CPU machine
    real_tensor = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, pin_memory=False, **k: real_tensor(*a, **k))
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    seq_len = 2 * cp_size * 3
    table = torch.arange(seq_len)[:, None, None, None].expand(seq_len, 1, 1, 4)
    for rank in range(cp_size):
        group = FakeGroup(cp_size, rank)
        got = rope_utils.get_pos_emb_on_this_cp_rank(table, 0, group)[:, 0, 0, 0]
        assert got.tolist() == cp_shard_positions(seq_len, cp_size, rank).tolist()


def test_cp_shard_errors():
    with pytest.raises(ConfigError, match="seq_len=10 .*divisible by 2 \\* cp_size = 4"):
        cp_shard_positions(10, 2, 0)
    with pytest.raises(ConfigError, match="cp_rank=2"):
        cp_shard_positions(16, 2, 2)


def test_packed_positions_restart_at_documents():
    cu = torch.tensor([0, 3, 3, 7, 8], dtype=torch.int32)  # includes an empty document
    assert packed_positions(cu).tolist() == [0, 1, 2, 0, 1, 2, 3, 0]
    assert packed_positions(torch.tensor([0])).tolist() == []


@pytest.mark.parametrize("impl", ["reference", "cpp"])
def test_eod_positions_restart_after_every_eod_and_row(impl):
    # the data pipeline's doc_positions (EOD-separated rows): its C++ helper and its reference, by hand
    from megamid.kernels.doc_positions import doc_positions

    tokens = torch.tensor([[5, 6, 0, 7, 8, 9, 0, 4], [1, 0, 2, 3, 4, 5, 6, 0]])
    if impl == "reference":
        positions, cu = (torch.from_numpy(a) for a in doc_positions_reference(tokens.numpy(), eod=0))
    else:
        positions, cu = doc_positions(tokens, eod=0)
    assert positions.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 0, 1, 2, 3, 4, 5]]
    assert cu.tolist() == [0, 3, 7, 8, 10, 16]


def test_packed_positions_errors():
    with pytest.raises(ConfigError, match="cu_seqlens"):
        packed_positions(torch.tensor([1, 3]))
    with pytest.raises(ConfigError, match="cu_seqlens"):
        packed_positions(torch.tensor([0, 5, 3]))


def test_packed_cp_shards():
    cu = torch.tensor([0, 8, 12])  # documents of 8 and 4 tokens, cp=2 -> chunks of 2 and 1
    assert packed_cp_shard_positions(cu, 2, 0).tolist() == [0, 1, 6, 7, 0, 3]
    assert packed_cp_shard_positions(cu, 2, 1).tolist() == [2, 3, 4, 5, 1, 2]
