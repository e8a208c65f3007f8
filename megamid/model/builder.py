"""Megatron-Core GPTModel from megamid's ModelConfig and ParallelConfig, through ModuleSpecs.

Which implementations a model gets is decided once, when it is built (`resolve_backends`): Transformer
Engine's layer spec where TE imports and CUDA is present, megatron's local spec otherwise
(`MEGAMID_SPEC=te|local` overrides), and the core attention (`MEGAMID_ATTENTION`, see megamid.attention).
The choice is logged and recorded in every checkpoint's megamid.json. One GPTModel per virtual pipeline
stage; bf16/fp16 through Float16Module; Megatron DDP around each chunk when training.
"""

import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from megamid.attention import attention_backend, describe_attention
from megamid.config.base import ConfigError
from megamid.config.model import ModelConfig
from megamid.config.parallel import ParallelConfig, check_layout


def te_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # TE raises more than ImportError without its libraries
        return False
    return True


@dataclass(frozen=True)
class ModelBackends:
    """The implementations a model is built with: layer spec ('te' | 'local') and core attention
    ('te' | 'megamid' | 'megatron')."""

    spec: str
    attention: str

    def describe(self, parallel: ParallelConfig) -> str:
        return f"layer spec: {self.spec}; {describe_attention(parallel, self.attention)}"

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_backends(environ=None, te: bool = None) -> ModelBackends:
    """Reads MEGAMID_SPEC and MEGAMID_ATTENTION once (from `environ`, default os.environ); `te` is whether
    Transformer Engine is usable here (default: importable with CUDA)."""
    environ = os.environ if environ is None else environ
    te = te_available() if te is None else te
    choice = environ.get("MEGAMID_SPEC", "auto").lower()
    if choice not in ("auto", "te", "local"):
        raise ConfigError(f"MEGAMID_SPEC={choice!r} is invalid: expected auto, te or local")
    if choice == "te" and not te:
        raise ConfigError("MEGAMID_SPEC=te but Transformer Engine is not importable with CUDA here")
    spec = ("te" if te else "local") if choice == "auto" else choice
    return ModelBackends(spec, attention_backend(environ.get("MEGAMID_ATTENTION", "auto"), spec))


def transformer_config(model: ModelConfig, parallel: ParallelConfig, recompute: str = "none"):
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megamid.attention import CP_COMM_TYPE

    dtype = model.torch_dtype
    on_cpu = not torch.cuda.is_available()
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
        apply_rope_fusion=False,
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


def layer_spec(model: ModelConfig, backends: ModelBackends):
    """megatron's layer spec for `backends.spec`, with megamid's core attention (SDPA/FlexAttention with
    context parallelism) where `backends.attention` says so (see megamid.attention)."""
    from megatron.core.models.gpt import gpt_layer_specs

    from megamid.attention import with_core_attention

    if backends.spec == "te":
        spec = gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=model.qk_layernorm)
    else:
        spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization=model.normalization,
                                                        qk_layernorm=model.qk_layernorm)
    return with_core_attention(spec, backends.attention)


def build_gpt_chunks(model: ModelConfig, parallel: ParallelConfig, recompute: str = "none",
                     backends: ModelBackends = None) -> list:
    """The GPTModel chunks this rank holds (one per virtual pipeline stage), unwrapped, on device, built
    with `backends` (default: resolve_backends()). Each chunk's GPTModel carries `.backends`.

    Megatron's parallel state must be initialised for `parallel` first."""
    from megatron.core import parallel_state
    from megatron.core.transformer.module import Float16Module

    from megamid.platform import device

    check_layout(model, parallel)
    config = transformer_config(model, parallel, recompute)
    backends = resolve_backends() if backends is None else backends
    spec = layer_spec(model, backends)
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
        set_rope(gpt, model.rope)
        gpt.backends = backends
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


def set_rope(gpt, rope: dict) -> None:
    """Puts megamid's rotary embedding for `rope` (any scaling method) on a GPTModel, or switches the
    one it has to a new scaling (a phase change): every cached cos/sin table is rebuilt and the
    attention factor is re-bound to the model's TransformerConfig."""
    from megamid.rope import RopeScaling
    from megamid.rope.rotary_embedding import ScaledRotaryEmbedding, install_rotary_embedding

    gpt = unwrap(gpt)
    scaling = RopeScaling.from_dict(dict(rope), head_dim=gpt.config.kv_channels)
    if isinstance(getattr(gpt, "rotary_pos_emb", None), ScaledRotaryEmbedding):
        gpt.rotary_pos_emb.set_scaling(scaling)
        gpt.rotary_pos_emb_cache.clear()
    else:
        install_rotary_embedding(gpt, scaling)


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
