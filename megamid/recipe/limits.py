"""Coarse size limits checked before anything is built: absurd steps, seq_len or hidden sizes are refused
with an estimate of the memory they would need, instead of failing inside an allocation.

    problems = check_sizes(model, seq_len=4096, micro_batch=1, num_samples=steps * global_batch)
    problems = check_phase_sizes(model, phases)    # every resolved phase of a plan

Pure functions of the configs and two limits (no torch, no megatron). These are sanity bounds, not a
memory plan (megamid.recipe.memory is the detailed per-GPU estimate):
- per device: weights + gradients + Adam state, split over TP x PP, plus one micro-batch's activations
  (Korthikanti et al. 2022: s*b*h*34 bytes per layer at 16 bits, no recompute, flash attention; every
  layer counted, as 1F1B keeps PP micro-batches in flight) and its logits, split over TP x CP. Refused
  above `device_limit_bytes`: by default the larger of this host's RAM and the largest accelerator
  memory (DEVICE_CEILING_BYTES), so a recipe for a bigger machine still plans on a laptop.
- on the host: the blended sample index, INDEX_BYTES_PER_SAMPLE per sample of a phase, which every
  rank builds in RAM. Refused above `host_limit_bytes` (default: this host's RAM).
"""

from typing import Optional

from megamid.data.mixture_index import INDEX_BYTES_PER_SAMPLE
from megamid.platform.host import format_bytes as human_bytes
from megamid.platform.host import host_memory_bytes

DEVICE_CEILING_BYTES = 288 << 30       # the largest accelerator memory shipping (B300: 288 GB HBM3e)
ACTIVATION_BYTES_PER_ELEMENT = 34      # per token per hidden unit per layer at 16 bits (Korthikanti et al.)
ADAM_BYTES = 4 + 8                     # fp32 gradient + two fp32 Adam moments per parameter
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def state_bytes_per_parameter(dtype: str) -> int:
    """Weights in `dtype` (+ an fp32 main copy when 16-bit) + fp32 gradient + Adam moments."""
    weights = DTYPE_BYTES[dtype] + (4 if DTYPE_BYTES[dtype] < 4 else 0)
    return weights + ADAM_BYTES


def model_state_bytes(model, tp: int = 1, pp: int = 1) -> int:
    """Weights, gradients and optimizer state per device (no distributed optimizer: an upper bound)."""
    return model.num_parameters() * state_bytes_per_parameter(model.dtype) // (tp * pp)


def activation_bytes(model, seq_len: int, micro_batch: int, tp: int = 1, cp: int = 1) -> int:
    """One micro-batch's activations over all layers, plus fp32 logits and their gradient, per device."""
    scale = DTYPE_BYTES[model.dtype] / 2            # the 34 bytes are for 16-bit activations
    tokens = seq_len * micro_batch
    layers = model.num_layers * tokens * model.hidden_size * ACTIVATION_BYTES_PER_ELEMENT * scale
    logits = tokens * model.vocab_size * 4 * 2
    return int((layers + logits) // (tp * cp))


def index_bytes(num_samples: int) -> int:
    return int(num_samples) * INDEX_BYTES_PER_SAMPLE


def check_sizes(model, seq_len: int, micro_batch: int, num_samples: int, *, tp: int = 1, pp: int = 1, cp: int = 1,
                where: str = "training", steps_field: Optional[str] = None,
                device_limit_bytes: Optional[int] = None, host_limit_bytes: Optional[int] = None) -> list:
    """Problems (one line each, naming the field, the estimate and the limit); empty when sizes are sane.

    `where` prefixes seq_len's field ("training", "phases[ctx]"); `steps_field` names the budget
    (default f"{where}.train_steps")."""
    host = host_memory_bytes()
    device_limit = f"the stated limit of {human_bytes(device_limit_bytes or 0)}"
    if device_limit_bytes is None:
        device_limit_bytes = max(host, DEVICE_CEILING_BYTES)
        device_limit = (f"{human_bytes(device_limit_bytes)} (the larger of this host's RAM and the largest "
                        f"accelerator's {human_bytes(DEVICE_CEILING_BYTES)})")
    host_limit = f"the stated host limit of {human_bytes(host_limit_bytes or 0)}"
    if host_limit_bytes is None:
        host_limit_bytes = host or DEVICE_CEILING_BYTES
        host_limit = f"this host's {human_bytes(host_limit_bytes)} of RAM"
    problems = []
    state = model_state_bytes(model, tp, pp)
    if state > device_limit_bytes:
        problems.append(
            f"model.hidden_size={model.hidden_size} (num_layers={model.num_layers}, "
            f"ffn_hidden_size={model.ffn_size}, vocab_size={model.vocab_size}) is too large: "
            f"{model.num_parameters():,} parameters x {state_bytes_per_parameter(model.dtype)} bytes "
            f"(weights, gradients, Adam state) / TP x PP = {tp * pp} need ~{human_bytes(state)} per device, "
            f"over {device_limit}")
    act = activation_bytes(model, seq_len, micro_batch, tp, cp)
    if act > device_limit_bytes:
        problems.append(
            f"{where}.seq_len={seq_len} is too large: the activations of one micro-batch "
            f"(seq_len x micro_batch_size {micro_batch} x hidden {model.hidden_size} x "
            f"{ACTIVATION_BYTES_PER_ELEMENT} bytes x {model.num_layers} layers, plus logits, / TP x CP = {tp * cp}) "
            f"need ~{human_bytes(act)} per device, over {device_limit}")
    idx = index_bytes(num_samples)
    if idx > host_limit_bytes:
        problems.append(
            f"{steps_field or where + '.train_steps'} is too large: {num_samples:,} samples (steps x "
            f"global_batch_size) need a blended sample index of ~{human_bytes(idx)} ({INDEX_BYTES_PER_SAMPLE} bytes per sample) "
            f"in host memory, over {host_limit}")
    return problems


def check_phase_sizes(model, phases, device_limit_bytes: Optional[int] = None,
                      host_limit_bytes: Optional[int] = None) -> list:
    """check_sizes over resolved phases (each with name, steps, training, parallel and optionally `where`,
    "training" for a recipe without phases); the model's own problem is reported once."""
    problems = []
    for phase in phases:
        t, p = phase.training, phase.parallel
        where = getattr(phase, "where", None) or f"phases[{phase.name}]"
        budget = "tokens" if getattr(phase, "budget_tokens", None) is not None else "steps"
        steps_field = "training.train_steps" if where == "training" else f"{where}.{budget}"
        for problem in check_sizes(model, t.seq_len, t.micro_batch_size, phase.steps * t.global_batch_size,
                                   tp=p.tensor_model_parallel_size, pp=p.pipeline_model_parallel_size,
                                   cp=p.context_parallel_size, where=where, steps_field=steps_field,
                                   device_limit_bytes=device_limit_bytes, host_limit_bytes=host_limit_bytes):
            if problem not in problems:
                problems.append(problem)
    return problems
