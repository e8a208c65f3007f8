"""python tests/rope/hf_logits_driver.py [CASE ...]

Test driver (megatron in its own process: megamid's CPU mode is process-global). For each case (all by
default) builds a tiny fp32 megatron GPTModel with that rope, gives it large random weights (so that
attention is sharp and a wrong rope or mapping moves the logits by O(1)), converts them with
megamid.checkpoint.hf_llama to a transformers model (eager attention) and prints one line
`HF_LOGITS_RESULT {json}`: per case the max |logit difference| at each sequence length, the same
against HF built with plain RoPE (how far a wrong rope would land), and the round-trip check.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the helpers package

SEQ_LENS = (48, 24)  # 48 crosses every switch point below (original lengths of 32), 24 stays short
BASE = dict(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, vocab_size=128,
            ffn_hidden_size=96, max_position_embeddings=128)
LONG = [1.0, 1.3, 2.0, 3.1, 4.5, 6.0, 8.0, 11.0]
SHORT = [1.0, 1.05, 1.1, 1.2, 1.4, 1.6, 1.8, 2.0]
CASES = {
    "default": dict(rope={"type": "default", "theta": 10000.0}),
    "abf": dict(rope={"type": "abf", "theta": 500000.0}),
    "linear": dict(rope={"type": "linear", "factor": 4.0, "theta": 10000.0}),
    "ntk": dict(rope={"type": "ntk", "factor": 4.0, "theta": 10000.0}),
    "dynamic": dict(rope={"type": "dynamic", "factor": 4.0, "original_max_position_embeddings": 32}),
    "yarn": dict(rope={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}),
    "yarn_deepseek": dict(rope={"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16,
                                "mscale": 0.707, "mscale_all_dim": 1.0, "beta_fast": 8.0, "truncate": False}),
    "longrope": dict(rope={"type": "longrope", "short_factor": SHORT, "long_factor": LONG, "factor": 4.0,
                           "original_max_position_embeddings": 32}),
    "llama3": dict(rope={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 32, "theta": 10000.0}),
    "llama3_tied": dict(rope={"type": "llama3", "factor": 8.0, "original_max_position_embeddings": 32},
                        tie_embeddings=True),
    "yarn_qwen2_bias": dict(rope={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                                  "theta": 1000000.0}, add_qkv_bias=True),
    # Llama / Qwen2 rotate whole heads; HF's Phi3 (Phi-4-mini: longrope, 0.75) is the partial-rotary Llama
    "longrope_partial_phi3": dict(rope={"type": "longrope", "short_factor": SHORT[:6], "long_factor": LONG[:6],
                                        "factor": 4.0, "original_max_position_embeddings": 32,
                                        "partial_rotary_factor": 0.75}),
}


def randomize(gpt, seed):
    """Weights ~ N(0, 0.2^2), norm gains 1 + N(0, 0.1^2), biases N(0, 0.1^2): logits of O(1) that
    depend strongly on the attention pattern (megatron's 0.02 init would hide a wrong rope)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if "layernorm" in name:
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_((0.2 if p.dim() == 2 else 0.1) * noise)


def hf_model(cfg, hf_state, rope, config_dict=None):
    """transformers model for cfg with hf_state loaded (eager attention, fp32, eval)."""
    import transformers

    from megamid.checkpoint.hf_llama import hf_config

    if dict(rope).get("partial_rotary_factor", 1.0) != 1.0:
        return phi3_model(cfg, hf_state, rope)
    config_dict = hf_config(cfg, rope)
    arch = config_dict.pop("architectures")[0]
    config_cls = transformers.Qwen2Config if config_dict.pop("model_type") == "qwen2" else transformers.LlamaConfig
    model = getattr(transformers, arch)(config_cls(**config_dict, attn_implementation="eager"))
    load(model, hf_state, cfg.tie_embeddings)
    return model.eval()


def phi3_model(cfg, hf_state, rope):
    """Phi3ForCausalLM: Llama's layers with q/k/v and gate/up fused (in that order), partial rotary."""
    import dataclasses

    from transformers import Phi3Config, Phi3ForCausalLM

    from megamid.checkpoint.hf_llama import hf_config
    from megamid.rope import RopeScaling

    config_dict = hf_config(dataclasses.replace(cfg, rope={"type": "default"}), {"type": "default"})
    for key in ("architectures", "model_type", "attention_bias", "mlp_bias"):
        config_dict.pop(key)
    config_dict.update(RopeScaling.from_dict(dict(rope), head_dim=cfg.head_dim).to_hf())
    config_dict["partial_rotary_factor"] = config_dict["rope_parameters"]["partial_rotary_factor"]
    model = Phi3ForCausalLM(Phi3Config(**config_dict, pad_token_id=None, bos_token_id=None, eos_token_id=None,
                                       attn_implementation="eager"))
    state = dict(hf_state)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        state[p + "self_attn.qkv_proj.weight"] = torch.cat([state.pop(f"{p}self_attn.{x}_proj.weight") for x in "qkv"])
        state[p + "mlp.gate_up_proj.weight"] = torch.cat([state.pop(f"{p}mlp.{x}_proj.weight") for x in ("gate", "up")])
    load(model, state, cfg.tie_embeddings)
    return model.eval()


def load(model, state, tied):
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if tied else set()), (missing, unexpected)
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def max_diff(a, b):
    return float((a - b).abs().max())


