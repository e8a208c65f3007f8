"""python tests/rope/fusion_driver.py [CASE ...]

Test driver for tests/rope/test_rope_fusion.py (megatron in its own process: megamid's CPU mode is
process-global). For every rope case of hf_logits_driver.py, one tiny fp32 GPTModel per RoPE path
(model.rope_fusion none / te / megamid) with the same weights, and the transformers model they convert
to; prints `FUSION_RESULT {json}` with per case and path the max |logit difference| against the
unfused path and against HF, the softmax scale each path's attention layers hold, and, for a phase
change (set_rope to another scaling), the same after the switch. On CPU "te" is the fold without TE's
kernel: attention factor in softmax_scale, megatron's unfused rotation with cos/sin unscaled.
"""

import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the helpers package
from hf_logits_driver import BASE, CASES, SEQ_LENS, hf_model, randomize  # noqa: E402

PATHS = ("none", "te", "megamid")
# Qwen3-style q/k norms sit between the QKV projection and RoPE: megamid's path rotates the split Q and K
EXTRA = {"yarn_qk_layernorm": dict(CASES["yarn"], qk_layernorm=True)}
PHASE_SWITCH = {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16, "beta_fast": 16.0}


def core_scales(gpt):
    """The softmax scale every core attention uses (megatron's DotProductAttention or megamid's)."""
    return sorted({float(m.core_attention.softmax_scale) for m in gpt.modules() if hasattr(m, "core_attention")})


def logits(gpt, cfg, seed, grad=False):
    """{seq_len: logits on the CPU} for the same random tokens as the HF side (inputs on the model's device)."""
    dev = next(gpt.parameters()).device
    gen = torch.Generator().manual_seed(seed + 1)
    out = {}
    for seq in SEQ_LENS:
        tokens = torch.randint(0, cfg.vocab_size, (2, seq), generator=gen).to(dev)
        positions = torch.arange(seq, device=dev).expand(2, seq)
        with torch.set_grad_enabled(grad):
            result = gpt(tokens, positions, None)
        out[seq] = result if grad else result.float().cpu()
    return out


def run_case(name, spec, seed):
    from helpers.hf_state import megatron_to_hf
    from megamid.config import ConfigError, ModelConfig, ParallelConfig
    from megamid.model.builder import build_gpt_chunks, set_rope
    from megamid.rope.fusion import set_softmax_scale

    cfg = ModelConfig(**BASE, **spec)
    models, result = {}, {}
    for path in PATHS:
        try:
            gpt = build_gpt_chunks(cfg, ParallelConfig(), rope_fusion=path)[0].eval()
        except ConfigError as exc:
            result[path] = {"error": str(exc)}
            continue
        randomize(gpt, seed)
        models[path] = gpt
    base = logits(models["none"], cfg, seed)
    hf_out = base  # no HF twin for q/k norms in hf_logits_driver: compared with the unfused path only
    if name in CASES:
        state = {k: v.cpu() for k, v in models["none"].state_dict().items() if torch.is_tensor(v)}
        hf = hf_model(cfg, megatron_to_hf(state, cfg), cfg.rope)
        gen = torch.Generator().manual_seed(seed + 1)
        hf_out = {}
        for seq in SEQ_LENS:
            tokens = torch.randint(0, cfg.vocab_size, (2, seq), generator=gen)
            with torch.no_grad():
                hf_out[seq] = hf(input_ids=tokens, position_ids=torch.arange(seq).expand(2, seq)).logits
    head_dim = cfg.head_dim
    for path, gpt in models.items():
        got = logits(gpt, cfg, seed)
        result[path] = {
            "vs_none": max(float((got[s] - base[s]).abs().max()) for s in SEQ_LENS),
            "vs_hf": max(float((got[s] - hf_out[s]).abs().max()) for s in SEQ_LENS),
            "core_scales": core_scales(gpt),
            "config_scale": gpt.config.softmax_scale,
            "plain_scale": 1.0 / math.sqrt(head_dim),
            "attention_factor": gpt.rotary_pos_emb.attention_factor,
            "attention_modules": sorted({type(m).__name__ for m in gpt.modules() if hasattr(m, "core_attention")}),
            "core_modules": sorted({type(m.core_attention).__name__ for m in gpt.modules()
                                    if hasattr(m, "core_attention")}),
        }
    # a phase change: every path switches to another scaling and must still agree with the unfused one
    if "partial_rotary_factor" not in cfg.rope:
        switched = {}
        for path, gpt in models.items():
            before = gpt.config.softmax_scale
            set_rope(gpt, PHASE_SWITCH)
            switched[path] = logits(gpt, cfg, seed)
            result[path]["after_switch_core_scales"] = core_scales(gpt)
            result[path]["after_switch_factor"] = gpt.rotary_pos_emb.attention_factor
            if path == "te":  # the control: layers left at the old scale would be visibly wrong
                after = gpt.config.softmax_scale
                set_softmax_scale(gpt, before)
                stale = logits(gpt, cfg, seed)
                set_softmax_scale(gpt, after)
                result[path]["stale_scale_diff"] = max(float((stale[s] - switched["none"][s]).abs().max())
                                                       for s in SEQ_LENS)
        for path in models:
            result[path]["after_switch_vs_none"] = max(
                float((switched[path][s] - switched["none"][s]).abs().max()) for s in SEQ_LENS)
    return result


