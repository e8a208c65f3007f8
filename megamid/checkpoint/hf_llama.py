"""Megatron-Core GPT weights <-> transformers Llama / Mistral / Qwen2 / Qwen3 weights, and the config.json.

Pure functions of (one decoder layer's weights, ModelConfig), no megatron imports, no I/O: conversion
maps layer by layer (`hf_layer_to_megatron`, `megatron_layer_to_hf`, one table `layer_weight_sources`),
and a round trip returns every tensor bit for bit (megatron's `_extra_state` entries are not weights).

The layouts that differ:
- attention: megatron's fused `linear_qkv` holds, for each query group g in turn, that group's
  num_attention_heads // num_query_groups query heads, then its key head, then its value head
  (rows of kv_channels each); HF has separate q_proj / k_proj / v_proj, heads in order, and query head
  i reads key/value head i // (heads per group) -- the same grouping, so only rows move.
- MLP: megatron's `linear_fc1` is [gate; up] (SwiGLU: silu of the first half times the second);
  HF has gate_proj and up_proj.
- Qwen3's per-head q_norm / k_norm are megatron's q_layernorm / k_layernorm (RMSNorm over head_dim,
  applied before RoPE in both).
- RoPE needs no permutation: megatron's non-interleaved rotary and HF's rotate_half both pair
  channel j with channel j + rotary_dim / 2.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from megamid.config.base import fail
from megamid.config.model import ModelConfig

_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def layer_weight_sources(model_cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """The decoder-layer weights this model has: megatron name (after `decoder.layers.{i}.`) -> the HF
    names (after `model.layers.{i}.`) it is made of, in HF's order. The one table both directions use."""
    qkv_bias = model_cfg.add_qkv_bias or model_cfg.add_bias_linear
    table: dict[str, tuple[str, ...]] = {"input_layernorm.weight": ("input_layernorm.weight",)}
    for suffix in ("weight", "bias") if qkv_bias else ("weight",):
        table[f"self_attention.linear_qkv.{suffix}"] = tuple(f"self_attn.{x}_proj.{suffix}" for x in "qkv")
    if model_cfg.qk_layernorm:
        table["self_attention.q_layernorm.weight"] = ("self_attn.q_norm.weight",)
        table["self_attention.k_layernorm.weight"] = ("self_attn.k_norm.weight",)
    biases = ("weight", "bias") if model_cfg.add_bias_linear else ("weight",)
    for suffix in biases:
        table[f"self_attention.linear_proj.{suffix}"] = (f"self_attn.o_proj.{suffix}",)
    table["pre_mlp_layernorm.weight"] = ("post_attention_layernorm.weight",)
    for suffix in biases:
        table[f"mlp.linear_fc1.{suffix}"] = (f"mlp.gate_proj.{suffix}", f"mlp.up_proj.{suffix}")
        table[f"mlp.linear_fc2.{suffix}"] = (f"mlp.down_proj.{suffix}",)
    return table


