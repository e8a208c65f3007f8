"""The thd layout for TE attention: padding rules under CP/SP, the per-document CP shards, PackedSeqParams."""

import pytest
import torch

pytest.importorskip("megatron.core")

from megamid.attention import packed_seq_params  # noqa: E402
from megamid.attention.thd import pad_multiple, padded_cu_seqlens, partition_indices, thd_batch  # noqa: E402
from megamid.config.base import ConfigError  # noqa: E402


def packed_batch():
    # two rows of 8: documents of 5 and 3 tokens, then 8
    cu = torch.tensor([0, 5, 8, 16], dtype=torch.int32)
    tokens = torch.arange(1, 17).reshape(2, 8)
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2], list(range(8))])
    return {"tokens": tokens, "labels": tokens + 100, "loss_mask": torch.ones(2, 8), "position_ids": positions,
            "cu_seqlens": cu, "source": torch.tensor([0, 1])}


def test_pad_multiple():
    assert pad_multiple(1) == 1 and pad_multiple(2) == 4 and pad_multiple(4, 2, True) == 16
    assert pad_multiple(1, 4, True) == 4 and pad_multiple(2, 4, False) == 4
    cu = padded_cu_seqlens(torch.tensor([0, 5, 8, 16]), 4)
    assert cu.tolist() == [0, 8, 12, 20] and cu.dtype == torch.int32


def test_partition_indices_by_hand():
    cu = torch.tensor([0, 8, 12], dtype=torch.int32)     # documents of 8 and 4 (padded), CP=2: chunks of 2 and 1
    assert partition_indices(cu, 2, 0).tolist() == [0, 1, 6, 7, 8, 11]
    assert partition_indices(cu, 2, 1).tolist() == [2, 3, 4, 5, 9, 10]


def test_thd_without_cp_is_the_rows_back_to_back():
    batch = packed_batch()
    out, params = thd_batch(batch)
    assert out["tokens"].tolist() == [list(range(1, 17))]
    assert params.qkv_format == "thd" and params.cu_seqlens_q.tolist() == [0, 5, 8, 16]
    assert params.cu_seqlens_q_padded.tolist() == [0, 5, 8, 16] and params.max_seqlen_q == 8
    assert out["source"].tolist() == [0, 1] and "cu_seqlens" not in out
    assert packed_seq_params(out) is params


def test_thd_with_cp_pads_each_document_and_shards_it():
    batch = packed_batch()
    shards = [thd_batch(batch, cp_size=2, cp_rank=r) for r in range(2)]
    params = shards[0][1]
    assert params.cu_seqlens_q.tolist() == [0, 5, 8, 16]            # the real lengths
    assert params.cu_seqlens_kv_padded.tolist() == [0, 8, 12, 20]   # 5 -> 8, 3 -> 4, 8 -> 8
    assert params.max_seqlen_kv == 8 and params.cu_seqlens_q.dtype == torch.int32
    # reassemble the padded stream from both ranks
    stream = {k: torch.zeros(20, dtype=v.dtype) for k, v in shards[0][0].items() if k in ("tokens", "loss_mask",
                                                                                             "labels", "position_ids")}
    for r, (out, _) in enumerate(shards):
        index = partition_indices(params.cu_seqlens_q_padded, 2, r)
        assert out["tokens"].shape == (1, 10)
        for k in stream:
            stream[k][index] = out[k][0]
    assert stream["tokens"].tolist() == [1, 2, 3, 4, 5, 0, 0, 0, 6, 7, 8, 0] + list(range(9, 17))
    assert stream["loss_mask"].tolist() == [1] * 5 + [0] * 3 + [1] * 3 + [0] + [1] * 8
    assert stream["labels"][:5].tolist() == [101, 102, 103, 104, 105] and stream["labels"][5:8].tolist() == [0] * 3
    assert stream["position_ids"].tolist() == list(range(8)) + list(range(4)) + list(range(8))


def test_thd_sequence_parallel_shards_split_over_tp():
    out, params = thd_batch(packed_batch(), cp_size=2, cp_rank=1, tp_size=2, sequence_parallel=True)
    assert params.cu_seqlens_q_padded.tolist() == [0, 8, 16, 24] and out["tokens"].shape[1] % 2 == 0


def test_thd_uses_the_given_partition_kernel():
    calls = []

    def kernel(cu, total, cp, rank):
        calls.append((cu.tolist(), total, cp, rank))
        return partition_indices(cu, cp, rank)

    thd_batch(packed_batch(), cp_size=2, cp_rank=1, partition=kernel)
    assert calls == [([0, 8, 12, 20], 20, 2, 1)]


def test_thd_rejects_rows_without_boundaries():
    batch = packed_batch()
    with pytest.raises(ConfigError, match=r"batch\['cu_seqlens'\]"):
        thd_batch({k: v for k, v in batch.items() if k != "cu_seqlens"})
    batch["cu_seqlens"] = torch.tensor([0, 5, 9], dtype=torch.int32)
    with pytest.raises(ConfigError, match="rising from 0 to batch x seq_len = 16"):
        thd_batch(batch)


def test_packed_params_under_te_without_thd_names_the_fix():
    with pytest.raises(ConfigError, match="thd_batch in place of shard_batch"):
        packed_seq_params(packed_batch(), 1, "te")
