"""python benchmarks/rope.py [--iters 100] [--shapes 8k,32k,128k,thd] [--e2e-seq-len 32768] [--no-e2e]

Times RoPE on Llama-3-8B heads (Q 32 x 128, K 8 x 128, bf16; YaRN inv_freq and attention factor):
sbhd at 8K, 32K and 128K tokens, and THD with 2,000 documents summing to 64K. One table per shape,
forward and forward+backward: time, GB/s (bytes read + written), fraction of a device-to-device copy of
the same bytes measured in this process, and speed-up over the pure-PyTorch reference, megatron-core's
unfused apply_rotary_pos_emb path with the YaRN mscale, and TE's fused RoPE where TE imports (with
mscale 1, since it refuses any other: the attention factor goes into the softmax scale on that path).
Then the kernel's time per scaling method against plain RoPE, and an end-to-end line: a ~1B Llama
(16 layers, hidden 2048, GQA 16/8) at 32K tokens, forward+backward tokens/s with model.rope_fusion
none / te / megamid. Needs a CUDA device; exits with a message without one.
"""

import argparse
import math
import os
import sys
import warnings

import torch

from cuda_timing import median_ms  # benchmarks/ is on sys.path when a script here runs

HQ, HK, D = 32, 8, 128
SHAPES = {"8k": 8192, "32k": 32768, "128k": 131072, "thd": 65536}


