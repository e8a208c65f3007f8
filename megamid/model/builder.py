"""Megatron-Core GPTModel from megamid's ModelConfig and ParallelConfig, through ModuleSpecs.

Which implementations a model gets is decided once, when it is built (`resolve_backends`): Transformer
Engine's layer spec where TE imports and CUDA is present, megatron's local spec otherwise
(`MEGAMID_SPEC=te|local` overrides), and the core attention (`MEGAMID_ATTENTION`, see megamid.attention).
The choice is logged and recorded in every checkpoint's megamid.json. One GPTModel per virtual pipeline
stage; bf16/fp16 through Float16Module; Megatron DDP around each chunk when training.
"""

import os
from dataclasses import asdict, dataclass, replace

import torch

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
    """The implementations a model is built with: layer spec ('te' | 'local'), core attention
    ('te' | 'megamid' | 'megatron') and who applies RoPE ('te' | 'megamid' | 'none', megamid.rope.fusion)."""

    spec: str
    attention: str
    rope_fusion: str = "none"

    def describe(self, parallel: ParallelConfig) -> str:
        return f"layer spec: {self.spec}; {describe_attention(parallel, self.attention)}"

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_backends(environ=None, te: bool = None, model: ModelConfig = None, cuda: bool = None,
                     kernel_built: bool = None) -> ModelBackends:
    """Reads MEGAMID_SPEC and MEGAMID_ATTENTION once (from `environ`, default os.environ); `te` is whether
    Transformer Engine is usable here (default: importable with CUDA). With `model`, its rope_fusion is
    resolved too (megamid.rope.fusion.rope_fusion_path: CUDA present, megamid._cuda built)."""
    environ = os.environ if environ is None else environ
    te = te_available() if te is None else te
    cuda = torch.cuda.is_available() if cuda is None else cuda
    choice = environ.get("MEGAMID_SPEC", "auto").lower()
    if choice not in ("auto", "te", "local"):
        raise ConfigError(f"MEGAMID_SPEC={choice!r} is invalid: expected auto, te or local")
    if choice == "te" and not te:
        raise ConfigError("MEGAMID_SPEC=te but Transformer Engine is not importable with CUDA here")
    spec = ("te" if te else "local") if choice == "auto" else choice
    rope_fusion = "none"
    if model is not None:
        from megamid.rope.fusion import rope_fusion_path

        if kernel_built is None:
            from megamid.kernels import rope as rope_kernel

            kernel_built = rope_kernel._cuda is not None
        rope_fusion = rope_fusion_path(model, cuda=cuda, te=spec == "te", kernel_built=kernel_built)
    return ModelBackends(spec, attention_backend(environ.get("MEGAMID_ATTENTION", "auto"), spec), rope_fusion)


def apex_kernels() -> bool:
    """apex's fused_weight_gradient_mlp_cuda is importable (NGC images): megatron's gradient-accumulation
    fusion and masked-softmax kernels can be on."""
    try:
        import fused_weight_gradient_mlp_cuda  # noqa: F401
    except ImportError:
        return False
    return True


def transformer_config(model: ModelConfig, parallel: ParallelConfig, recompute="none", fp8=None,
                       backends: ModelBackends = None):
    """megatron's TransformerConfig for this process's device and `backends` (default: resolve_backends());
    fusions on with CUDA, see engine_config. With rope_fusion "te" the rope's attention factor is folded into
    softmax_scale and TE's fused RoPE is on where TE is importable."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megamid.model.engine_config import engine_kwargs
    from megamid.rope import model_rope_scaling
    from megamid.rope.fusion import folded_softmax_scale

    cuda = torch.cuda.is_available()
    backends = resolve_backends(model=model) if backends is None else backends
    te_rope = backends.rope_fusion == "te"
    # without TE (CPU tests of the fold) megatron's unfused path applies the same unscaled rotation
    kwargs = engine_kwargs(model, parallel, recompute, fp8, cuda=cuda, te=cuda and backends.spec == "te",
                           tp_comm_overlap=parallel.tp_comm_overlap,
                           apex=cuda and apex_kernels(), rope_fusion=te_rope and te_available())
    if te_rope:
        factor = model_rope_scaling(model, model.rope, "model.rope").attention_factor
        kwargs["softmax_scale"] = folded_softmax_scale(model.head_dim, factor)
    return TransformerConfig(**kwargs)


def layer_spec(model: ModelConfig, backends: ModelBackends):
    """megatron's layer spec for `backends.spec`, with megamid's core attention (SDPA/FlexAttention with
    context parallelism) where `backends.attention` says so (see megamid.attention), and megamid's fused
    RoPE attention where `backends.rope_fusion` is "megamid"."""
    from megatron.core.models.gpt import gpt_layer_specs

    from megamid.attention import with_core_attention

    if backends.spec == "te":
        spec = gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=model.qk_layernorm)
    else:
        spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization=model.normalization,
                                                        qk_layernorm=model.qk_layernorm)
    spec = with_core_attention(spec, backends.attention)
    if backends.rope_fusion == "megamid":
        from megamid.attention.rope_attention import with_fused_rope
        from megamid.rope import model_rope_scaling

        spec = with_fused_rope(spec, model_rope_scaling(model, model.rope, "model.rope").rotary_dim)
    return spec


def build_gpt_chunks(model: ModelConfig, parallel: ParallelConfig, recompute="none", backends: ModelBackends = None,
                     fp8=None, rope_fusion: str = None) -> list:
    """The GPTModel chunks this rank holds (one per virtual pipeline stage), unwrapped, on device, built
    with `backends` (default: resolve_backends(model=model)). Each chunk's GPTModel carries `.backends`
    and `.rope_fusion`; `rope_fusion` ("te" | "megamid" | "none") overrides the backends' RoPE path.

    Megatron's parallel state must be initialised for `parallel` first."""
    from megatron.core import parallel_state
    from megatron.core.transformer.module import Float16Module

    from megamid.platform import device

    check_layout(model, parallel)
    backends = resolve_backends(model=model) if backends is None else backends
    if rope_fusion is not None:
        backends = replace(backends, rope_fusion=rope_fusion)
    config = transformer_config(model, parallel, recompute, fp8, backends)
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
        set_rope(gpt, model.rope, fusion=backends.rope_fusion)
        gpt.backends, gpt.rope_fusion = backends, backends.rope_fusion
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


def wrap_ddp(chunks: list, parallel: ParallelConfig, fp8=None, overlap_param_gather: bool = False) -> list:
    """Megatron DDP around each chunk (engine_config.ddp_kwargs: grad-reduce overlap on CUDA). The
    param-gather overlap stays off unless asked for: its caller must engine_config.force_param_sync
    before every save and eval, and give the optimizer the same setting."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from megamid.model.engine_config import ddp_kwargs

    ddp_config = DistributedDataParallelConfig(**ddp_kwargs(parallel, fp8, cuda=torch.cuda.is_available(),
                                                            overlap_param_gather=overlap_param_gather))
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