def _hf_layer_shapes(model_cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every HF layer weight name (after `model.layers.{i}.`) a Llama-style layer can have."""
    h, d, f = model_cfg.hidden_size, model_cfg.head_dim, model_cfg.ffn_size
    rows = {"q": model_cfg.num_attention_heads * d, "k": model_cfg.query_groups * d, "v": model_cfg.query_groups * d}
    shapes = {"input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
              "self_attn.q_norm.weight": (d,), "self_attn.k_norm.weight": (d,),
              "self_attn.o_proj.weight": (h, rows["q"]), "self_attn.o_proj.bias": (h,),
              "mlp.down_proj.weight": (h, f), "mlp.down_proj.bias": (h,)}
    for x, r in rows.items():
        shapes.update({f"self_attn.{x}_proj.weight": (r, h), f"self_attn.{x}_proj.bias": (r,)})
    for x in ("gate", "up"):
        shapes.update({f"mlp.{x}_proj.weight": (f, h), f"mlp.{x}_proj.bias": (f,)})
    return shapes


def _from_hf(megatron_name: str, parts: list[Tensor], model_cfg: ModelConfig) -> Tensor:
    if megatron_name.startswith("self_attention.linear_qkv."):
        return fuse_qkv(*parts, model_cfg)
    if megatron_name.startswith("mlp.linear_fc1."):
        return torch.cat(parts, dim=0)  # megatron's SwiGLU fc1 is [gate; up]
    return parts[0]


def _to_hf(megatron_name: str, tensor: Tensor, model_cfg: ModelConfig) -> list[Tensor]:
    if megatron_name.startswith("self_attention.linear_qkv."):
        return list(split_qkv(tensor, model_cfg))
    if megatron_name.startswith("mlp.linear_fc1."):
        return [t.contiguous() for t in tensor.chunk(2, dim=0)]
    return [tensor]


def check_llama_like(model_cfg: ModelConfig) -> None:
    """Raise ConfigError unless the model is a Llama-style decoder HF's Llama / Qwen2 can express."""
    if model_cfg.normalization != "RMSNorm":
        fail("model.normalization", model_cfg.normalization, "Llama / Qwen2 conversion needs RMSNorm")
    if model_cfg.activation != "swiglu":
        fail("model.activation", model_cfg.activation, "Llama / Qwen2 conversion needs swiglu")


# ---- fused <-> split rows ------------------------------------------------------------------------
def split_qkv(qkv: Tensor, model_cfg: ModelConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Megatron's grouped linear_qkv weight [rows, hidden] or bias [rows] -> HF (q, k, v)."""
    heads, groups, d = model_cfg.num_attention_heads, model_cfg.query_groups, model_cfg.head_dim
    per_group = heads // groups
    expected = (heads + 2 * groups) * d
    if qkv.shape[0] != expected:
        fail("linear_qkv", tuple(qkv.shape), f"expected {expected} rows = (heads {heads} + 2 x groups "
             f"{groups}) x kv_channels {d}")
    grouped = qkv.reshape(groups, (per_group + 2) * d, *qkv.shape[1:])
    q, k, v = grouped.split([per_group * d, d, d], dim=1)
    return (q.reshape(heads * d, *qkv.shape[1:]).contiguous(), k.reshape(groups * d, *qkv.shape[1:]).contiguous(),
            v.reshape(groups * d, *qkv.shape[1:]).contiguous())


def fuse_qkv(q: Tensor, k: Tensor, v: Tensor, model_cfg: ModelConfig) -> Tensor:
    """HF (q, k, v) weights or biases -> megatron's grouped linear_qkv (inverse of split_qkv)."""
    heads, groups, d = model_cfg.num_attention_heads, model_cfg.query_groups, model_cfg.head_dim
    for name, t, rows in (("q_proj", q, heads * d), ("k_proj", k, groups * d), ("v_proj", v, groups * d)):
        if t.shape[0] != rows:
            fail(name, tuple(t.shape), f"expected {rows} rows (heads x head_dim)")
    rest = q.shape[1:]
    grouped = torch.cat([q.reshape(groups, (heads // groups) * d, *rest), k.reshape(groups, d, *rest),
                         v.reshape(groups, d, *rest)], dim=1)
    return grouped.reshape((heads + 2 * groups) * d, *rest).contiguous()


# ---- one decoder layer ---------------------------------------------------------------------------
def hf_layer_to_megatron(layer: dict[str, Tensor], model_cfg: ModelConfig, where: str = "",
                         only: tuple[str, ...] | None = None) -> dict[str, Tensor]:
    """One decoder layer: HF names after `model.layers.{i}.` -> megatron names after `decoder.layers.{i}.`.

    Consumes `layer` (pops what it maps). Converts every weight of the layer, or the megatron weights
    named in `only` (then `layer` needs just their sources); a missing source, or a key left over when
    converting the whole layer, raises naming it (`where` prefixes the names)."""
    table = layer_weight_sources(model_cfg)
    out: dict[str, Tensor] = {}
    for megatron_name in only or table:
        sources = table.get(megatron_name)
        if sources is None:
            fail("decoder.layers.N." + megatron_name, None, f"not a weight of this model ({', '.join(table)})")
        missing = [where + s for s in sources if s not in layer]
        if missing:
            fail(missing[0], None, "missing from the checkpoint")
        out[megatron_name] = _from_hf(megatron_name, [layer.pop(s) for s in sources], model_cfg)
    if layer and only is None:
        fail("state", sorted(where + k for k in layer)[:5], "keys the HF -> megatron mapping does not know (a Llama / Qwen2 / "
             "Qwen3 checkpoint of this config expected)")
    return out


def megatron_layer_to_hf(layer: dict[str, Tensor], model_cfg: ModelConfig) -> dict[str, Tensor]:
    """One decoder layer: megatron names after `decoder.layers.{i}.` -> HF names after `model.layers.{i}.`.

    Converts the weights present; consumes `layer`, and what it leaves is unknown to this model."""
    out: dict[str, Tensor] = {}
    for megatron_name, sources in layer_weight_sources(model_cfg).items():
        if megatron_name in layer:
            out.update(zip(sources, _to_hf(megatron_name, layer.pop(megatron_name), model_cfg)))
    return out


# ---- config.json -> ModelConfig, and the weights it implies --------------------------------------
# architectures whose weights are Llama's (Mistral), Llama's plus q/k/v biases (Qwen2) or plus per-head
# q/k RMSNorms (Qwen3)
HF_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
                    "Qwen3ForCausalLM": "qwen3"}
_DTYPES_FROM_HF = {v: k for k, v in _DTYPE_NAMES.items()}


def model_config_from_hf(config: Mapping[str, Any]) -> ModelConfig:
    """A config.json (dict) of a Llama / Mistral / Qwen2 / Qwen3 model -> megamid's ModelConfig.

    Errors name the config.json key, its value and what converts."""
    from megamid.rope import RopeScaling

    archs = config.get("architectures") or []
    arch = archs[0] if len(archs) == 1 else None
    if arch not in HF_ARCHITECTURES:
        fail("config.json architectures", archs, f"expected one of {', '.join(HF_ARCHITECTURES)}")
    if config.get("hidden_act", "silu") != "silu":
        fail("config.json hidden_act", config.get("hidden_act"), "only silu (SwiGLU) converts")
    add_qkv_bias = add_bias_linear = False
    family = HF_ARCHITECTURES[arch]
    if family == "qwen3" and config.get("attention_bias", False):
        # Qwen3's attention_bias also biases o_proj but not the MLP: megatron has no such combination
        fail("config.json attention_bias", True, "Qwen3 converts only without attention biases (megatron "
             "biases q/k/v alone or every linear layer)")
    if family == "qwen2":
        add_qkv_bias = True  # Qwen2 always has q/k/v biases and no others
    elif family == "llama":
        attention_bias, mlp_bias = bool(config.get("attention_bias", False)), bool(config.get("mlp_bias", False))
        if attention_bias != mlp_bias:
            # megatron's add_bias_linear biases q/k/v, o, and both MLP projections together
            fail("config.json attention_bias", attention_bias, f"must equal mlp_bias={mlp_bias} to convert "
                 "(megatron biases every linear layer or none)")
        add_bias_linear = attention_bias
    rope = RopeScaling.from_hf(config)
    if rope.partial_rotary_factor != 1.0:
        fail("config.json partial_rotary_factor", rope.partial_rotary_factor, "Llama / Mistral / Qwen2 rotate "
             "whole heads; only 1.0 converts")
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    if dtype not in _DTYPES_FROM_HF:
        fail("config.json dtype", dtype, f"expected one of {', '.join(_DTYPES_FROM_HF)}")
    heads = config["num_attention_heads"]
    return ModelConfig(
        num_layers=config["num_hidden_layers"], hidden_size=config["hidden_size"], num_attention_heads=heads,
        vocab_size=config["vocab_size"], ffn_hidden_size=config["intermediate_size"],
        num_query_groups=config.get("num_key_value_heads") or heads, kv_channels=rope.head_dim,
        max_position_embeddings=config.get("max_position_embeddings", 2048), rope=rope.to_dict(),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)), dtype=_DTYPES_FROM_HF[dtype],
        norm_epsilon=config.get("rms_norm_eps", 1e-6), add_bias_linear=add_bias_linear, add_qkv_bias=add_qkv_bias,
        qk_layernorm=family == "qwen3", sliding_window=_sliding_window(config, family)[0],
        init_method_std=config.get("initializer_range", 0.02), attention_dropout=config.get("attention_dropout", 0.0))


def _layer_types(config: Mapping[str, Any]) -> list[str]:
    """Qwen2 / Qwen3's per-layer attention kinds: config.json's layer_types, else as transformers derives
    them (sliding from layer max_window_layers on, when use_sliding_window)."""
    layers = config["num_hidden_layers"]
    if config.get("layer_types"):
        return list(config["layer_types"])
    start = config.get("max_window_layers", layers)
    return ["sliding_attention" if config.get("use_sliding_window") and i >= start else "full_attention"
            for i in range(layers)]


def _sliding_window(config: Mapping[str, Any], family: str) -> tuple[int | None, list[str]]:
    """(model.sliding_window, warnings): Mistral's window applies to every layer; Qwen2 / Qwen3 windows
    convert when every layer uses one (or none does); a mix of windowed and full layers does not."""
    window = config.get("sliding_window")
    if not window or family == "llama":
        return None, []
    if family == "mistral":
        return int(window), []
    kinds = set(_layer_types(config)) if config.get("use_sliding_window") else {"full_attention"}
    if kinds == {"sliding_attention"}:
        return int(window), []
    if kinds == {"full_attention"}:
        return None, []
    return None, [f"config.json sliding_window={window} on some layers only (layer_types / max_window_layers): "
                  "megamid's model uses one window for all layers or none, so these layers attend over the whole "
                  f"sequence and match the HF model only for sequences of at most {window} tokens"]


def attention_window_notes(config: Mapping[str, Any]) -> list[str]:
    """Warnings for what the conversion cannot keep: a sliding window on some layers only."""
    arch = (config.get("architectures") or [""])[0]
    return _sliding_window(config, HF_ARCHITECTURES.get(arch, "llama"))[1]


def hf_weight_shapes(model_cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every HF weight name the model has, with its shape, in the order the importer reads them
    (embedding, layers, final norm, lm_head)."""
    v, h = model_cfg.vocab_size, model_cfg.hidden_size
    layer_shapes = _hf_layer_shapes(model_cfg)
    names = [s for sources in layer_weight_sources(model_cfg).values() for s in sources]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for i in range(model_cfg.num_layers):
        shapes.update({f"model.layers.{i}.{n}": layer_shapes[n] for n in names})
    shapes["model.norm.weight"] = (h,)
    if not model_cfg.tie_embeddings:
        shapes["lm_head.weight"] = (v, h)
    return shapes


# ---- config.json ---------------------------------------------------------------------------------
def hf_config(model_cfg: ModelConfig, rope_dict: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """config.json for transformers' LlamaForCausalLM, MistralForCausalLM (a sliding window, no biases),
    Qwen2ForCausalLM (only q/k/v have biases) or Qwen3ForCausalLM (q/k layernorms, no biases).

    rope_dict (default model_cfg.rope; a later phase may use another) goes through `RopeScaling.to_hf`,
    whose top-level keys win: dynamic NTK sets max_position_embeddings to its original length, the
    point past which HF starts scaling. A scaled rope is also written as the legacy `rope_scaling`. `LlamaConfig(**hf_config(...))` builds the model."""
    from megamid.rope import RopeScaling

    check_llama_like(model_cfg)
    rope = RopeScaling.from_dict(dict(model_cfg.rope if rope_dict is None else rope_dict),
                                 head_dim=model_cfg.head_dim)
    if rope.partial_rotary_factor != 1.0:
        # Llama and Qwen2 rotate every channel (their default table ignores the factor)
        fail("rope.partial_rotary_factor", rope.partial_rotary_factor,
             "LlamaForCausalLM / Qwen2ForCausalLM rotate the whole head; only 1.0 converts")
    if model_cfg.qk_layernorm and (model_cfg.add_qkv_bias or model_cfg.add_bias_linear):
        fail("model.qk_layernorm", True, "exports as Qwen3ForCausalLM, which has no q/k/v-only or MLP biases: "
             "set model.add_qkv_bias and model.add_bias_linear to false")
    window = model_cfg.sliding_window
    family = "qwen3" if model_cfg.qk_layernorm else "qwen2" if model_cfg.add_qkv_bias and not model_cfg.add_bias_linear \
        else "mistral" if window is not None else "llama"
    if family == "mistral" and model_cfg.add_bias_linear:
        fail("model.sliding_window", window, "with model.add_bias_linear exports nowhere: Llama has no window and "
             "Mistral no biases")
    out: dict[str, Any] = {
        "architectures": [{"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM",
                           "llama": "LlamaForCausalLM"}[family]],
        "model_type": family,
        "vocab_size": model_cfg.vocab_size,
        "hidden_size": model_cfg.hidden_size,
        "intermediate_size": model_cfg.ffn_size,
        "num_hidden_layers": model_cfg.num_layers,
        "num_attention_heads": model_cfg.num_attention_heads,
        "num_key_value_heads": model_cfg.query_groups,
        "max_position_embeddings": model_cfg.max_position_embeddings,
        "hidden_act": "silu",
        "rms_norm_eps": model_cfg.norm_epsilon,
        "tie_word_embeddings": model_cfg.tie_embeddings,
        "attention_dropout": model_cfg.attention_dropout,
        "initializer_range": model_cfg.init_method_std,
        "dtype": _DTYPE_NAMES[model_cfg.dtype],
    }
    if family == "llama":
        out.update(attention_bias=model_cfg.add_bias_linear, mlp_bias=model_cfg.add_bias_linear)
    elif family == "qwen3":
        out.update(attention_bias=False)
    if family == "mistral":
        out["sliding_window"] = window
    elif family in ("qwen2", "qwen3"):
        # every layer windowed, or none
        out.update(use_sliding_window=window is not None, sliding_window=window, max_window_layers=0,
                   layer_types=["sliding_attention" if window else "full_attention"] * model_cfg.num_layers)
    out.update(rope.to_hf())
    params = out["rope_parameters"]
    if params["rope_type"] != "default":
        # transformers < 5 (and the vLLM releases built on it) read only the legacy `rope_scaling`, and would
        # silently run unscaled RoPE without it; transformers 5 takes either (the same parameters)
        out["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
    return out


__all__ = ["HF_ARCHITECTURES", "attention_window_notes", "check_llama_like", "fuse_qkv", "hf_config",
           "hf_weight_shapes", "layer_weight_sources", "model_config_from_hf", "hf_layer_to_megatron",
           "megatron_layer_to_hf", "split_qkv"]