def yarn_inv_freq(factor=16.0, base=500000.0, original=8192, beta_fast=32.0, beta_slow=1.0):
    """(inv_freq float32, attention_factor) by YaRN's formula."""
    inv = 1.0 / base ** (torch.arange(0, D, 2, dtype=torch.float64) / D)

    def dim_of(rotations):
        return D * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = max(math.floor(dim_of(beta_fast)), 0), min(math.ceil(dim_of(beta_slow)), D - 1)
    ramp = ((torch.arange(D // 2, dtype=torch.float64) - low) / max(high - low, 1e-3)).clamp(0, 1)
    inv = (inv / factor) * ramp + inv * (1 - ramp)
    return inv.float(), 0.1 * math.log(factor) + 1.0


def time_us(fn, iters):
    return median_ms(fn, iters) * 1e3


def with_kernels(mode, fn):
    def run():
        os.environ["MEGAMID_KERNELS"] = mode
        return fn()
    return run


def te_rope():
    """TE's apply_rotary_pos_emb, wherever this TE version keeps it; None without TE."""
    for module in ("transformer_engine.pytorch.attention.rope", "transformer_engine.pytorch.attention",
                   "transformer_engine.pytorch.dot_product_attention.rope"):
        try:
            return getattr(__import__(module, fromlist=["apply_rotary_pos_emb"]), "apply_rotary_pos_emb")
        except (ImportError, AttributeError):
            continue
    return None


def _fwd_bwd(fn, inputs):
    """A callable running fn(*inputs) forward and backward (fixed random output gradients, input
    gradients returned rather than accumulated, so every path does the same extra work: none)."""
    grads = [torch.randn_like(o) for o in fn(*inputs)]

    def run():
        return torch.autograd.grad(list(fn(*inputs)), inputs, grads)
    return run


def bench_shape(name, tokens, iters, doc_count=2000):
    from megatron.core.models.common.embeddings import rope_utils

    from megamid.kernels import rope as rope_ops
    from megamid.kernels.rope import apply_rope, apply_rope_fused_qkv

    dev = torch.device("cuda")
    thd = name == "thd"
    inv_freq, mscale = yarn_inv_freq()
    inv_freq = inv_freq.to(dev)
    lead = (tokens,) if thd else (tokens, 1)
    q = torch.randn(*lead, HQ, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(*lead, HK, D, device=dev, dtype=torch.bfloat16)
    qg, kg = q.clone().requires_grad_(), k.clone().requires_grad_()
    kw, cu, max_len = {}, None, tokens
    if thd:
        gen = torch.Generator().manual_seed(0)
        cuts = torch.randperm(tokens - 1, generator=gen)[: doc_count - 1].add(1).sort().values
        cu = torch.cat((torch.tensor([0]), cuts, torch.tensor([tokens]))).to(torch.int32).to(dev)
        max_len = int((cu[1:] - cu[:-1]).max())
        kw = dict(layout="thd", cu_seqlens=cu)
    moved = 2 * (q.nbytes + k.nbytes)  # read and write Q and K

    q_copy, k_copy = torch.empty_like(q), torch.empty_like(k)
    copy_us = time_us(lambda: (q_copy.copy_(q), k_copy.copy_(k)), iters)

    rows = []  # (name, forward us, forward+backward us or None, bytes per pass)
    megamid = lambda a, b: apply_rope(a, b, inv_freq, mscale, **kw)  # noqa: E731
    if rope_ops._cuda is not None:
        rows.append(("megamid kernel", time_us(with_kernels("cuda", lambda: megamid(q, k)), iters),
                     time_us(with_kernels("cuda", _fwd_bwd(megamid, (qg, kg))), iters), moved))
        in_place = lambda: apply_rope(q, k, inv_freq, mscale, inplace=True, **kw)  # noqa: E731
        rows.append(("megamid kernel, in place", time_us(with_kernels("cuda", in_place), iters), None, moved))
        groups = HK
        qkv = torch.randn(*lead, groups, (HQ // groups + 2) * D, device=dev, dtype=torch.bfloat16)
        fused = lambda x: apply_rope_fused_qkv(x, inv_freq, mscale, **kw)  # noqa: E731
        fused_bwd = _fwd_bwd(fused, (qkv.clone().requires_grad_(),))
        rows.append(("megamid fused QKV (+V)", time_us(with_kernels("cuda", lambda: fused(qkv)), iters),
                     time_us(with_kernels("cuda", fused_bwd), iters), 2 * qkv.nbytes))
    else:
        print("  (megamid._cuda is not built: pip install -e . with MEGAMID_BUILD_CUDA=1 to time the kernel)")
    ref_us = time_us(with_kernels("reference", lambda: megamid(q, k)), iters)
    ref_bwd_us = time_us(with_kernels("reference", _fwd_bwd(megamid, (qg, kg))), iters)
    rows.append(("reference (PyTorch)", ref_us, ref_bwd_us, moved))

    angle = torch.outer(torch.arange(max_len + (1 if thd else 0), device=dev, dtype=torch.float32), inv_freq)
    emb = torch.cat((angle, angle), dim=-1)[:, None, None, :]  # Megatron's RotaryEmbedding output, cached
    if thd:
        group = type("Group", (), {"size": lambda self: 1, "rank": lambda self: 0})()
        mcore = lambda a, b: [rope_utils._apply_rotary_pos_emb_thd(  # noqa: E731
            t, cu, emb, mscale=mscale, cp_group=group) for t in (a, b)]
    else:
        mcore = lambda a, b: [rope_utils._apply_rotary_pos_emb_bshd(  # noqa: E731
            t, emb, mscale=mscale) for t in (a, b)]
    mcore_us = time_us(lambda: mcore(q, k), iters)
    mcore_bwd_us = time_us(_fwd_bwd(mcore, (qg, kg)), iters)
    rows.append(("megatron-core unfused (mscale)", mcore_us, mcore_bwd_us, moved))

    te = te_rope()
    te_us = te_bwd_us = None
    if te is not None:
        te_kw = dict(tensor_format="thd", cu_seqlens=cu) if thd else dict(tensor_format="sbhd")
        te_fn = lambda a, b: [te(t, emb, fused=True, **te_kw) for t in (a, b)]  # noqa: E731
        try:
            te_us, te_bwd_us = time_us(lambda: te_fn(q, k), iters), time_us(_fwd_bwd(te_fn, (qg, kg)), iters)
            rows.append(("TE fused (mscale 1)", te_us, te_bwd_us, moved))
        except Exception as exc:  # an older/newer TE signature: report, do not fail the table
            print(f"  TE fused RoPE failed: {exc}")

    title = f"THD, {doc_count} documents, {tokens} tokens" if thd else f"sbhd, s={tokens}, b=1"
    copy_gbs = moved / copy_us / 1e3
    print(f"\n{title}: Q [{tokens}, {HQ}, {D}] + K [{tokens}, {HK}, {D}] bf16, {moved / 1e6:.0f} MB moved; "
          f"D2D copy {copy_us:.1f} us = {copy_gbs:.0f} GB/s")
    print(f"  {'path':32s} {'pass':>8s} {'time us':>9s} {'GB/s':>7s} {'of copy':>8s} {'x ref':>7s} {'x mcore':>8s} "
          f"{'x TE':>6s}")
    for label, fwd, fwd_bwd, nbytes in rows:
        for pass_name, us, base in (("fwd", fwd, (ref_us, mcore_us, te_us)),
                                    ("fwd+bwd", fwd_bwd, (ref_bwd_us, mcore_bwd_us, te_bwd_us))):
            if us is None:
                continue
            moved_pass = nbytes * (2 if pass_name == "fwd+bwd" else 1)
            gbs = moved_pass / us / 1e3
            te_ratio = f"{base[2] / us:6.2f}" if base[2] else f"{'-':>6s}"
            print(f"  {label:32s} {pass_name:>8s} {us:9.1f} {gbs:7.0f} {gbs / copy_gbs:8.2f} {base[0] / us:7.2f} "
                  f"{base[1] / us:8.2f} {te_ratio}")


def bench_scalings(iters, tokens=32768):
    """The kernel's time per scaling method against plain RoPE (the inv_freq and factor differ, the
    work does not: the goal is within 3%)."""
    from megamid.kernels import rope as rope_ops
    from megamid.kernels.rope import apply_rope
    from megamid.rope import RopeScaling

    if rope_ops._cuda is None:
        return
    dev = torch.device("cuda")
    q = torch.randn(tokens, 1, HQ, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(tokens, 1, HK, D, device=dev, dtype=torch.bfloat16)
    ropes = {"default": {"type": "default", "theta": 500000.0}, "linear": {"type": "linear", "factor": 4.0},
             "yarn": {"type": "yarn", "factor": 16.0, "original_max_position_embeddings": 8192},
             "longrope": {"type": "longrope", "factor": 16.0, "original_max_position_embeddings": 8192,
                          "short_factor": [1.0] * (D // 2), "long_factor": [1.0 + i / 8 for i in range(D // 2)]},
             "llama3": {"type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}}
    times = {}
    for name, rope in ropes.items():
        inv_freq, factor = RopeScaling.from_dict(rope, head_dim=D).compute(tokens)
        inv_freq = inv_freq.float().to(dev)
        times[name] = time_us(with_kernels("cuda", lambda: apply_rope(q, k, inv_freq, factor)), iters)
    print(f"\nscaling methods, sbhd s={tokens}: kernel time relative to plain RoPE (goal: within 3%)")
    for name, us in times.items():
        print(f"  {name:10s} {us:9.1f} us  {us / times['default']:6.3f}")


def bench_end_to_end(seq_len, iters):
    """A ~1B Llama, one sequence of seq_len tokens: forward+backward tokens/s per model.rope_fusion path."""
    from megamid.config import ModelConfig, ParallelConfig
    from megamid.kernels import rope as rope_ops
    from megamid.model.builder import build_gpt_chunks, spec_backend
    from megamid.platform import Layout, init_model_parallel, set_seed

    init_model_parallel(Layout())
    set_seed(0)
    cfg = ModelConfig(num_layers=16, hidden_size=2048, num_attention_heads=16, num_query_groups=8,
                      ffn_hidden_size=5632, vocab_size=32000, max_position_embeddings=seq_len, dtype="bf16",
                      rope={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192,
                            "theta": 500000.0})
    dev = torch.device("cuda")
    os.environ["MEGAMID_KERNELS"] = "auto"  # the micro-benchmarks above leave their last choice set
    tokens = torch.randint(0, cfg.vocab_size, (1, seq_len), device=dev)
    positions = torch.arange(seq_len, device=dev)[None]
    paths = ["none"] + (["te"] if spec_backend() == "te" else []) + (["megamid"] if rope_ops._cuda is not None else [])
    print(f"\nend to end: {cfg.num_parameters() / 1e9:.2f}B Llama (YaRN x4), 1 x {seq_len} tokens, bf16, "
          f"forward+backward ({spec_backend()} layer spec)")
    base = None
    for path in paths:
        gpt = build_gpt_chunks(cfg, ParallelConfig(), rope_fusion=path)[0]

        def step():
            loss = gpt(tokens, positions, None, labels=tokens)
            loss.float().mean().backward()

        ms = median_ms(step, iters, warmup=2)
        rate = seq_len / (ms / 1e3)
        base = base or rate
        print(f"  rope_fusion={path:8s} {ms:9.1f} ms/step {rate:10.0f} tokens/s  {rate / base:5.2f}x none")
        del gpt
        torch.cuda.empty_cache()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--shapes", default="8k,32k,128k,thd")
    parser.add_argument("--e2e-seq-len", type=int, default=32768)
    parser.add_argument("--e2e-iters", type=int, default=5)
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end model line")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/rope.py: no CUDA device here; the RoPE benchmark needs one (nothing was timed).")
        return 0
    warnings.filterwarnings("ignore")
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    for name in args.shapes.split(","):
        bench_shape(name, SHAPES[name], args.iters)
    bench_scalings(args.iters)
    if not args.no_e2e:
        bench_end_to_end(args.e2e_seq_len, args.e2e_iters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
