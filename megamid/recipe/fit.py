"""Does every phase of a plan fit on a GPU, and can that GPU run what the phase asks for?

    print(format_memory_table(plan, "h100-80gb"))      # one row per phase: the most loaded stage, in GiB
    problems = hardware_problems(plan, "h100-80gb")    # phases that do not fit; FP8 without TE / FP8 GPU; MXFP8 off Blackwell

The estimate is megamid.recipe.memory's (its docstring holds the formulas); `megamid plan --gpu NAME`
prints this table under the phase table. A phase's recompute is its `recompute` (else `training.recompute`),
its FP8 settings its `fp8` (None: BF16), both resolved by the plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megamid.config.fp8 import Fp8Config, fp8_recompute_problem
from megamid.config.recompute import RecomputeConfig, layers_per_stage_check
from megamid.recipe.gpus import GpuSpec, gpu_spec
from megamid.recipe.memory import GIB, MemoryEstimate, estimate_memory

# TE's context-parallel communication types; megamid's own attention runs allgather and ring (p2p) only.
TE_ONLY_CP_COMM = ("a2a", "a2a+p2p")


@dataclass(frozen=True)
class PhaseMemory:
    name: str
    layout: str
    recompute: RecomputeConfig
    fp8: Optional[Fp8Config]
    estimate: MemoryEstimate
    gpu: GpuSpec

    @property
    def fits(self) -> bool:
        return self.estimate.fits(self.gpu.memory_gib)


def phase_memory(plan, gpu, te: bool = True) -> list:
    """A PhaseMemory per phase of `plan` (a RecipePlan) on `gpu` (a name or GpuSpec), with the GPU
    path's flash attention and fused cross-entropy (megamid.model.engine_config turns it on with CUDA)."""
    spec = gpu if isinstance(gpu, GpuSpec) else gpu_spec(gpu)
    model = plan.recipe.model
    rows = []
    for row in plan.phases:
        t = row.training
        dp = max(row.data_parallel_size, 1)
        estimate = estimate_memory(model, row.parallel, seq_len=t.seq_len, micro_batch_size=t.micro_batch_size,
                                   num_microbatches=max(t.global_batch_size // (t.micro_batch_size * dp), 1),
                                   data_parallel_size=dp, recompute=row.recompute, fp8=row.fp8,
                                   flash_attention=True, cross_entropy_fusion=True)
        rows.append(PhaseMemory(row.name, row.layout, row.recompute, row.fp8, estimate, spec))
    return rows


def hardware_problems(plan, gpu, te: bool = True) -> list:
    """Problem lines for `plan` on `gpu`: phases over its memory, FP8 without TE or on a GPU without FP8,
    MXFP8 off Blackwell, TE-only CP communication without TE, more recomputed layers than a stage holds."""
    spec = gpu if isinstance(gpu, GpuSpec) else gpu_spec(gpu)
    problems = []
    model = plan.recipe.model
    for row, memory in zip(plan.phases, phase_memory(plan, spec, te)):
        where = f"phases[{row.name}]"
        fp8 = memory.fp8
        if fp8 is not None and not te:
            problems.append(f"{where}.fp8={fp8.describe()} is invalid without Transformer Engine: FP8 runs only "
                            "through TE; drop fp8 for this target")
        if fp8 is not None and not spec.fp8:
            problems.append(f"{where}.fp8={fp8.describe()} is invalid on {spec.name} ({spec.arch}): no FP8 tensor "
                            "cores; FP8 needs Ada, Hopper or Blackwell")
        elif fp8 is not None and fp8.recipe == "mxfp8" and not spec.mxfp8:
            problems.append(f"{where}.fp8.recipe='mxfp8' is invalid on {spec.name} ({spec.arch}): MXFP8 needs "
                            "Blackwell; use tensorwise, delayed or blockwise")
        mixed = fp8_recompute_problem(fp8, memory.recompute)
        if mixed:
            problems.append(f"{where}: {mixed}")
        parallel = row.parallel
        if parallel.context_parallel_size > 1 and parallel.cp_comm in TE_ONLY_CP_COMM and not te:
            problems.append(f"{where}.parallel.cp_comm={parallel.cp_comm!r} is invalid without Transformer Engine: "
                            "megamid's attention runs allgather or ring")
        a2a = {"a2a": parallel.context_parallel_size, "a2a+p2p": parallel.cp_a2a_size}.get(parallel.cp_comm)
        tp = parallel.tensor_model_parallel_size
        if parallel.context_parallel_size > 1 and a2a and (model.num_attention_heads // tp % a2a
                                                            or model.query_groups // tp % a2a):
            problems.append(f"{where}.parallel.cp_comm={parallel.cp_comm!r} is invalid: all-to-all over {a2a} ranks "
                            f"splits heads, but each TP rank holds {model.num_attention_heads // tp} query heads and "
                            f"{model.query_groups // tp} KV groups; use allgather or ring, or a smaller all-to-all")
        if memory.recompute.granularity == "offload" and parallel.pipeline_model_parallel_size > 1:
            problems.append(f"{where}.recompute=offload is invalid with pipeline_model_parallel_size="
                            f"{parallel.pipeline_model_parallel_size}: megatron-core offloads activations only "
                            "without pipeline parallelism; use full recompute")
        stage_layers = model.num_layers // parallel.pipeline_model_parallel_size
        problem = layers_per_stage_check(memory.recompute, stage_layers, f"{where}.recompute")
        if problem:
            problems.append(problem)
        if not memory.fits:
            peak = memory.estimate.peak
            problems.append(f"{where} does not fit on {spec.name}: ~{peak.total_gib:.1f} GiB per GPU "
                            f"({_stage_name(peak.stage)}) > {spec.memory_gib:g} GiB; {_advice(memory)}")
    return problems


def _stage_name(stage: str) -> str:
    return {"only": "one stage", "first": "first pipeline stage", "last": "last pipeline stage"}[stage]


def _advice(memory: PhaseMemory) -> str:
    peak = memory.estimate.peak
    if memory.recompute.granularity != "full" and peak.activations > 0.25 * peak.total:
        return "activations dominate: recompute: full, or more context/tensor parallelism"
    return "more tensor/pipeline parallelism or use_distributed_optimizer: true shrinks the model state"


def table_rows(memories: list) -> list:
    header = ["phase", "layout", "recompute", "fp8", "stage", "weights", "grads", "optim", "activ", "logits",
              "runtime", "total GiB", "fits"]
    rows = [header]
    for m in memories:
        p = m.estimate.peak
        rows.append([m.name, m.layout, m.recompute.describe(), m.fp8.describe() if m.fp8 else "-", p.stage]
                    + [f"{x / GIB:.1f}" for x in (p.weights, p.gradients, p.optimizer, p.activations, p.logits,
                                                    p.runtime, p.total)]
                    + ["yes" if m.fits else "NO"])
    return rows


def format_memory_table(plan, gpu, te: bool = True) -> str:
    spec = gpu if isinstance(gpu, GpuSpec) else gpu_spec(gpu)
    rows = table_rows(phase_memory(plan, spec, te))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"memory per GPU on {spec.name} ({spec.memory_gib:g} GiB, {spec.arch}), "
             f"{'with' if te else 'without'} Transformer Engine; estimate of the most loaded pipeline stage "
             "(formulas: megamid/recipe/memory.py)"]
    for k, row in enumerate(rows):
        lines.append("  ".join(c.rjust(w) if 5 <= i <= 11 else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
