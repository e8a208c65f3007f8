"""pytest tests/attention/test_core_attention.py

megamid's core attention on one process: SDPA vs a plain softmax with GQA, packed documents vs the
documents run separately (outputs and gradients), the masked block with its log-sum-exp, the batch
sharding of context parallelism and RoPE on a shard. GPU paths (flash / cuDNN SDPA, FlexAttention)
are `gpu`-marked and compared with the same references.
"""

from types import SimpleNamespace

import pytest
import torch

from megamid.attention.context_parallel import shard_batch
from megamid.attention.core_attention import MegamidCoreAttention
from megamid.attention.local import (allowed, block_attention, causal_sdpa, document_ids, reference_attention,
                                     varlen_sdpa)
from megamid.config.base import ConfigError

B, HQ, HK, D = 2, 4, 2, 8


class _Group:
    def __init__(self, size=1):
        self._size = size

    def size(self):
        return self._size


def _module(heads=HQ, groups=HK, dropout=0.0, window=None):
    from megatron.core.transformer.enums import AttnMaskType

    config = SimpleNamespace(num_attention_heads=heads, num_query_groups=groups, kv_channels=D,
                             attention_dropout=dropout, softmax_type="vanilla",
                             window_size=None if window is None else (window - 1, 0))
    return MegamidCoreAttention(config, 1, AttnMaskType.causal, "self",
                                pg_collection=SimpleNamespace(tp=_Group(), cp=None))


def _qkv(s, b=B, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, b, h, D, generator=g, dtype=dtype, requires_grad=True) for h in (HQ, HK, HK)]


def _grads(out, inputs, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, inputs, g)


def test_sdpa_matches_plain_softmax_with_gqa():
    s = 24
    q, k, v = (t.detach().permute(1, 2, 0, 3).requires_grad_() for t in _qkv(s))
    pos = torch.arange(s)
    got = causal_sdpa(q, k, v, D ** -0.5)
    want = reference_attention(q, k, v, allowed(pos, pos, None, None))
    torch.testing.assert_close(got, want)
    for a, b in zip(_grads(got, (q, k, v)), _grads(want, (q, k, v))):
        torch.testing.assert_close(a, b)


def test_module_output_layout_and_causality():
    s = 16
    q, k, v = _qkv(s)
    out = _module()(q, k, v, None)
    assert out.shape == (s, B, HQ * D)
    # changing the last token's key/value leaves every earlier output alone
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[-1] += 1.0
    v2[-1] -= 1.0
    out2 = _module()(q, k2, v2, None)
    torch.testing.assert_close(out2[:-1], out[:-1])
    assert not torch.allclose(out2[-1], out[-1])


def _packed_params(cu, b, s):
    from megamid.attention.packed import DocumentPackedSeqParams

    return DocumentPackedSeqParams(qkv_format="sbhd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=s,
                                   max_seqlen_kv=s, document_ids=document_ids(cu, b, s))


def test_packed_documents_match_separate_runs():
    """Two rows of 20 tokens holding documents of 7, 9, 4 | 20 tokens: the packed forward and backward
    equal each document run on its own."""
    s = 20
    cu = torch.tensor([0, 7, 16, 20, 40], dtype=torch.int32)
    q, k, v = _qkv(s)
    module = _module()
    packed = module(q, k, v, None, packed_seq_params=_packed_params(cu, B, s))
    packed_grads = _grads(packed, (q, k, v))
    separate = torch.zeros_like(packed)
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        row, lo = divmod(start, s)
        hi = lo + end - start
        piece = module(*(t[lo:hi, row:row + 1] for t in (q, k, v)), None)
        separate[lo:hi, row:row + 1] = piece
    torch.testing.assert_close(packed, separate)
    for a, b in zip(packed_grads, _grads(separate, (q, k, v))):
        torch.testing.assert_close(a, b)
    # and the masked-block path (the GPU / context-parallel logic, here in its CPU form) agrees
    qb, kb, vb = (t.detach().permute(1, 2, 0, 3) for t in (q, k, v))
    doc, pos = document_ids(cu, B, s), torch.arange(s)
    out, _ = block_attention(qb, kb, vb, pos, pos, doc, doc)
    torch.testing.assert_close(out.double(), packed.detach().reshape(s, B, HQ, D).permute(1, 2, 0, 3),
                               rtol=1e-5, atol=1e-6)


