"""What megamid asks of Megatron-Core for a phase: TransformerConfig, DDP and optimizer keyword arguments.

    kwargs = engine_kwargs(model, parallel, recompute, fp8, cuda=True, te=True, apex=True)  # -> TransformerConfig
    ddp = ddp_kwargs(parallel, fp8, cuda=True)                                   # -> DistributedDataParallelConfig
    opt = optimizer_kwargs(parallel, fp8, cuda=True)                             # merged into OptimizerConfig
    log(describe_engine(kwargs, ddp))                                            # the start-up line

`cuda`, `te` and `apex` describe the target, not this process: tests build the GPU configuration on CPU.
Where CUDA is present the fusions and overlaps are on as Megatron-LM runs Llama: bias-SwiGLU,
bias-dropout-add, persistent LayerNorm for LayerNorm models, fused cross-entropy (TE's with TE), and with
apex's kernels (NGC images; megatron's output layer raises without them) gradient-accumulation fusion and
the masked-softmax kernel; grad-reduce overlap, and param-gather overlap with the distributed optimizer;
`batch_p2p_comm` is left to megatron. Without CUDA (gloo) every fusion stays off and
point-to-point stays ordered, exactly as before, because they are CUDA kernels or mismatch over gloo.

Obligations on the caller where these are on:
- tp_comm_overlap=True needs TE's userbuffers initialised for the phase's shape first (initialize_tp_comm_overlap).
- overlap_param_gather: the distributed optimizer all-gathers weights in the next forward's pre-hooks,
  so before a save or an eval the caller forces the gather (`chunk.start_param_sync(force_sync=True)` per
  DDP chunk, as Megatron-LM does through disable_forward_pre_hook).
- apply_rope_fusion is the caller's choice (`rope_fusion`): the rope owner decides when TE's fused
  RoPE is exact (YaRN's attention factor folded into the softmax scale).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from megamid.attention.backend import CP_COMM_TYPE
from megamid.config.base import ConfigError
from megamid.config.fp8 import Fp8Config, fp8_recompute_problem
from megamid.config.model import ModelConfig
from megamid.config.parallel import ParallelConfig
from megamid.config.recompute import RecomputeConfig

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def engine_kwargs(model: ModelConfig, parallel: ParallelConfig, recompute=None, fp8=None, *, cuda: bool,
                  te: bool, apex: bool = False, rope_fusion: bool = False, tp_comm_overlap: bool = False) -> dict:
    """TransformerConfig keyword arguments for `model` on `parallel` with a phase's recompute and FP8
    settings (RecomputeConfig / Fp8Config or their recipe values). Raises ConfigError for what the
    target cannot run (FP8 without TE or CUDA, TE-only CP communication without TE)."""
    recompute = RecomputeConfig.from_value(recompute)
    fp8 = Fp8Config.from_value(fp8)
    if fp8 is not None and not (cuda and te):
        raise ConfigError(f"fp8={fp8.describe()} is invalid here: FP8 runs only through Transformer Engine on a "
                          f"GPU ({'no CUDA' if not cuda else 'TE not importable'}); drop fp8 for this run")
    if parallel.context_parallel_size > 1 and parallel.cp_comm in ("a2a", "a2a+p2p") and not te:
        raise ConfigError(f"parallel.cp_comm={parallel.cp_comm!r} is invalid without Transformer Engine: megamid's "
                          "attention runs allgather or ring")
    problem = fp8_recompute_problem(fp8, recompute)
    if problem:
        raise ConfigError(problem)
    if tp_comm_overlap and not (cuda and te and parallel.sequence_parallel):
        raise ConfigError("tp_comm_overlap needs CUDA, Transformer Engine and parallel.sequence_parallel: true")
    dtype = _DTYPES[model.dtype]
    swiglu = model.activation == "swiglu"
    kwargs = dict(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.query_groups,
        kv_channels=model.head_dim,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        cp_comm_type=CP_COMM_TYPE[parallel.cp_comm],
        sequence_parallel=parallel.sequence_parallel,
        normalization=model.normalization,
        layernorm_epsilon=model.norm_epsilon,
        gated_linear_unit=swiglu,
        activation_func=F.silu if swiglu else F.gelu,
        add_bias_linear=model.add_bias_linear,
        add_qkv_bias=model.add_qkv_bias,
        qk_layernorm=model.qk_layernorm,
        # (left, right) as TE and megamid's attention read it: the window - 1 keys before each query
        window_size=None if model.sliding_window is None else (model.sliding_window - 1, 0),
        init_method_std=model.init_method_std,
        attention_dropout=model.attention_dropout,
        hidden_dropout=model.hidden_dropout,
        bf16=model.dtype == "bf16",
        fp16=model.dtype == "fp16",
        params_dtype=dtype,
        pipeline_dtype=dtype,
        autocast_dtype=dtype,
        # Same initial weights at every TP size on CPU (the full matrix is initialised, then split).
        use_cpu_initialization=not cuda,
        # Loss is summed over tokens and divided by the global token count: exact across DP/micro-batches.
        calculate_per_token_loss=True,
        deallocate_pipeline_outputs=True,
    )
    if parallel.hierarchical_context_parallel_sizes:
        kwargs["hierarchical_context_parallel_sizes"] = parallel.hierarchical_context_parallel_sizes
    if cuda:
        kwargs.update(
            # weight gradients accumulated into main_grad inside the GEMM: apex's fused_weight_gradient_mlp_cuda,
            # which megatron's own output layer needs even under TE's spec
            gradient_accumulation_fusion=apex,
            # bias-SwiGLU / bias-GELU; megatron refuses it for an unbiased non-gated GELU
            bias_activation_fusion=swiglu or model.add_bias_linear,
            bias_dropout_fusion=True,
            masked_softmax_fusion=apex,                  # apex's scaled_masked_softmax_cuda (local attention only)
            persist_layer_norm=model.normalization == "LayerNorm",
            cross_entropy_loss_fusion=True,
            cross_entropy_fusion_impl="te" if te else "native",
            apply_rope_fusion=rope_fusion,
            tp_comm_overlap=tp_comm_overlap,
        )
    else:
        kwargs.update(
            bias_activation_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
            gradient_accumulation_fusion=False, apply_rope_fusion=False, bias_dropout_fusion=False,
            cross_entropy_loss_fusion=False,
            # Batched isend/irecv pairs mismatch over gloo under interleaved 1F1B (micro-batches 3+
            # differ from PP=1); ordered point-to-point gives exact results.
            batch_p2p_comm=False,
        )
    if recompute.granularity == "full":
        kwargs.update(recompute_granularity="full", recompute_method=recompute.method,
                      recompute_num_layers=recompute.num_layers)
    elif recompute.granularity == "selective":
        kwargs.update(recompute_granularity="selective", recompute_modules=list(recompute.modules))
    elif recompute.granularity == "offload":
        if not cuda:
            raise ConfigError("recompute: offload is invalid here: activation offload to host memory needs CUDA")
        if parallel.pipeline_model_parallel_size > 1:
            raise ConfigError("recompute: offload is invalid with pipeline parallelism (megatron-core does not "
                              "offload across pipeline stages): use full recompute, or pipeline_model_parallel_size: 1")
        if recompute.num_layers >= model.num_layers:
            raise ConfigError(f"recompute.num_layers={recompute.num_layers} is invalid for offload: megatron offloads "
                              f"fewer layers than the model's {model.num_layers}")
        kwargs.update(cpu_offloading=True, cpu_offloading_num_layers=recompute.num_layers,
                      cpu_offloading_activations=True, cpu_offloading_weights=False)
    if fp8 is not None:
        kwargs.update(fp8=fp8.format, fp8_recipe=fp8.recipe, fp8_amax_history_len=fp8.amax_history_len,
                      fp8_amax_compute_algo="max" if fp8.recipe == "delayed" else "most_recent",
                      fp8_param=fp8.param_gather)
        if fp8.bf16_layers:
            kwargs.update(first_last_layers_bf16=True, num_layers_at_start_in_bf16=fp8.bf16_layers_at_start,
                          num_layers_at_end_in_bf16=fp8.bf16_layers_at_end)
    return kwargs


def _overlap_param_gather(parallel: ParallelConfig, cuda: bool, requested: Optional[bool]) -> bool:
    return cuda and parallel.use_distributed_optimizer and requested is not False


def ddp_kwargs(parallel: ParallelConfig, fp8=None, *, cuda: bool, overlap_param_gather: Optional[bool] = None) -> dict:
    """DistributedDataParallelConfig keyword arguments: fp32 gradient reduction always; on CUDA the
    grad-reduce overlap, and the param-gather overlap with the distributed optimizer unless
    `overlap_param_gather` is False (a caller that cannot force the gather before saves)."""
    fp8 = Fp8Config.from_value(fp8)
    param_gather = fp8 is not None and fp8.param_gather
    return dict(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=cuda,
        overlap_param_gather=_overlap_param_gather(parallel, cuda, overlap_param_gather),
        use_distributed_optimizer=parallel.use_distributed_optimizer,
        check_for_nan_in_grad=False,
        fp8_param_gather=param_gather,
        reuse_grad_buf_for_mxfp8_param_ag=param_gather and fp8.recipe == "mxfp8",
    )


def optimizer_kwargs(parallel: ParallelConfig, fp8=None, *, cuda: bool,
                     overlap_param_gather: Optional[bool] = None) -> dict:
    """The OptimizerConfig fields that follow the layout and FP8 settings (the rest come from training);
    `overlap_param_gather` as for ddp_kwargs (the two must agree)."""
    fp8 = Fp8Config.from_value(fp8)
    param_gather = fp8 is not None and fp8.param_gather
    return dict(
        use_distributed_optimizer=parallel.use_distributed_optimizer,
        overlap_param_gather=_overlap_param_gather(parallel, cuda, overlap_param_gather),
        fp8_recipe=fp8.recipe if fp8 is not None else None,
        reuse_grad_buf_for_mxfp8_param_ag=param_gather and fp8.recipe == "mxfp8",
    )


_FUSIONS = ("gradient_accumulation_fusion", "bias_activation_fusion", "bias_dropout_fusion", "masked_softmax_fusion",
            "persist_layer_norm", "cross_entropy_loss_fusion", "apply_rope_fusion", "tp_comm_overlap")


def describe_engine(config, ddp=None) -> str:
    """One line for the start-up log: precision, recompute, fusions and overlaps that are on. `config` and
    `ddp` are engine_kwargs / ddp_kwargs dicts or the TransformerConfig / DDP config built from them."""
    def get(obj, name):
        return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)

    parts = []
    if get(config, "fp8"):
        parts.append(f"fp8 {get(config, 'fp8_recipe')}/{get(config, 'fp8')}" + (" params" if get(config, "fp8_param") else ""))
    else:
        parts.append("bf16" if get(config, "bf16") else "fp16" if get(config, "fp16") else "fp32")
    granularity = get(config, "recompute_granularity")
    if granularity == "full":
        parts.append(f"recompute full ({get(config, 'recompute_method')}, {get(config, 'recompute_num_layers')})")
    elif granularity == "selective":
        parts.append(f"recompute selective ({','.join(get(config, 'recompute_modules'))})")
    elif get(config, "cpu_offloading"):
        parts.append(f"activations of {get(config, 'cpu_offloading_num_layers')} layers offloaded to host memory")
    else:
        parts.append("no recompute")
    on = [name.replace("_fusion", "").replace("apply_", "") for name in _FUSIONS if get(config, name)]
    parts.append("fusions: " + (", ".join(on) if on else "none"))
    if ddp is not None:
        overlaps = [n for n in ("overlap_grad_reduce", "overlap_param_gather") if get(ddp, n)]
        parts.append("overlap: " + (", ".join(overlaps) if overlaps else "none"))
    parts.append("batch_p2p_comm " + ("off (ordered, for gloo)" if get(config, "batch_p2p_comm") is False else "on"))
    return "engine: " + "; ".join(parts)


def initialize_tp_comm_overlap(model: ModelConfig, parallel: ParallelConfig, seq_len: int,
                               micro_batch_size: int, fp8: bool = False) -> None:
    """TE's userbuffers for TP communication overlap, sized [seq_len * micro_batch_size / CP, hidden]
    (what Megatron-LM's _initialize_tp_communicators passes); once per process, before the model is built."""
    from transformer_engine.pytorch import module as te_module

    shape = [seq_len * micro_batch_size // parallel.context_parallel_size, model.hidden_size]
    te_module.base.initialize_ub(shape=shape, tp_size=parallel.tensor_model_parallel_size,
                                 use_fp8=fp8, dtype=_DTYPES[model.dtype])


def force_param_sync(chunks: list) -> None:
    """Completes the distributed optimizer's overlapped weight all-gather on every DDP chunk (before a
    save, an eval or a phase change), as Megatron-LM's disable_forward_pre_hook(param_sync=True) does."""
    for chunk in chunks:
        if getattr(getattr(chunk, "ddp_config", None), "overlap_param_gather", False):
            chunk.start_param_sync(force_sync=True)
