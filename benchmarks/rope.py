"""python benchmarks/rope.py [--iters 100] [--shapes 8k,32k,128k,thd]

Times RoPE on Llama-3-8B heads (Q 32 x 128, K 8 x 128, bf16; YaRN inv_freq and attention factor):
sbhd at 8K, 32K and 128K tokens, and THD with 2,000 documents summing to 64K. One table per shape:
time, GB/s (bytes read + written), fraction of a device-to-device copy of the same bytes measured in
this process, and speed-up over the pure-PyTorch reference and over megatron-core's unfused
apply_rotary_pos_emb path with the YaRN mscale. TE's fused RoPE is timed where TE imports, with
mscale 1 since it refuses any other (so it does less work than the others). Needs a CUDA device;
exits with a message without one.
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

    rows = []  # (name, microseconds, bytes)
    if rope_ops._cuda is not None:
        rows.append(("megamid kernel", time_us(with_kernels("cuda", lambda: apply_rope(q, k, inv_freq, mscale, **kw)), iters), moved))
        rows.append(("megamid kernel, in place", time_us(with_kernels("cuda", lambda: apply_rope(q, k, inv_freq, mscale, inplace=True, **kw)), iters), moved))
        groups = HK
        qkv = torch.randn(*lead, groups, (HQ // groups + 2) * D, device=dev, dtype=torch.bfloat16)
        rows.append(("megamid fused QKV (+V)", time_us(with_kernels("cuda", lambda: apply_rope_fused_qkv(qkv, inv_freq, mscale, **kw)), iters), 2 * qkv.nbytes))
    else:
        print("  (megamid._cuda is not built: pip install -e . with MEGAMID_BUILD_CUDA=1 to time the kernel)")
    ref_us = time_us(with_kernels("reference", lambda: apply_rope(q, k, inv_freq, mscale, **kw)), iters)
    rows.append(("reference (PyTorch)", ref_us, moved))

    angle = torch.outer(torch.arange(max_len + (1 if thd else 0), device=dev, dtype=torch.float32), inv_freq)
    emb = torch.cat((angle, angle), dim=-1)[:, None, None, :]  # Megatron's RotaryEmbedding output, cached
    if thd:
        group = type("Group", (), {"size": lambda self: 1, "rank": lambda self: 0})()
        mcore = lambda: [rope_utils._apply_rotary_pos_emb_thd(t, cu, emb, mscale=mscale, cp_group=group) for t in (q, k)]  # noqa: E731
    else:
        mcore = lambda: [rope_utils._apply_rotary_pos_emb_bshd(t, emb, mscale=mscale) for t in (q, k)]  # noqa: E731
    mcore_us = time_us(mcore, iters)
    rows.append(("megatron-core unfused (mscale)", mcore_us, moved))

    te = te_rope()
    if te is not None:
        te_kw = dict(tensor_format="thd", cu_seqlens=cu) if thd else dict(tensor_format="sbhd")
        try:
            rows.append(("TE fused (mscale 1)", time_us(lambda: [te(t, emb, fused=True, **te_kw) for t in (q, k)], iters), moved))
        except Exception as exc:  # an older/newer TE signature: report, do not fail the table
            print(f"  TE fused RoPE failed: {exc}")

    title = f"THD, {doc_count} documents, {tokens} tokens" if thd else f"sbhd, s={tokens}, b=1"
    print(f"\n{title}: Q [{tokens}, {HQ}, {D}] + K [{tokens}, {HK}, {D}] bf16, {moved / 1e6:.0f} MB moved; "
          f"D2D copy {copy_us:.1f} us = {moved / copy_us / 1e3:.0f} GB/s")
    print(f"  {'path':34s} {'time us':>9s} {'GB/s':>7s} {'of copy':>8s} {'x ref':>7s} {'x mcore':>8s}")
    for label, us, nbytes in rows:
        gbs = nbytes / us / 1e3
        print(f"  {label:34s} {us:9.1f} {gbs:7.0f} {gbs / (moved / copy_us / 1e3):8.2f} "
              f"{ref_us / us:7.2f} {mcore_us / us:8.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--shapes", default="8k,32k,128k,thd")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/rope.py: no CUDA device here; the RoPE benchmark needs one (nothing was timed).")
        return 0
    warnings.filterwarnings("ignore")
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    for name in args.shapes.split(","):
        bench_shape(name, SHAPES[name], args.iters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
