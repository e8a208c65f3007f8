"""Megatron-Core GPTModel from megamid's ModelConfig and ParallelConfig, through ModuleSpecs.

Transformer Engine's spec where TE imports and CUDA is present, megatron's local spec otherwise
(`MEGAMID_SPEC=te|local` overrides). One GPTModel per virtual pipeline stage; bf16/fp16 through
Float16Module; Megatron DDP around each chunk when training.
"""

import os

import torch
import torch.nn.functional as F

from megamid.config.base import ConfigError
from megamid.config.model import ModelConfig
from megamid.config.parallel import ParallelConfig


def te_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # TE raises more than ImportError without its libraries
        return False
    return True


def spec_backend() -> str:
    choice = os.environ.get("MEGAMID_SPEC", "auto").lower()
    if choice not in ("auto", "te", "local"):
        raise ConfigError(f"MEGAMID_SPEC={choice!r} is invalid: expected auto, te or local")
    if choice == "te" and not te_available():
        raise ConfigError("MEGAMID_SPEC=te but Transformer Engine is not importable with CUDA here")
    if choice == "auto":
        return "te" if te_available() else "local"
    return choice


def validate_layout(model: ModelConfig, parallel: ParallelConfig, where: str = "parallel") -> None:
    """Checks the model divides over the layout; errors name the field, the value and what is valid."""
    tp, pp = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    for field, value, what in (("num_attention_heads", model.num_attention_heads, "heads"),
                               ("num_query_groups", model.query_groups, "query groups"),
                               ("vocab_size", model.vocab_size, "the vocabulary"),
                               ("ffn_hidden_size", model.ffn_size, "the FFN size")):
        if value % tp:
            raise ConfigError(f"model.{field}={value} is invalid with {where}.tensor_model_parallel_size={tp}: "
                              f"{what} must be divisible by TP")
    stages = pp * parallel.num_model_chunks
    if model.num_layers % stages:
        raise ConfigError(f"model.num_layers={model.num_layers} is invalid with {where}.pipeline_model_parallel_size"
                          f"={pp} x virtual={parallel.num_model_chunks}: layers must divide evenly into {stages} stages")


def transformer_config(model: ModelConfig, parallel: ParallelConfig, recompute: str = "none",
                       rope_fusion: str = "none"):
    """rope_fusion: the path megamid.rope.fusion.rope_fusion_path chose ("te" folds the rope's attention
    factor into softmax_scale and turns on TE's fused RoPE where TE is importable)."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megamid.attention import CP_COMM_TYPE
    from megamid.rope.fusion import folded_softmax_scale

    dtype = model.torch_dtype
    on_cpu = not torch.cuda.is_available()
    factor = model.rope_scaling(model.rope, "model.rope").attention_factor  # folded into softmax_scale on "te"
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
        cp_comm_type=CP_COMM_TYPE[parallel.cp_comm],   # read by TE's and megamid's attention alike
        sequence_parallel=parallel.sequence_parallel,
        normalization=model.normalization,
        layernorm_epsilon=model.norm_epsilon,
        gated_linear_unit=model.activation == "swiglu",
        activation_func=F.silu if model.activation == "swiglu" else F.gelu,
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
        # Same initial weights at every TP size (the full matrix is initialised, then split).
        use_cpu_initialization=on_cpu,
        # Loss is summed over tokens and divided by the global token count: exact across DP/micro-batches.
        calculate_per_token_loss=True,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        # without TE (CPU tests of the fold) megatron's unfused path applies the same unscaled rotation
        apply_rope_fusion=rope_fusion == "te" and te_available(),
        softmax_scale=folded_softmax_scale(model.head_dim, factor) if rope_fusion == "te" else None,
        bias_dropout_fusion=False,
        cross_entropy_loss_fusion=False,
        deallocate_pipeline_outputs=True,
        # Batched isend/irecv pairs mismatch over gloo under interleaved 1F1B (micro-batches 3+
        # differ from PP=1); ordered point-to-point gives exact results.
        batch_p2p_comm=False,
    )
    if recompute == "full":
        kwargs.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    elif recompute == "selective":
        kwargs.update(recompute_granularity="selective")
    return TransformerConfig(**kwargs)


def layer_spec(model: ModelConfig, backend: str, rope_fusion: str = "none"):
    """megatron's layer spec for `backend`, its core attention picked by MEGAMID_ATTENTION (megamid's
    SDPA/FlexAttention with context parallelism wherever TE's is not used; see megamid.attention), and
    megamid's fused-RoPE SelfAttention where rope_fusion is "megamid"."""
    from megatron.core.models.gpt import gpt_layer_specs

    from megamid.attention import with_core_attention

    if backend == "te":
        spec = with_core_attention(
            gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=model.qk_layernorm), backend)
    else:
        spec = with_core_attention(gpt_layer_specs.get_gpt_layer_local_spec(
            normalization=model.normalization, qk_layernorm=model.qk_layernorm), backend)
    if rope_fusion == "megamid":
        from megamid.attention.rope_attention import with_fused_rope

        spec = with_fused_rope(spec, model.rope_scaling(model.rope, "model.rope").rotary_dim)
    return spec


