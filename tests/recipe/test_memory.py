"""The memory estimator against hand-computed cases and Megatron-Bridge's published Llama-3-8B layouts."""

import math

import pytest

from megamid.config import ModelConfig, ParallelConfig
from megamid.config.fp8 import Fp8Config
from megamid.config.recompute import RecomputeConfig
from megamid.recipe.memory import (FRAGMENTATION, GIB, RUNTIME_BYTES, estimate_memory, layer_activation_bytes,
                                   layer_parameters)
from megamid.recipe.gpus import GPUS, gpu_from_device_name, gpu_spec
from megamid.config.base import ConfigError

# L=2, h=8, a=2 heads of d=4, g=1 KV group, f=16, V=32, bf16
TINY = ModelConfig(num_layers=2, hidden_size=8, num_attention_heads=2, num_query_groups=1, ffn_hidden_size=16,
                   vocab_size=32, dtype="bf16")
LLAMA3_8B = ModelConfig(num_layers=32, hidden_size=4096, num_attention_heads=32, num_query_groups=8,
                        ffn_hidden_size=14336, vocab_size=128256, max_position_embeddings=8192, dtype="bf16")
NONE = RecomputeConfig()


def tiny_estimate(parallel=ParallelConfig(), **kw):
    args = dict(seq_len=4, micro_batch_size=1, num_microbatches=1, data_parallel_size=1)
    args.update(kw)
    return estimate_memory(TINY, parallel, **args)


def test_tiny_layer_by_hand():
    # matrices: qkv 8*4*(2+2)=128, proj 2*4*8=64, mlp 3*8*16=384; norms 2*8
    assert layer_parameters(TINY) == (576, 16)
    # s=4, b=1: norm inputs 2*4*8*2=128, norm outputs 128, Q K V O 4*(2*2*4+2*1*4)*2=192, lse 4*4*2=32,
    # FC1 out 4*32*2=256, FC2 in 4*16*2=128
    assert layer_activation_bytes(TINY, ParallelConfig(), 4, 1, NONE) == 864


def test_tiny_stage_by_hand():
    est = tiny_estimate()
    (only,) = est.stages
    params = 2 * (576 + 16) + 32 * 8 + 8 + 32 * 8      # layers, embedding, final norm, output layer
    assert only.weights == 2 * params and only.gradients == 4 * params and only.optimizer == 12 * params
    assert only.activations == 2 * 864 + 16 * 4          # + int64 token and position ids
    assert only.logits == 2 * 4 * 8 * 2 + 4 * 32 * 6     # final-norm/output inputs + fused CE logits
    assert only.runtime == RUNTIME_BYTES + FRAGMENTATION * (only.activations + only.logits)
    assert est.stage == "only"
    unfused = tiny_estimate(cross_entropy_fusion=False).stages[0]
    assert unfused.logits - only.logits == 4 * 32 * 4


def test_distributed_optimizer_shards_over_dp_times_cp():
    par = ParallelConfig(context_parallel_size=2, use_distributed_optimizer=True)
    a = tiny_estimate(par, data_parallel_size=3).stages[0]
    b = tiny_estimate(ParallelConfig(context_parallel_size=2), data_parallel_size=3).stages[0]
    assert a.optimizer * 6 == b.optimizer and a.weights == b.weights and a.gradients == b.gradients


def test_full_recompute_by_hand():
    uniform = tiny_estimate(recompute=RecomputeConfig("full", num_layers=1)).stages[0]
    assert uniform.activations == 2 * (4 * 8 * 2) + 864 + 64     # two unit inputs + one rebuilt layer + ids
    two = tiny_estimate(recompute=RecomputeConfig("full", num_layers=2)).stages[0]
    assert two.activations == 1 * 64 + 2 * 864 + 64
    block = tiny_estimate(recompute=RecomputeConfig("full", method="block", num_layers=1)).stages[0]
    assert block.activations == 64 + 864 + 64                     # one input kept, one layer in full
    block_all = tiny_estimate(recompute=RecomputeConfig("full", method="block", num_layers=2)).stages[0]
    assert block_all.activations == 2 * 64 + 864 + 64


