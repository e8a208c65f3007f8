"""Helpers for the RoPE kernel tests (imported by tests/kernels/test_rope_kernel_*.py; not a test).

A straightforward float64 RoPE (a loop over tokens and frequencies), positions built the long way
(documents one by one, CP shards by cutting the full sequence), and inv_freq for several scaling
methods by their simple formulas (megamid.rope's versions are tested on their own elsewhere).
"""

import math

import numpy as np
import torch


def naive_rope(x, positions, inv_freq, factor=1.0, *, interleaved=False, backward=False,
               fp32_angle=True):
    """x [n, h, d] (any float dtype; computed in float64), positions: n ints.

    fp32_angle: form the angle as float32(pos) * float32(inv_freq) rounded to float32 (HF's and the
    kernel's convention) and take cos/sin of it in float64; else the exact float64 product."""
    x = x.to(torch.float64)
    out = x.clone()
    freqs = [float(f) for f in inv_freq.to(torch.float32).tolist()]
    half = len(freqs)
    for n, p in enumerate(positions):
        for i, f in enumerate(freqs):
            a = float(np.float32(p) * np.float32(f)) if fp32_angle else float(p) * f
            c, s = math.cos(a) * factor, math.sin(a) * factor
            if backward:
                s = -s
            i1, i2 = (2 * i, 2 * i + 1) if interleaved else (i, i + half)
            x1, x2 = x[n, :, i1], x[n, :, i2]
            out[n, :, i1] = x1 * c - x2 * s
            out[n, :, i2] = x2 * c + x1 * s
    return out


def doc_positions(lengths):
    """Positions restarting at each document: [0..L0-1, 0..L1-1, ...]."""
    return [p for length in lengths for p in range(length)]


def cp_shard_indices(length, cp_size, cp_rank):
    """Indices of a length-`length` sequence that rank cp_rank holds: chunks r and 2cp-1-r."""
    chunk = length // (2 * cp_size)
    first = list(range(cp_rank * chunk, (cp_rank + 1) * chunk))
    second_start = (2 * cp_size - 1 - cp_rank) * chunk
    return first + list(range(second_start, second_start + chunk))


def cu_seqlens_of(lengths, device=None):
    return torch.tensor([0] + list(np.cumsum(lengths)), dtype=torch.int32, device=device)


def inv_freq_default(rotary_dim, base=500000.0):
    return 1.0 / base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)


def inv_freq_for(method, rotary_dim, base=500000.0, factor=8.0, original_max_position_embeddings=8192):
    """(inv_freq float32, attention_factor) for a scaling method, by its paper's / HF's formula."""
    inv = inv_freq_default(rotary_dim, base)
    attention_factor = 1.0
    if method == "default":
        pass
    elif method == "linear":  # PI
        inv = inv / factor
    elif method == "ntk":  # NTK-aware: a larger base
        inv = inv_freq_default(rotary_dim, base * factor ** (rotary_dim / (rotary_dim - 2)))
    elif method == "abf":
        inv = inv_freq_default(rotary_dim, base * 100)
    elif method == "yarn":
        beta_fast, beta_slow = 32.0, 1.0

        def dim_of(rotations):
            return rotary_dim * math.log(original_max_position_embeddings / (rotations * 2 * math.pi)) / (
                2 * math.log(base))

        low, high = max(math.floor(dim_of(beta_fast)), 0), min(math.ceil(dim_of(beta_slow)), rotary_dim - 1)
        ramp = ((torch.arange(rotary_dim // 2, dtype=torch.float64) - low) / max(high - low, 1e-3)).clamp(0, 1)
        extrapolation = 1 - ramp
        inv = (inv / factor) * (1 - extrapolation) + inv * extrapolation
        attention_factor = 0.1 * math.log(factor) + 1.0
    elif method == "llama3":
        low_freq_factor, high_freq_factor = 1.0, 4.0
        wavelen = 2 * math.pi / inv
        low_wavelen = original_max_position_embeddings / low_freq_factor
        high_wavelen = original_max_position_embeddings / high_freq_factor
        smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        mid = (1 - smooth) * inv / factor + smooth * inv
        inv = torch.where(wavelen > low_wavelen, inv / factor, torch.where(wavelen < high_wavelen, inv, mid))
    elif method == "longrope":
        gen = torch.Generator().manual_seed(rotary_dim)
        long_factor = 1.0 + 3.0 * torch.rand(rotary_dim // 2, generator=gen, dtype=torch.float64)
        inv = inv / long_factor
        attention_factor = math.sqrt(1 + math.log(factor) / math.log(original_max_position_embeddings))
    else:
        raise ValueError(method)
    return inv.to(torch.float32), attention_factor


SCALINGS = ("default", "linear", "ntk", "abf", "yarn", "llama3", "longrope")