def test_block_attention_lse_and_empty_rows():
    s = 12
    q, k, v = (t.detach().permute(1, 2, 0, 3).requires_grad_() for t in _qkv(s))
    q_pos = torch.arange(s)
    k_pos = torch.arange(s) + 4           # the first 4 queries see no key
    out, lse = block_attention(q, k, v, q_pos, k_pos)
    assert out.dtype == lse.dtype == torch.float64
    mask = allowed(q_pos, k_pos, None, None)
    kr = k.repeat_interleave(HQ // HK, 1)
    scores = (q @ kr.transpose(-1, -2)) * D ** -0.5
    want_lse = torch.logsumexp(scores.masked_fill(~mask[:, None], float("-inf")), -1)
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-5, atol=1e-5)
    assert torch.isneginf(lse[:, :, :4]).all() and (out[:, :, :4] == 0).all()
    torch.testing.assert_close(out[:, :, 4:].double(),
                               reference_attention(q, k, v, mask)[:, :, 4:], rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad((out.sum() + lse[:, :, 4:].sum()), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)


def test_varlen_rejects_a_document_crossing_rows():
    q = torch.zeros(1, 2, 8, D)
    with pytest.raises(ValueError, match="crosses row"):
        varlen_sdpa(q, q, q, torch.tensor([0, 3, 12, 16]), D ** -0.5)


def test_shard_batch_dual_chunk_layout():
    s, cp = 16, 2
    tokens = torch.arange(B * s).reshape(B, s)
    cu = torch.tensor([0, 5, 16, 32], dtype=torch.int32)
    batch = {"tokens": tokens, "labels": tokens + 1, "loss_mask": torch.ones(B, s),
             "position_ids": torch.arange(s).expand(B, s), "source": torch.tensor([0, 1]), "cu_seqlens": cu}
    shards = [shard_batch(batch, cp, r) for r in range(cp)]
    chunk = s // (2 * cp)
    assert shards[0]["position_ids"][0].tolist() == list(range(0, chunk)) + list(range(3 * chunk, 4 * chunk))
    assert shards[1]["position_ids"][0].tolist() == list(range(chunk, 3 * chunk))
    assert torch.equal(shards[1]["tokens"], tokens[:, chunk:3 * chunk])
    assert shards[0]["cu_seqlens"] is cu and torch.equal(shards[0]["source"], batch["source"])
    # every token lands on exactly one rank
    seen = torch.cat([sh["tokens"] for sh in shards], 1).sort(1).values
    assert torch.equal(seen, tokens)
    with pytest.raises(ConfigError, match="training.seq_len"):
        shard_batch({k: v[:, :14] if k in ("tokens",) else v for k, v in batch.items()}, cp, 0)


def test_rope_on_a_cp_shard_equals_the_unsharded_rope():
    from megamid.rope import RopeScaling
    from megamid.rope.rotary_embedding import ScaledRotaryEmbedding

    rope = ScaledRotaryEmbedding(RopeScaling.from_dict(
        {"type": "yarn", "factor": 4, "original_max_position_embeddings": 32, "theta": 10000}, head_dim=D))
    s = 64
    positions = torch.arange(s).expand(B, s)
    full = rope.freqs_for_positions(positions, seq_len=s)
    for r in range(2):
        shard = shard_batch({"position_ids": positions, "tokens": positions}, 2, r)["position_ids"]
        got = rope.freqs_for_positions(shard, seq_len=s)
        torch.testing.assert_close(got, full[shard[0]], rtol=0, atol=0)


def test_cp_refuses_dropout():
    module = _module(dropout=0.1)
    module.cp_group = _Group(2)
    q, k, v = _qkv(8)
    with pytest.raises(ConfigError, match="attention_dropout"):
        module(q, k, v, None)


# ---- GPU paths: flash / efficient / cuDNN SDPA and FlexAttention -----------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_sdpa_matches_reference(dtype):
    s = 256
    q, k, v = (t.detach().cuda().to(dtype).permute(1, 2, 0, 3).requires_grad_() for t in _qkv(s, dtype=torch.float32))
    got = causal_sdpa(q, k, v, D ** -0.5)
    pos = torch.arange(s, device="cuda")
    want = reference_attention(*(t.double() for t in (q, k, v)), allowed(pos, pos, None, None))
    ref_low = reference_attention(q, k, v, allowed(pos, pos, None, None))
    tol = 2 * (ref_low.double() - want).abs().max().item() + 1e-3
    assert (got.double() - want).abs().max().item() <= tol


@pytest.mark.gpu
@pytest.mark.parametrize("window", [None, 40])
def test_gpu_flex_documents_and_lse_match_cpu(window):
    s = 256
    cu = torch.tensor([0, 70, 200, 256, 300, 512], dtype=torch.int32)
    q, k, v = (t.detach().permute(1, 2, 0, 3).float() for t in _qkv(s))
    doc, pos = document_ids(cu, B, s), torch.arange(s)
    want_out, want_lse = block_attention(q, k, v, pos, pos, doc, doc, window=window)
    qc, kc, vc = (t.cuda().requires_grad_() for t in (q, k, v))
    out, lse = block_attention(qc, kc, vc, pos.cuda(), pos.cuda(), doc.cuda(), doc.cuda(), window=window)
    torch.testing.assert_close(out.cpu(), want_out, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(lse.cpu(), want_lse, rtol=1e-3, atol=1e-3)
    (out.sum() + lse.sum()).backward()   # gradients flow through FlexAttention's lse
    assert torch.isfinite(qc.grad).all()


def test_cached_keys_align_queries_with_the_last_keys():
    """sq < sk (a decode step with a KV cache): the queries are the last sq tokens."""
    s = 10
    q, k, v = _qkv(s)
    full = _module()(q, k, v, None)
    last = _module()(q[-3:], k, v, None)
    torch.testing.assert_close(last, full[-3:])


def test_sliding_window_matches_the_masked_reference():
    """window W: a query sees itself and the W - 1 keys before it (HF Mistral's sliding_window)."""
    s, w = 20, 5
    q, k, v = _qkv(s)
    out = _module(window=w)(q, k, v, None)
    qb, kb, vb = (t.permute(1, 2, 0, 3) for t in (q, k, v))
    pos = torch.arange(s)
    mask = allowed(pos, pos, None, None, w)
    assert mask[0].sum(-1).tolist() == [min(i + 1, w) for i in range(s)]
    want = reference_attention(qb, kb, vb, mask).permute(2, 0, 1, 3).reshape(s, B, HQ * D)
    torch.testing.assert_close(out, want)
    for a, b in zip(_grads(out, (q, k, v)), _grads(want, (q, k, v))):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(out, _module()(q, k, v, None))  # the window does cut keys off
    # a decode step with cached keys, packed documents and the masked block honour it too
    torch.testing.assert_close(_module(window=w)(q[-3:], k, v, None), out[-3:])
    cu = torch.tensor([0, 12, 20, 40], dtype=torch.int32)
    packed = _module(window=w)(q, k, v, None, packed_seq_params=_packed_params(cu, B, s))
    doc = document_ids(cu, B, s)
    blocked, _ = block_attention(qb.detach(), kb.detach(), vb.detach(), pos, pos, doc, doc, window=w)
    torch.testing.assert_close(packed.detach(), blocked.permute(2, 0, 1, 3).reshape(s, B, HQ * D).to(packed.dtype))
    want_packed = reference_attention(qb, kb, vb, allowed(pos, pos, doc, doc, w))
    torch.testing.assert_close(packed, want_packed.permute(2, 0, 1, 3).reshape(s, B, HQ * D))


def test_window_size_must_be_causal():
    with pytest.raises(ConfigError, match="causal sliding window"):
        from megatron.core.transformer.enums import AttnMaskType

        config = SimpleNamespace(num_attention_heads=HQ, num_query_groups=HK, kv_channels=D, attention_dropout=0.0,
                                 softmax_type="vanilla", window_size=(4, 4))
        MegamidCoreAttention(config, 1, AttnMaskType.causal, "self", pg_collection=SimpleNamespace(tp=_Group(), cp=None))


def test_matches_megatrons_dot_product_attention_with_and_without_a_window():
    """megatron-core's own DotProductAttention (its window_size mask is the convention TE shares) and
    megamid's, from one TransformerConfig, float64: outputs and q/k/v gradients agree to rounding."""
    import json
    import os
    import subprocess
    import sys

    driver = os.path.join(os.path.dirname(__file__), "megatron_attention_driver.py")
    proc = subprocess.run([sys.executable, driver], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("MEGATRON_ATTENTION_RESULT ")][-1]
    result = json.loads(line.split(" ", 1)[1])
    for case in ("None", "6"):
        assert max(result[case]) < 1e-12, (case, result[case])
    assert result["window_effect"] > 0.1  # the window cut keys off in both


def test_an_explicit_mask_with_a_causal_prefix_equals_the_dense_masked_softmax():
    # shared-prefix scoring's mask: a causal prompt of 9, then candidates of 2 and 3 that see it and themselves
    from megamid.attention.core_attention import causal_prefix
    from megamid.eval.scoring import shared_prefix_layout

    _, allowed_, _ = shared_prefix_layout(9, [2, 3])
    mask = (~allowed_)[None, None].expand(B, 1, -1, -1)  # megatron's convention: True = masked out
    # the first candidate continues the prompt causally: the causal rows end where the second one starts
    assert causal_prefix(mask) == 11 and causal_prefix(mask.clone()) == 11
    assert causal_prefix(~torch.ones(5, 5, dtype=torch.bool).tril()[None, None]) == 5
    assert causal_prefix(torch.zeros(1, 1, 4, 4, dtype=torch.bool)) == 0  # nothing masked: row 0 sees the future
    q, k, v = _qkv(14)
    out = _module()(q, k, v, mask)
    rep = HQ // HK
    qh, kh, vh = (t.permute(1, 2, 0, 3) for t in (q, k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)))
    scores = (qh @ kh.transpose(-1, -2)) / D ** 0.5
    want = torch.softmax(scores.masked_fill(mask, float("-inf")), -1) @ vh
    torch.testing.assert_close(out, want.permute(2, 0, 1, 3).reshape(14, B, -1), rtol=1e-10, atol=1e-10)