def run_case(name, spec, seed):
    from helpers.hf_state import hf_to_megatron, megatron_to_hf
    from megamid.config import ModelConfig, ParallelConfig
    from megamid.model.builder import build_gpt_chunks

    cfg = ModelConfig(**BASE, **spec)
    gpt = build_gpt_chunks(cfg, ParallelConfig())[0].eval()
    randomize(gpt, seed)
    state = {k: v for k, v in gpt.state_dict().items() if torch.is_tensor(v)}
    hf_state = megatron_to_hf(state, cfg)
    back = hf_to_megatron(hf_state, cfg)
    round_trip = set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)

    hf = hf_model(cfg, hf_state, cfg.rope)
    plain = {"type": "default", "theta": cfg.rope.get("theta", 10000.0)}
    if "partial_rotary_factor" in cfg.rope:
        plain["partial_rotary_factor"] = cfg.rope["partial_rotary_factor"]
    hf_plain = hf_model(cfg, hf_state, plain)
    gen = torch.Generator().manual_seed(seed + 1)
    out = {"round_trip_exact": round_trip, "max_abs_diff": {}, "plain_rope_diff": {}, "logit_scale": 0.0}
    for seq in SEQ_LENS:
        tokens = torch.randint(0, cfg.vocab_size, (2, seq), generator=gen)
        positions = torch.arange(seq).expand(2, seq)
        with torch.no_grad():
            ours = gpt(tokens, positions, None)
            theirs = hf(input_ids=tokens, position_ids=positions).logits
            wrong = hf_plain(input_ids=tokens, position_ids=positions).logits
        assert ours.shape == theirs.shape == (2, seq, cfg.vocab_size), (ours.shape, theirs.shape)
        out["max_abs_diff"][seq] = max_diff(ours, theirs)
        out["plain_rope_diff"][seq] = max_diff(wrong, theirs)
        out["logit_scale"] = max(out["logit_scale"], float(theirs.abs().max()))
    if name == "default":  # the mapping's control: q/k/v taken as three contiguous blocks (no grouping)
        heads, groups, d = cfg.num_attention_heads, cfg.query_groups, cfg.head_dim
        naive = dict(hf_state)
        for i in range(cfg.num_layers):
            qkv = state[f"decoder.layers.{i}.self_attention.linear_qkv.weight"]
            for x, t in zip("qkv", qkv.split([heads * d, groups * d, groups * d])):
                naive[f"model.layers.{i}.self_attn.{x}_proj.weight"] = t
        with torch.no_grad():
            theirs = hf_model(cfg, naive, cfg.rope)(input_ids=tokens, position_ids=positions).logits
            out["naive_qkv_diff"] = max_diff(gpt(tokens, positions, None), theirs)
    return out


def main(names):
    from megamid.platform import Layout, init_model_parallel, set_seed, shutdown

    init_model_parallel(Layout())
    set_seed(0)
    results = {name: run_case(name, CASES[name], seed) for seed, name in enumerate(names or CASES)}
    print("HF_LOGITS_RESULT " + json.dumps(results), flush=True)
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
