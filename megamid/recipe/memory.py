"""Per-GPU memory of a training phase: weights, gradients, optimizer state, activations, logits/loss.

    est = estimate_memory(model, parallel, seq_len=131072, micro_batch_size=1, num_microbatches=32,
                          data_parallel_size=1, recompute=RecomputeConfig("full"))
    est.total_gib, est.stage                # the most loaded pipeline stage

Pure arithmetic (no torch, no megatron). Notation: L layers, h hidden, a heads of dim d, g KV groups,
f FFN size, V vocabulary; per GPU t = TP, p = PP, c = CP, DP data-parallel replicas; a micro-batch of b
sequences of S tokens, s = S / c on each rank; B = bytes of the training dtype (2 for bf16/fp16).

Model state (bytes per parameter the rank holds), as megamid trains with Megatron's mixed precision
(bf16 weights in Float16Module, fp32 main gradients (grad_reduce_in_fp32), fp32 master weights + Adam m, v):
  weights B; gradients 4; optimizer 12 (fp32 model: 8, no master copy), divided by DP x c with the
  distributed optimizer (it shards over the data-parallel group with context parallelism).
  FP8 adds TE's FP8 weight and transpose copies (2 bytes per GEMM weight of the FP8 layers); with
  param_gather the weights themselves are FP8 (1 + 1 instead of B + 2).
  A stage holds L/p layers (their matrices / t, norms replicated), the first also the embedding V*h/t,
  the last the final norm and the output layer V*h/t (with p = 1 and tied embeddings, one copy).

Activations per layer and micro-batch (Korthikanti et al. 2022, "Reducing Activation Recomputation",
with flash attention, GQA and SwiGLU; the paper's 34sbh + 5as^2b for GPT without them), in bytes:
  norm inputs                        2 s b h B          / t with sequence parallelism (SP)
  norm outputs (QKV and FC1 inputs)  2 s b h B          / t with SP; 1 byte per element under FP8
  Q, K, V, O (flash attention)       s b (2ad + 2gd) B  / t (O doubles as the output projection's input;
                                                          FP8 adds its 1-byte copy), + 4 s b a / t (log-sum-exp)
  without flash attention            + 4 a s S b / t (scores + softmax; 5 with attention dropout)
  FC1 output (2f for SwiGLU)         s b 2f B           / t
  FC2 input (activation output)      s b f B            / t (1 byte under FP8)
  dropout masks (only if p_drop > 0) 2 s b h            / t with SP
  megamid CP all-gather              + 2 S b g d B / t (the gathered K, V are kept for backward)
Selective recompute drops what its modules rebuild: layernorm -> the norm outputs; mlp -> FC1 output and
FC2 input; core_attn -> the score term (nothing with flash attention, which stores no scores).
Full recompute keeps each unit's input s b h B (/ t with SP): uniform keeps ceil(L_stage / n) inputs and
rebuilds one unit of n layers at a time on top; block keeps n inputs and the other L_stage - n layers in
full, and rebuilds one layer at a time after those are freed (on top only when n = L_stage).
Offload (megatron's cpu_offloading) keeps the L_stage - n layers it does not offload plus one offloaded
layer's activations in flight to or from host memory.
Pipeline: 1F1B keeps min(p, M) micro-batches in flight on the first stage (M micro-batches per step),
interleaving multiplies by 1 + (p - 1) / (p v); the last stage keeps one, plus the loss below.
Logits/loss on the last stage: final-norm input and output-layer input 2 s b h B (/ t with SP) and the
vocab-parallel logits s b V / t at 10 bytes per element unfused (bf16 logits, fp32 copy, fp32 softmax kept
for backward) or 6 with the fused cross-entropy.
Runtime: 1.5 GiB for the CUDA context, NCCL and library workspaces, plus 5% of activations and logits
for the caching allocator's fragmentation. A phase fits when the most loaded stage's total is at most
the GPU's memory (megamid.recipe.gpus). Megatron-LM's theoretical_memory_usage.py counts 32sbh per layer
for Llama-3-8B where this counts 34sbh (SwiGLU's 2f-wide FC1 output).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from megamid.config.fp8 import Fp8Config
from megamid.config.model import ModelConfig
from megamid.config.parallel import ParallelConfig
from megamid.config.recompute import RecomputeConfig

GIB = 1024 ** 3
RUNTIME_BYTES = int(1.5 * GIB)
FRAGMENTATION = 0.05
_DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class StageMemory:
    """Bytes on one GPU of one pipeline stage."""

    stage: str               # "first", "last" or "only" (p = 1)
    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    runtime: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.runtime

    @property
    def total_gib(self) -> float:
        return self.total / GIB


@dataclass(frozen=True)
class MemoryEstimate:
    stages: tuple            # StageMemory per distinct stage (first and last, or only)

    @property
    def peak(self) -> StageMemory:
        return max(self.stages, key=lambda s: s.total)

    @property
    def stage(self) -> str:
        return self.peak.stage

    @property
    def total_gib(self) -> float:
        return self.peak.total_gib

    def fits(self, memory_gib: float) -> bool:
        return self.total_gib <= memory_gib


def layer_parameters(model: ModelConfig) -> tuple:
    """(matrix parameters, norm parameters) of one transformer layer; matrices split over TP, norms do not."""
    h, d = model.hidden_size, model.head_dim
    matrices = h * d * (model.num_attention_heads + 2 * model.query_groups) + model.num_attention_heads * d * h
    matrices += h * model.ffn_size * (3 if model.activation == "swiglu" else 2)
    norms = 2 * h * (2 if model.normalization == "LayerNorm" else 1) + (2 * d if model.qk_layernorm else 0)
    if model.add_qkv_bias or model.add_bias_linear:
        matrices += d * (model.num_attention_heads + 2 * model.query_groups)
    if model.add_bias_linear:
        matrices += model.ffn_size * (2 if model.activation == "swiglu" else 1)
        norms += 2 * h   # the row-parallel biases are replicated
    return matrices, norms


def layer_activation_bytes(model: ModelConfig, parallel: ParallelConfig, seq_len: int, micro_batch_size: int,
                           recompute: RecomputeConfig, fp8: Optional[Fp8Config] = None,
                           flash_attention: bool = True) -> float:
    """Bytes one transformer layer keeps for backward for one micro-batch (no full recompute)."""
    t, c = parallel.tensor_model_parallel_size, parallel.context_parallel_size
    sp = t if parallel.sequence_parallel else 1
    big_s, b = seq_len, micro_batch_size
    s = big_s / c
    h, a, g, d, f = (model.hidden_size, model.num_attention_heads, model.query_groups, model.head_dim,
                     model.ffn_size)
    B = _DTYPE_BYTES[model.dtype]
    lin = 1 if fp8 is not None else B           # TE keeps FP8 casts of the GEMM inputs
    selective = recompute.modules if recompute.granularity == "selective" else ()
    total = 2 * s * b * h * B / sp                                  # norm inputs
    if "layernorm" not in selective:
        total += 2 * s * b * h * lin / sp                           # norm outputs = QKV / FC1 inputs
    total += s * b * (2 * a * d + 2 * g * d) * B / t + 4 * s * b * a / t
    if fp8 is not None:
        total += s * b * a * d / t                                  # FP8 copy of the output projection's input
    if not flash_attention and "core_attn" not in selective:
        total += (5 if model.attention_dropout > 0 else 4) * a * s * big_s * b / t
    if "mlp" not in selective:
        fc1 = 2 * f if model.activation == "swiglu" else f
        total += s * b * fc1 * B / t + s * b * f * lin / t
    if model.hidden_dropout > 0:
        total += 2 * s * b * h / sp
    if c > 1 and parallel.cp_comm == "allgather":
        total += 2 * big_s * b * g * d * B / t
    return total


def stack_activation_bytes(model: ModelConfig, parallel: ParallelConfig, layers: int, in_flight: float,
                           seq_len: int, micro_batch_size: int, recompute: RecomputeConfig,
                           fp8: Optional[Fp8Config] = None, flash_attention: bool = True) -> float:
    """Bytes `layers` layers keep with `in_flight` micro-batches waiting for backward, plus the one
    recompute buffer of full recompute."""
    per_layer = layer_activation_bytes(model, parallel, seq_len, micro_batch_size, recompute, fp8, flash_attention)
    if recompute.granularity == "offload":
        n = min(recompute.num_layers, layers)
        return in_flight * (layers - n) * per_layer + (per_layer if n else 0)
    if recompute.granularity != "full":
        return in_flight * layers * per_layer
    t, c = parallel.tensor_model_parallel_size, parallel.context_parallel_size
    sp = t if parallel.sequence_parallel else 1
    unit_input = seq_len / c * micro_batch_size * model.hidden_size * _DTYPE_BYTES[model.dtype] / sp
    n = min(recompute.num_layers, layers)
    if recompute.method == "uniform":
        return in_flight * math.ceil(layers / n) * unit_input + n * per_layer
    # Backward frees the stored layers before it reaches the recomputed ones: one rebuilt layer adds to
    # the peak only when every layer of the stage is recomputed.
    return in_flight * (n * unit_input + (layers - n) * per_layer) + (per_layer if n == layers else 0)


def estimate_memory(model: ModelConfig, parallel: ParallelConfig, *, seq_len: int, micro_batch_size: int,
                    num_microbatches: int, data_parallel_size: int, recompute: Optional[RecomputeConfig] = None,
                    fp8: Optional[Fp8Config] = None, flash_attention: bool = True,
                    cross_entropy_fusion: bool = True) -> MemoryEstimate:
    """The memory of the first and last pipeline stage (one stage when p = 1); see the module docstring."""
    recompute = recompute or RecomputeConfig()
    t, p = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    c, v = parallel.context_parallel_size, parallel.num_model_chunks
    B = _DTYPE_BYTES[model.dtype]
    h, V = model.hidden_size, model.vocab_size
    layers = model.num_layers // p
    matrices, norms = layer_parameters(model)
    embedding = V * h / t
    optimizer_bytes = 12 if B == 2 else 8
    shard = data_parallel_size * c if parallel.use_distributed_optimizer else 1
    s_local = seq_len / c
    sp = t if parallel.sequence_parallel else 1

    if parallel.virtual_pipeline_model_parallel_size:
        first_in_flight = p * (1 + (p - 1) / (p * v))
    else:
        first_in_flight = min(p, num_microbatches)

    def stage(name: str, first: bool, last: bool, in_flight: float) -> StageMemory:
        n_params = layers * (matrices / t + norms)
        if first:
            n_params += embedding
        if last:
            n_params += h * (2 if model.normalization == "LayerNorm" else 1)
            if not (model.tie_embeddings and first):
                n_params += embedding
        fp8_layers = 0 if fp8 is None else max(0, layers - _bf16_layers_on_stage(fp8, layers, first, last))
        fp8_matrix_params = fp8_layers * matrices / t
        weights = n_params * B
        if fp8 is not None:
            weights += fp8_matrix_params * ((1 + 1 - B) if fp8.param_gather else 2)
        gradients = n_params * 4
        optimizer = n_params * optimizer_bytes / shard
        activations = stack_activation_bytes(model, parallel, layers, in_flight, seq_len, micro_batch_size,
                                             recompute, fp8, flash_attention)
        if first:
            activations += in_flight * 16 * s_local * micro_batch_size   # int64 token and position ids
        logits = 0.0
        if last:
            logits = 2 * s_local * micro_batch_size * h * B / sp
            logits += s_local * micro_batch_size * V / t * (6 if cross_entropy_fusion else 10)
        runtime = RUNTIME_BYTES + FRAGMENTATION * (activations + logits)
        return StageMemory(name, weights, gradients, optimizer, activations, logits, runtime)

    if p == 1:
        return MemoryEstimate((stage("only", True, True, 1),))
    return MemoryEstimate((stage("first", True, False, first_in_flight), stage("last", False, True, 1)))


def _bf16_layers_on_stage(fp8: Fp8Config, layers: int, first: bool, last: bool) -> int:
    return min(layers, (fp8.bf16_layers_at_start if first else 0) + (fp8.bf16_layers_at_end if last else 0))


def gib(n_bytes: float) -> float:
    return n_bytes / GIB