def test_offload_by_hand():
    # one of the two layers offloaded: the other layer kept, plus one offloaded layer in flight, plus ids
    offload = tiny_estimate(recompute=RecomputeConfig("offload", num_layers=1)).stages[0]
    assert offload.activations == 864 + 864 + 64
    llama = dict(seq_len=8192, micro_batch_size=1, num_microbatches=8, data_parallel_size=8)
    kept = estimate_memory(LLAMA3_8B, ParallelConfig(), **llama).peak.activations
    half = estimate_memory(LLAMA3_8B, ParallelConfig(), recompute=RecomputeConfig("offload", num_layers=16),
                           **llama).peak.activations
    assert half < 0.6 * kept


def test_selective_modules_by_hand():
    def act(modules):
        return layer_activation_bytes(TINY, ParallelConfig(), 4, 1, RecomputeConfig("selective", modules=modules))
    assert act(("core_attn",)) == 864                             # flash attention keeps no scores
    assert act(("layernorm",)) == 864 - 128
    assert act(("mlp",)) == 864 - 384
    no_flash = layer_activation_bytes(TINY, ParallelConfig(), 4, 1, NONE, flash_attention=False)
    assert no_flash == 864 + 4 * 2 * 4 * 4                         # 4 a s S b
    assert layer_activation_bytes(TINY, ParallelConfig(), 4, 1, RecomputeConfig("selective"),
                                  flash_attention=False) == 864


def test_tp_sp_cp_divide_the_right_terms():
    tp2 = ParallelConfig(tensor_model_parallel_size=2)
    sp2 = ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True)
    # without SP the norm inputs/outputs (256) stay whole, the rest (608) halves
    assert layer_activation_bytes(TINY, tp2, 4, 1, NONE) == 256 + 608 / 2
    assert layer_activation_bytes(TINY, sp2, 4, 1, NONE) == 864 / 2
    ring = ParallelConfig(context_parallel_size=2, cp_comm="ring")
    assert layer_activation_bytes(TINY, ring, 4, 1, NONE) == 864 / 2
    gather = ParallelConfig(context_parallel_size=2, cp_comm="allgather")
    assert layer_activation_bytes(TINY, gather, 4, 1, NONE) == 864 / 2 + 2 * 4 * 1 * 4 * 2


def test_fp8_stores_gemm_inputs_in_one_byte():
    fp8 = Fp8Config()
    # norm outputs 128 -> 64, FC2 input 128 -> 64, + FP8 copy of O: 4*8
    assert layer_activation_bytes(TINY, ParallelConfig(), 4, 1, NONE, fp8) == 864 - 64 - 64 + 32
    base = tiny_estimate().stages[0]
    with_fp8 = tiny_estimate(fp8=fp8).stages[0]
    assert with_fp8.weights - base.weights == 2 * 2 * 576        # FP8 weight + transpose per GEMM weight
    gathered = tiny_estimate(fp8=Fp8Config(param_gather=True)).stages[0]
    assert gathered.weights == base.weights
    edge = tiny_estimate(fp8=Fp8Config(bf16_layers_at_start=1)).stages[0]
    assert edge.weights - base.weights == 2 * 576


def test_pipeline_in_flight_and_stages():
    model = ModelConfig(num_layers=4, hidden_size=8, num_attention_heads=2, num_query_groups=1,
                        ffn_hidden_size=16, vocab_size=32, dtype="bf16")
    pp2 = ParallelConfig(pipeline_model_parallel_size=2)
    est = estimate_memory(model, pp2, seq_len=4, micro_batch_size=1, num_microbatches=8, data_parallel_size=1)
    first, last = est.stages
    assert (first.stage, last.stage) == ("first", "last")
    assert first.activations == 2 * (2 * 864 + 64)               # 2 micro-batches in flight, 2 layers each
    assert last.activations == 2 * 864 and first.logits == 0 and last.logits > 0
    one = estimate_memory(model, pp2, seq_len=4, micro_batch_size=1, num_microbatches=1, data_parallel_size=1)
    assert one.stages[0].activations == 2 * 864 + 64
    vpp = ParallelConfig(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2)
    inter = estimate_memory(model, vpp, seq_len=4, micro_batch_size=1, num_microbatches=8, data_parallel_size=1)
    assert inter.stages[0].activations == pytest.approx(2 * (1 + 1 / 4) * (2 * 864 + 64))


def _bridge(world, tp, pp, cp, seq_len, gbs):
    par = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, context_parallel_size=cp,
                         sequence_parallel=tp > 1, use_distributed_optimizer=True, cp_comm="ring")
    dp = world // (tp * pp * cp)
    return estimate_memory(LLAMA3_8B, par, seq_len=seq_len, micro_batch_size=1, num_microbatches=gbs // dp,
                           data_parallel_size=dp)


