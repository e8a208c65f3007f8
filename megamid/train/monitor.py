"""What the training loop reports each step: loss (overall and per source), LR, grad norm, tokens/s,
model FLOP/s and MFU, a gradient-noise-scale estimate, and an ETA per phase. Lines go to the log
(rank 0), every record to CKPT_DIR/metrics.jsonl, and scalars to TensorBoard where it is installed.
"""

import json
import math
import os
import time

# Dense bf16 peak of the accelerator (TFLOP/s), for MFU. Unknown devices report FLOP/s only.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "B200": 2250.0}


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward): 6 x matmul parameters, plus causal
    attention scores and weighted values at this seq_len (2 matmuls x 2 FLOPs x s/2 keys x 3)."""
    h, d, layers = model.hidden_size, model.head_dim, model.num_layers
    q, kv = model.num_attention_heads * d, model.query_groups * d
    matmul = layers * (h * (q + 2 * kv) + q * h + h * model.ffn_size * (3 if model.activation == "swiglu" else 2))
    matmul += h * model.vocab_size                        # output layer (the embedding lookup is free)
    attention = layers * 6 * seq_len * q
    return 6.0 * matmul + attention


def device_peak_tflops():
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


class GradientNoiseScale:
    """B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018) from the squared gradient norms of a small
    batch (one data-parallel rank's tokens) and the big batch (all ranks'), smoothed by an EMA.
    Needs data parallelism > 1; None otherwise."""

    def __init__(self, decay: float = 0.9):
        self.decay, self.g2, self.trace = decay, None, None

    def update(self, small_sq: float, small_tokens: float, big_sq: float, big_tokens: float):
        if big_tokens <= small_tokens or small_tokens <= 0:
            return None
        g2 = (big_tokens * big_sq - small_tokens * small_sq) / (big_tokens - small_tokens)
        trace = (small_sq - big_sq) / (1.0 / small_tokens - 1.0 / big_tokens)
        ema = lambda old, new: new if old is None else self.decay * old + (1 - self.decay) * new
        self.g2, self.trace = ema(self.g2, g2), ema(self.trace, trace)
        return self.trace / self.g2 if self.g2 and self.g2 > 0 else None


class Monitor:
    def __init__(self, out_dir: str, model, log, enabled: bool, tensorboard: bool = True):
        self.out_dir, self.model, self.log, self.enabled = out_dir, model, log, enabled
        self.peak = device_peak_tflops()
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(os.path.join(out_dir, "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.writer = None
        self.phase_start = None

    def start_phase(self, phase, start_step: int) -> None:
        self.phase_start = (time.perf_counter(), start_step)

    def record(self, phase, metrics: dict, elapsed_s: float, world_size: int, log_now: bool) -> dict:
        tokens = phase.tokens_per_step
        metrics["tokens_per_s"] = tokens / elapsed_s
        tflops = flops_per_token(self.model, phase.training.seq_len) * tokens / elapsed_s / 1e12
        metrics["tflops_per_device"] = tflops / world_size
        metrics["mfu"] = metrics["tflops_per_device"] / self.peak if self.peak else None
        t0, s0 = self.phase_start
        done = metrics["step"] - s0
        metrics["eta_s"] = (time.perf_counter() - t0) / max(done, 1) * (phase.steps - metrics["step"])
        if not self.enabled:
            return metrics
        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.writer is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_device", "mfu", "gns"):
                if isinstance(metrics.get(key), (int, float)) and math.isfinite(metrics[key]):
                    self.writer.add_scalar(f"train/{key}", metrics[key], metrics["global_step"])
            for name, value in (metrics.get("loss_by_source") or {}).items():
                self.writer.add_scalar(f"loss_by_source/{name}", value, metrics["global_step"])
            self.writer.flush()
        if log_now:
            self.log(self.line(phase, metrics))
        return metrics

    @staticmethod
    def line(phase, m: dict) -> str:
        gn = "-" if m.get("grad_norm") is None else f"{m['grad_norm']:.3f}"
        parts = [f"[{phase.name}] step {m['step']}/{phase.steps}", f"loss {m['loss']:.4f}", f"lr {m['lr']:.3e}",
                 f"grad_norm {gn}", f"tokens/s {m['tokens_per_s']:.0f}", f"TFLOP/s/dev {m['tflops_per_device']:.3g}"]
        if m.get("mfu") is not None:
            parts.append(f"MFU {100 * m['mfu']:.1f}%")
        if m.get("gns") is not None:
            parts.append(f"GNS {m['gns']:.3g}")
        if m.get("loss_by_source"):
            parts.append("by source " + " ".join(f"{k}={v:.3f}" for k, v in m["loss_by_source"].items()))
        eta = int(m["eta_s"])
        parts.append(f"ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}")
        return " | ".join(parts)
