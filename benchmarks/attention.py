"""python benchmarks/attention.py [--seqs 4k,8k,16k,32k,64k,128k] [--iters 10] [--skip-model]

Two tables on one CUDA GPU (exits with a message without one):

1. Core attention kernels, causal, bf16, Llama heads (32 query x 8 key/value heads, head dim 128),
   batch 1: forward and forward+backward time and TFLOP/s of megamid's paths (SDPA with enable_gqa,
   and FlexAttention with a document block mask of 4 equal documents, FLOPs counted as if causal over
   the whole row), as a ratio to the FlashAttention-3 anchor of ~650 TFLOP/s forward at 16K, d=128
   (H100 SXM, published; not measured here).
2. A ~1.0B Llama-style model (20 layers, hidden 2048, 16 query / 4 key-value heads of 128, SwiGLU 5632,
   vocab 32000, bf16) on this GPU with full activation recompute: forward+backward tokens/s and peak
   memory (weights, activations and gradients; no optimizer step) per sequence length, with megamid's attention and, as the baseline measured in the same run,
   megatron's own DotProductAttention (MEGAMID_ATTENTION=megatron, which stores the s x s scores);
   "OOM" marks a length that did not fit, and the longest fitting length is printed per backend.
"""

import argparse
import gc
import os
import sys
import time

import torch

from cuda_timing import median_ms  # benchmarks/ is on sys.path when a script here runs

FA3_FWD_TFLOPS_16K = 650.0
HQ, HK, D = 32, 8, 128


def parse_seqs(text):
    return [int(t[:-1]) * 1024 if t.endswith("k") else int(t) for t in text.split(",")]


def time_ms(fn, iters):
    return median_ms(fn, iters, warmup=2)


def causal_flops(s, heads=HQ, d=D, batch=1):
    """Forward FLOPs of causal attention (two matmuls, half the square)."""
    return 4 * batch * heads * s * s * d / 2


def attention_table(seqs, iters):
    from megamid.attention.local import block_attention, causal_sdpa, document_ids, flex_block_mask

    print("\n## Core attention, causal, bf16, 32q/8kv heads x 128, batch 1")
    print(f"| path | seq | fwd ms | fwd TFLOP/s | vs FA3 fwd anchor ({FA3_FWD_TFLOPS_16K:.0f}) | fwd+bwd ms | fwd+bwd TFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    for s in seqs:
        q = torch.randn(1, HQ, s, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k, v = (torch.randn(1, HK, s, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
        pos = torch.arange(s, device="cuda")
        cu = torch.linspace(0, s, 5, device="cuda").to(torch.int32)
        doc = document_ids(cu, 1, s)
        mask = flex_block_mask(pos, pos, doc, doc, 1)
        paths = {"SDPA (enable_gqa)": lambda: causal_sdpa(q, k, v, D ** -0.5),
                 "FlexAttention, 4 documents": lambda: block_attention(q, k, v, pos, pos, doc, doc, D ** -0.5,
                                                                       block_mask=mask)[0]}
        for name, fn in paths.items():
            try:
                with torch.no_grad():
                    fwd = time_ms(fn, iters)
                grad = torch.randn(1, HQ, s, D, device="cuda", dtype=torch.bfloat16)
                both = time_ms(lambda: torch.autograd.grad(fn().to(torch.bfloat16), (q, k, v), grad), iters)
            except torch.OutOfMemoryError:
                print(f"| {name} | {s} | OOM | | | | |")
                continue
            flops = causal_flops(s)
            tf = flops / fwd / 1e9
            print(f"| {name} | {s} | {fwd:.2f} | {tf:.0f} | {tf / FA3_FWD_TFLOPS_16K:.2f} | {both:.2f} | "
                  f"{3.5 * flops / both / 1e9:.0f} |")
        del q, k, v
        torch.cuda.empty_cache()


def model_run(s, iters):
    """(tokens/s, peak GiB) of forward+backward of the ~1.0B model at sequence length s, or None on OOM."""
    from megamid.config.model import ModelConfig
    from megamid.config.parallel import ParallelConfig
    from megamid.model import build_gpt_chunks

    model_cfg = ModelConfig(num_layers=20, hidden_size=2048, num_attention_heads=16, num_query_groups=4,
                            vocab_size=32000, ffn_hidden_size=5632, max_position_embeddings=s, dtype="bf16",
                            rope={"type": "default", "theta": 500000.0})
    model = None
    try:
        model = build_gpt_chunks(model_cfg, ParallelConfig(), recompute="full")[0]
        tokens = torch.randint(0, 32000, (1, s), device="cuda")
        positions = torch.arange(s, device="cuda")[None]

        def step():
            loss = model(tokens, positions, None, labels=tokens)
            loss.float().sum().backward()

        torch.cuda.reset_peak_memory_stats()
        ms = time_ms(step, iters)
        return s / ms * 1e3, torch.cuda.max_memory_allocated() / 2 ** 30
    except torch.OutOfMemoryError:
        return None
    finally:
        del model
        gc.collect()
        torch.cuda.empty_cache()


def model_table(seqs, iters):
    from megamid.platform import Layout, init_model_parallel, set_seed

    init_model_parallel(Layout())
    set_seed(1234)
    print("\n## ~1.0B Llama-style model, bf16, full recompute, fwd+bwd, batch 1")
    print("| attention | seq | tokens/s | peak GiB | tokens/s vs megatron DotProductAttention |")
    print("|---|---|---|---|---|")
    longest = {}
    for s in seqs:
        results = {}
        for backend in ("megatron", "megamid"):
            os.environ["MEGAMID_ATTENTION"] = backend
            results[backend] = model_run(s, iters)
            if results[backend] is not None:
                longest[backend] = s
        base = results["megatron"]
        for backend, r in results.items():
            if r is None:
                print(f"| {backend} | {s} | OOM | | |")
                continue
            ratio = f"{r[0] / base[0]:.2f}" if base is not None else "baseline OOM"
            print(f"| {backend} | {s} | {r[0]:.0f} | {r[1]:.1f} | {ratio} |")
    for backend in ("megatron", "megamid"):
        print(f"longest sequence that fits with {backend} attention: {longest.get(backend, 'none')}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", default="4k,8k,16k,32k,64k,128k")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--skip-model", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/attention.py needs a CUDA GPU; none is visible here, so nothing was measured.")
        return 0
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; started {time.ctime()}")
    seqs = parse_seqs(args.seqs)
    attention_table(seqs, args.iters)
    if not args.skip_model:
        model_table(seqs, max(2, args.iters // 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