# Megatron-Bridge's Llama-3-8B H100 recipes: distributed optimizer, no recompute, fused cross-entropy.
@pytest.mark.parametrize("world,tp,pp,cp,seq_len", [(8, 1, 1, 2, 8192), (16, 4, 2, 2, 16384),
                                                    (32, 4, 2, 4, 65536), (64, 4, 2, 8, 131072)])
def test_bridge_llama3_8b_layouts_fit_on_h100(world, tp, pp, cp, seq_len):
    est = _bridge(world, tp, pp, cp, seq_len, gbs=512 if seq_len == 8192 else 64)
    assert est.fits(gpu_spec("h100-80gb").memory_gib), est.total_gib


def test_llama3_8b_numbers():
    assert LLAMA3_8B.num_parameters() == 8_030_261_248
    # 34 s b h bytes per layer (SwiGLU, GQA 8, flash attention) + the fp32 log-sum-exp
    assert layer_activation_bytes(LLAMA3_8B, ParallelConfig(), 8192, 1, NONE) == 34 * 8192 * 4096 + 4 * 8192 * 32
    est = _bridge(8, 1, 1, 2, 8192, 512).stages[0]
    assert est.weights + est.gradients + est.optimizer == pytest.approx(8_030_261_248 * (2 + 4 + 12 / 8))
    assert 75 < est.total_gib < 79.2                     # the published 8K layout nearly fills an H100


def test_issue_layouts_do_not_fit_without_full_recompute():
    """The old example's 32K (TP2 CP2) and 128K (TP4 CP2) phases on 8 GPUs; full recompute fixes both."""
    for tp, cp, seq_len, gbs in ((2, 2, 32768, 128), (4, 2, 131072, 32)):
        par = ParallelConfig(tensor_model_parallel_size=tp, context_parallel_size=cp, sequence_parallel=True,
                             use_distributed_optimizer=True)
        dp = 8 // (tp * cp)
        kw = dict(seq_len=seq_len, micro_batch_size=1, num_microbatches=gbs // dp, data_parallel_size=dp)
        assert not estimate_memory(LLAMA3_8B, par, recompute=RecomputeConfig("selective"), **kw).fits(79.2)
        assert estimate_memory(LLAMA3_8B, par, recompute=RecomputeConfig("full"), **kw).total_gib < 60


def test_gpu_catalogue():
    assert gpu_spec("H100-80GB").arch == "hopper" and not gpu_spec("h100-80gb").mxfp8
    assert gpu_spec("b200-192gb").mxfp8 and not gpu_spec("a100-80gb").fp8
    with pytest.raises(ConfigError, match="h200-141gb"):
        gpu_spec("h300")
    assert gpu_from_device_name("NVIDIA H100 80GB HBM3", 79.1).name == "h100-80gb"
    assert gpu_from_device_name("NVIDIA H200", 139.7).name == "h200-141gb"
    assert gpu_from_device_name("NVIDIA GB200", 184.0).name == "gb200-186gb"
    assert gpu_from_device_name("Tesla T4", 15.0) is None
    assert all(math.isfinite(g.memory_gib) for g in GPUS.values())


def test_korthikanti_34sbh_for_gpt():
    """GPT as in Korthikanti et al. (MHA, GELU with f = 4h, dropout): 34 s b h bytes per layer once flash
    attention removes the 5 a s^2 b term (plus flash's fp32 log-sum-exp); with SP and TP t: 34 s b h / t."""
    gpt = ModelConfig(num_layers=2, hidden_size=256, num_attention_heads=8, vocab_size=64, activation="gelu",
                      normalization="LayerNorm", hidden_dropout=0.1, attention_dropout=0.1, dtype="fp16")
    s, h, a = 512, 256, 8
    assert layer_activation_bytes(gpt, ParallelConfig(), s, 1, NONE) == 34 * s * h + 4 * s * a
    sp = ParallelConfig(tensor_model_parallel_size=4, sequence_parallel=True)
    assert layer_activation_bytes(gpt, sp, s, 1, NONE) == (34 * s * h + 4 * s * a) / 4
    # without flash attention the paper's 5 a s^2 b term (scores, softmax, dropout mask) comes back
    assert layer_activation_bytes(gpt, ParallelConfig(), s, 1, NONE, flash_attention=False) == \
        34 * s * h + 4 * s * a + 5 * a * s * s