def thd_rotation(seed=11):
    """RopeFusedSelfAttention on packed documents (qkv_format "thd"): its rotated Q and K equal the
    reference rotation of megatron's split Q and K with positions restarting at every document."""
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.transformer.attention import SelfAttention

    from megamid.config import ModelConfig, ParallelConfig
    from megamid.kernels.rope_reference import rope_reference
    from megamid.model.builder import build_gpt_chunks

    cfg = ModelConfig(**BASE, **CASES["longrope"])
    gpt = build_gpt_chunks(cfg, ParallelConfig(), rope_fusion="megamid")[0].eval()
    randomize(gpt, seed)
    layer = gpt.decoder.layers[0].self_attention
    dev = next(gpt.parameters()).device
    cu = torch.tensor([0, 5, 17, 18, 40], dtype=torch.int32, device=dev)
    packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=22, max_seqlen_kv=22)
    hidden = torch.randn(40, 1, cfg.hidden_size, generator=torch.Generator().manual_seed(seed)).to(dev)
    rope_inputs = gpt.rotary_pos_emb(22, packed_seq=True)
    layer._rope_call = (rope_inputs, packed)
    with torch.no_grad():
        q, k, v = layer.get_query_key_value_tensors(hidden)
        layer._rope_call = None
        q0, k0, v0 = SelfAttention.get_query_key_value_tensors(layer, hidden)
        inv_freq, factor = gpt.rotary_pos_emb.rope.compute(22)
        want_q, want_k = rope_reference(q0.squeeze(1), k0.squeeze(1), inv_freq, factor, layout="thd", cu_seqlens=cu)
    return max(float((q.squeeze(1) - want_q).abs().max()), float((k.squeeze(1) - want_k).abs().max()),
               float((v - v0).abs().max()))


def gradients(seed=7, recompute="none"):
    """megamid's kernel (CPU loop) in the backward pass: parameter gradients equal the unfused path's
    (with full recompute, megatron re-runs each layer from the saved rotary_pos_emb: the packed inputs)."""
    from megamid.config import ModelConfig, ParallelConfig
    from megamid.model.builder import build_gpt_chunks

    cfg = ModelConfig(**BASE, **CASES["yarn"])
    grads = {}
    for path in ("none", "megamid"):
        gpt = build_gpt_chunks(cfg, ParallelConfig(), recompute, rope_fusion=path)[0]
        randomize(gpt, seed)
        out = logits(gpt, cfg, seed, grad=True)
        sum(o.float().square().mean() for o in out.values()).backward()
        grads[path] = {n: p.grad.clone() for n, p in gpt.named_parameters()}
    return max(float((grads["none"][n] - grads["megamid"][n]).abs().max() / (grads["none"][n].abs().max() + 1e-30))
               for n in grads["none"])


def bf16_errors(seed=9):
    """bf16 models (Float16Module) with the weights of an fp32 one: each path's max logit error against
    the fp32 model's, relative to its largest logit (megamid's kernel rounds once, megatron's path
    rounds cos/sin and the products to bf16, so megamid's should be no larger)."""
    from megamid.config import ModelConfig, ParallelConfig
    from megamid.model.builder import build_gpt_chunks, unwrap

    spec = dict(BASE, **CASES["longrope"])
    fp32 = build_gpt_chunks(ModelConfig(**spec), ParallelConfig(), rope_fusion="none")[0].eval()
    randomize(fp32, seed)
    want = logits(fp32, ModelConfig(**spec), seed)
    errors = {}
    for path in ("none", "megamid"):
        cfg = ModelConfig(**spec, dtype="bf16")
        gpt = build_gpt_chunks(cfg, ParallelConfig(), rope_fusion=path)[0].eval()
        with torch.no_grad():
            for (name, p), (_, p32) in zip(unwrap(gpt).named_parameters(), fp32.named_parameters()):
                p.copy_(p32)
        got = logits(gpt, cfg, seed)
        errors[path] = max(float((got[s] - want[s]).abs().max() / want[s].abs().max()) for s in SEQ_LENS)
    return errors


def main(names):
    from megamid.platform import Layout, init_model_parallel, set_seed, shutdown

    init_model_parallel(Layout())
    set_seed(0)
    cases = {**CASES, **EXTRA}
    results = {name: run_case(name, cases[name], seed) for seed, name in enumerate(names or cases)}
    results["_grad_rel_diff"] = gradients()
    if os.environ.get("MEGAMID_ATTENTION") != "megatron":  # megatron's attention builds its default mask on
        # "cuda" inside recompute, outside megamid's CPU mode: a CPU-only limit of that backend
        results["_recompute_grad_rel_diff"] = gradients(recompute="full")
    results["_bf16_errors"] = bf16_errors()
    results["_thd_max_diff"] = thd_rotation()
    print("FUSION_RESULT " + json.dumps(results), flush=True)
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
