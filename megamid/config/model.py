"""The model: a Llama-style decoder (RMSNorm, SwiGLU, RoPE, GQA), as Megatron-Core builds it."""

from dataclasses import dataclass, field
from typing import Optional

from megamid.config.base import check_choice, check_divisible, check_positive, check_range, fail

DTYPES = ("fp32", "bf16", "fp16")
# auto: te with Transformer Engine, megamid with CUDA and no TE, none on CPU (megamid.rope.fusion decides)
ROPE_FUSIONS = ("auto", "te", "megamid", "none")


@dataclass(frozen=True)
class ModelConfig:
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    vocab_size: int
    ffn_hidden_size: Optional[int] = None          # default: 4 * hidden_size (8/3 * hidden for swiglu, rounded)
    num_query_groups: Optional[int] = None         # GQA key/value heads; None = one per attention head
    kv_channels: Optional[int] = None              # head dim; default hidden_size // num_attention_heads
    max_position_embeddings: int = 4096
    rope: dict = field(default_factory=lambda: {"type": "default", "theta": 10000.0})
    tie_embeddings: bool = False
    dtype: str = "fp32"
    normalization: str = "RMSNorm"
    norm_epsilon: float = 1e-5
    activation: str = "swiglu"
    add_bias_linear: bool = False
    add_qkv_bias: bool = False                     # Qwen2 style
    qk_layernorm: bool = False                     # Qwen3 style: RMSNorm over each query / key head before RoPE
    sliding_window: Optional[int] = None           # Mistral style: a query sees itself and the window - 1 keys before it
    init_method_std: float = 0.02
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    rope_fusion: str = "auto"                      # auto | te | megamid | none: who applies RoPE (megamid.rope.fusion)

    def __post_init__(self):
        for name in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size", "max_position_embeddings"):
            check_positive(f"model.{name}", getattr(self, name))
        for name in ("ffn_hidden_size", "num_query_groups", "kv_channels", "sliding_window"):
            if getattr(self, name) is not None:
                check_positive(f"model.{name}", getattr(self, name))
        if self.kv_channels is None:
            check_divisible("model.hidden_size", self.hidden_size, self.num_attention_heads,
                            "model.num_attention_heads")
        if self.num_query_groups is not None:
            check_divisible("model.num_attention_heads", self.num_attention_heads, self.num_query_groups,
                            "model.num_query_groups")
        check_choice("model.dtype", self.dtype, DTYPES)
        check_choice("model.rope_fusion", self.rope_fusion, ROPE_FUSIONS)
        check_choice("model.normalization", self.normalization, ("RMSNorm", "LayerNorm"))
        check_choice("model.activation", self.activation, ("swiglu", "gelu"))
        check_positive("model.norm_epsilon", self.norm_epsilon)
        check_positive("model.init_method_std", self.init_method_std)
        for name in ("attention_dropout", "hidden_dropout"):
            check_range(f"model.{name}", getattr(self, name), 0.0, 1.0)
        if not isinstance(self.rope, dict) or "type" not in self.rope:
            fail("model.rope", self.rope, "a mapping with a 'type' key, e.g. {type: default, theta: 10000}")
        # the rope's own fields are validated by megamid.rope when the recipe is planned (config imports no rope math)

    @property
    def torch_dtype(self):
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.dtype]

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def query_groups(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def ffn_size(self) -> int:
        if self.ffn_hidden_size is not None:
            return self.ffn_hidden_size
        if self.activation == "swiglu":
            return 256 * ((int(8 * self.hidden_size / 3) + 255) // 256)
        return 4 * self.hidden_size

    def num_parameters(self) -> int:
        """Parameter count, biases and norms included (embedding and output counted separately unless tied)."""
        h, f, d = self.hidden_size, self.ffn_size, self.head_dim
        attn = h * d * (self.num_attention_heads + 2 * self.query_groups) + self.num_attention_heads * d * h
        mlp = h * f * (3 if self.activation == "swiglu" else 2)
        if self.add_qkv_bias or self.add_bias_linear:
            attn += d * (self.num_attention_heads + 2 * self.query_groups)
        if self.add_bias_linear:
            attn += h
            mlp += f * (2 if self.activation == "swiglu" else 1) + h
        per_layer = attn + mlp + 2 * h + (2 * d if self.qk_layernorm else 0)
        emb = self.vocab_size * h
        return self.num_layers * per_layer + h + emb * (1 if self.tie_embeddings else 2)


# Fields that decide the weights' shapes: a base or resumed checkpoint must match them (rope, dtype and
# dropout may change between checkpoints).
SHAPE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "query_groups", "head_dim", "ffn_size",
                "vocab_size", "tie_embeddings", "normalization", "activation", "add_bias_linear", "add_qkv_bias",
                "qk_layernorm")


def model_differences(a: ModelConfig, b: ModelConfig, names=None) -> list:
    """[(field, a's value, b's value)] where two model configs differ (all dataclass fields by default;
    `names` may name properties such as ffn_size, which resolve defaults)."""
    import dataclasses

    names = names or [f.name for f in dataclasses.fields(ModelConfig)]
    return [(n, getattr(a, n), getattr(b, n)) for n in names if getattr(a, n) != getattr(b, n)]
