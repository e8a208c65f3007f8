"""Whole-state-dict HF <-> megatron mapping for tests, composed from the package's per-layer mapping
(megamid.checkpoint.hf_llama), which is what conversion uses: a round trip through it checks the table."""

from megamid.checkpoint.hf_llama import (
    check_llama_like,
    hf_layer_to_megatron,
    megatron_layer_to_hf,
)
from megamid.config.base import fail


def local_name(key: str) -> str:
    """TE spec keys (norms fused into the following linear) -> local spec keys."""
    return (key.replace("self_attention.linear_qkv.layer_norm_weight", "input_layernorm.weight")
               .replace("mlp.linear_fc1.layer_norm_weight", "pre_mlp_layernorm.weight"))


def megatron_to_hf(state, model_cfg) -> dict:
    """A GPTModel state dict (local or TE spec names, TP=1) -> HF Llama / Qwen2 names.

    Tied embeddings write no lm_head.weight (as HF's save_pretrained). Unknown keys raise."""
    check_llama_like(model_cfg)
    state = {local_name(k): v for k, v in state.items() if not k.endswith("_extra_state")}
    out = {"model.embed_tokens.weight": state.pop("embedding.word_embeddings.weight"),
                              "model.norm.weight": state.pop("decoder.final_layernorm.weight")}
    if model_cfg.tie_embeddings:
        state.pop("output_layer.weight", None)  # PP>1 checkpoints keep a copy on the last stage
    else:
        out["lm_head.weight"] = state.pop("output_layer.weight")
    for i in range(model_cfg.num_layers):
        src = f"decoder.layers.{i}."
        layer = {k[len(src):]: state.pop(k) for k in [k for k in state if k.startswith(src)]}
        out.update({f"model.layers.{i}.{k}": v for k, v in megatron_layer_to_hf(layer, model_cfg).items()})
        state.update({src + k: v for k, v in layer.items()})  # unknown: reported below
    if state:
        fail("state", sorted(state)[:5], "keys megatron_to_hf does not know (TP=1 Llama-style GPTModel expected)")
    return out


def hf_to_megatron(state, model_cfg) -> dict:
    """HF Llama / Qwen2 names -> a GPTModel state dict (local spec names, TP=1); inverse of megatron_to_hf.

    With tied embeddings an lm_head.weight (HF's state_dict() has one) is dropped. Unknown keys raise."""
    check_llama_like(model_cfg)
    state = dict(state)
    out = {"embedding.word_embeddings.weight": state.pop("model.embed_tokens.weight")}
    lm_head = state.pop("lm_head.weight", None)
    if not model_cfg.tie_embeddings:
        if lm_head is None:
            fail("lm_head.weight", None, "required unless model.tie_embeddings is true")
    for i in range(model_cfg.num_layers):
        src = f"model.layers.{i}."
        layer = {k[len(src):]: state.pop(k) for k in [k for k in state if k.startswith(src)]}
        out.update({f"decoder.layers.{i}.{k}": v for k, v in hf_layer_to_megatron(layer, model_cfg, src).items()})
    out["decoder.final_layernorm.weight"] = state.pop("model.norm.weight")
    if not model_cfg.tie_embeddings:
        out["output_layer.weight"] = lm_head
    if state:
        fail("state", sorted(state)[:5], "keys hf_to_megatron does not know (a Llama / Qwen2 checkpoint expected)")
    return out