def build_gpt_chunks(model: ModelConfig, parallel: ParallelConfig, recompute: str = "none",
                     rope_fusion: str | None = None) -> list:
    """The GPTModel chunks this rank holds (one per virtual pipeline stage), unwrapped, on device.

    rope_fusion: the RoPE path ("te" | "megamid" | "none"; default rope_fusion_path's choice for this
    machine), kept on each GPTModel as `rope_fusion`. Megatron's parallel state must be initialised for
    `parallel` first."""
    from megatron.core import parallel_state
    from megatron.core.transformer.module import Float16Module

    from megamid.platform import device
    from megamid.rope.fusion import rope_fusion_path

    validate_layout(model, parallel)
    backend = spec_backend()
    if rope_fusion is None:
        from megamid.kernels import rope as rope_kernel

        rope_fusion = rope_fusion_path(model, cuda=torch.cuda.is_available(), te=backend == "te",
                                       kernel_built=rope_kernel._cuda is not None)
    config = transformer_config(model, parallel, recompute, rope_fusion)
    spec = layer_spec(model, backend, rope_fusion)
    rope = dict(model.rope)
    chunks = []
    for vp_stage in range(parallel.num_model_chunks):
        vp = vp_stage if parallel.virtual_pipeline_model_parallel_size else None
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=vp is None, vp_stage=vp)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=vp is None, vp_stage=vp)
        gpt = gpt_model_class()(
            config=config,
            transformer_layer_spec=spec,
            vocab_size=model.vocab_size,
            max_sequence_length=model.max_position_embeddings,
            pre_process=pre,
            post_process=post,
            parallel_output=True,
            share_embeddings_and_output_weights=model.tie_embeddings,
            position_embedding_type="rope",
            rotary_base=int(rope.get("theta", 10000)),
            vp_stage=vp,
        )
        set_rope(gpt, model.rope, fusion=rope_fusion)
        gpt.rope_fusion = rope_fusion
        gpt.to(device())
        if model.dtype != "fp32":
            gpt = Float16Module(config, gpt)
        chunks.append(gpt)
    return chunks


_MODEL_CLASS = None


def gpt_model_class():
    """megatron's GPTModel with RoPE taken from each batch's position_ids (packed documents restart
    at 0), which megatron's own GPTModel ignores."""
    global _MODEL_CLASS
    if _MODEL_CLASS is None:
        from megatron.core.models.gpt import GPTModel

        from megamid.rope.rotary_embedding import PositionIdsRopeMixin

        class MegamidGPTModel(PositionIdsRopeMixin, GPTModel):
            rope_position_ids = True

        _MODEL_CLASS = MegamidGPTModel
    return _MODEL_CLASS


def set_rope(gpt, rope: dict, fusion: str = "none") -> None:
    """Puts megamid's rotary embedding for `rope` (any scaling method) on a GPTModel, or switches the
    one it has to a new scaling (a phase change): every cached cos/sin table is rebuilt and the
    attention factor is re-bound to the model's TransformerConfig (on TE's fused path: the softmax
    scale of every attention layer). `fusion` is used when installing; a switch keeps the model's."""
    from megamid.rope import RopeScaling
    from megamid.rope.fusion import set_softmax_scale
    from megamid.rope.rotary_embedding import ScaledRotaryEmbedding, install_rotary_embedding

    gpt = unwrap(gpt)
    scaling = RopeScaling.from_dict(dict(rope), head_dim=gpt.config.kv_channels)
    if isinstance(getattr(gpt, "rotary_pos_emb", None), ScaledRotaryEmbedding):
        gpt.rotary_pos_emb.set_scaling(scaling)
        gpt.rotary_pos_emb_cache.clear()
    else:
        install_rotary_embedding(gpt, scaling, fusion=fusion)
    if gpt.rotary_pos_emb.fusion == "te":
        set_softmax_scale(gpt, gpt.config.softmax_scale)


def wrap_ddp(chunks: list, parallel: ParallelConfig) -> list:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
        check_for_nan_in_grad=False,
    )
    wrapped = []
    for i, chunk in enumerate(chunks):
        config = unwrap(chunk).config
        # Only the first chunk buckets its gradients (as Megatron-LM does with interleaving).
        wrapped.append(DistributedDataParallel(config, ddp_config, chunk, disable_bucketing=i > 0))
    return wrapped


def unwrap(module):
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(module, "module"):
        module = module.module
    return module
