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
    fusions on with CUDA, see engine_config."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megamid.model.engine_config import engine_kwargs

    cuda = torch.cuda.is_available()
    backends = resolve_backends() if backends is None else backends
    return TransformerConfig(**engine_kwargs(model, parallel, recompute, fp8, cuda=cuda,
                                             te=cuda and backends.spec == "te", apex=cuda and apex_kernels()))


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


def build_gpt_chunks(model: ModelConfig, parallel: ParallelConfig, recompute="none", backends: ModelBackends = None,
                     fp8=None) -> list:
    """The GPTModel chunks this rank holds (one per virtual pipeline stage), unwrapped, on device, built
    with `backends` (default: resolve_backends()). Each chunk's GPTModel carries `.backends`.

    Megatron's parallel state must be initialised for `parallel` first."""
    from megatron.core import parallel_state
    from megatron.core.transformer.module import Float16Module

    from megamid.platform import device

    check_layout(model, parallel)
    backends = resolve_backends() if backends is None else backends
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
