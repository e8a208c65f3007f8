"""The checks of a resolved plan: layout at the world size, rope coverage, LR budget, phase sequence,
files (data, eval documents, tokenizer, base and resume checkpoints). Each appends problems that name
the phase and field, the value and what would be valid."""

import os
from typing import Optional

from megamid.checkpoint.checkpointer import CheckpointError, read_state, resolve, verify
from megamid.checkpoint.record import first_phase_lr_problem
from megamid.config import ConfigError, ModelConfig, RecipeConfig, build
from megamid.config.model import SHAPE_FIELDS, model_differences
from megamid.data.mixture_plan import knot_shares

# Rope types whose positions are bounded by original_max_position_embeddings * factor.
_BOUNDED_TYPES = ("linear", "ntk", "yarn", "longrope", "llama3")


def field_name(recipe: RecipeConfig, phase, key: str, section: str = "training") -> str:
    """Where the phase's `key` is set: `phases[NAME].key`, or `phases[NAME]: training.key` when inherited."""
    if not recipe.phases:
        return f"{section}.{key}"
    if getattr(recipe.phases[phase.index], key) is not None:
        return f"phases[{phase.name}].{key}"
    return f"phases[{phase.name}]: {section}.{key}"


# ---- one phase ---------------------------------------------------------------------------------

def check_phase(recipe: RecipeConfig, phase, world_size: int, problems: list, notes: list) -> int:
    """Every check of one phase; returns its data-parallel size at `world_size` (0 if it does not fit)."""
    dp = _check_layout(recipe, phase, world_size, problems)
    _check_rope(recipe, phase, problems)
    _check_budget(recipe, phase, problems)
    if phase.budget_tokens is not None and phase.tokens > phase.budget_tokens * 1.01:
        notes.append(f"{phase.where}.tokens={phase.budget_tokens} rounds up to {phase.steps} steps = "
                     f"{phase.tokens} tokens")
    return dp


def _check_layout(recipe: RecipeConfig, phase, world_size: int, problems: list) -> int:
    p, t = phase.parallel, phase.training
    parallel = field_name(recipe, phase, "parallel", "").replace(": .", ": ")  # parallel is top-level, not training.*
    mp = p.model_parallel_size
    if world_size % mp:
        problems.append(f"{parallel}: TP={p.tensor_model_parallel_size} x PP={p.pipeline_model_parallel_size} "
                        f"x CP={p.context_parallel_size} = {mp} does not divide the world size {world_size}; "
                        f"launch a multiple of {mp} processes (or change the layout)")
        return 0
    dp = world_size // mp
    if t.global_batch_size % (t.micro_batch_size * dp):
        problems.append(f"{field_name(recipe, phase, 'global_batch_size')}={t.global_batch_size} is invalid at world "
                        f"size {world_size}: must be divisible by micro_batch_size x DP = {t.micro_batch_size} x {dp}"
                        f" = {t.micro_batch_size * dp}")
    cp = p.context_parallel_size
    if cp > 1 and t.seq_len % (2 * cp):
        problems.append(f"{field_name(recipe, phase, 'seq_len')}={t.seq_len} is invalid with context_parallel_size="
                        f"{cp}: load-balanced context parallelism splits a sequence into 2 x CP = {2 * cp} chunks; "
                        f"use a multiple of {2 * cp}")
    if p.sequence_parallel and t.seq_len % (p.tensor_model_parallel_size * cp):
        problems.append(f"{field_name(recipe, phase, 'seq_len')}={t.seq_len} is invalid with sequence_parallel: must "
                        f"be divisible by TP x CP = {p.tensor_model_parallel_size * cp}")
    return dp


def rope_limit(model: ModelConfig, scaling) -> Optional[int]:
    """The longest sequence RopeScaling `scaling` covers on `model`, or None where the method has no bound
    (dynamic NTK grows its base with the length; ABF, a larger theta than the model's, has no formula)."""
    if scaling.type == "default":
        base_theta = float(model.rope.get("theta", 10000.0))
        return None if scaling.theta > base_theta else model.max_position_embeddings
    if scaling.type not in _BOUNDED_TYPES:
        return None
    original = getattr(scaling, "original_max_position_embeddings", model.max_position_embeddings)
    return int(original * scaling.factor)


def describe_rope(scaling) -> str:
    parts = [scaling.type]
    factor = getattr(scaling, "factor", None)
    if factor is not None:
        parts.append(f"x{factor:g}")
    original = getattr(scaling, "original_max_position_embeddings", None)
    if original is not None:
        parts.append(f"of {original}")
    parts.append(f"theta={scaling.theta:g}")
    if scaling.attention_factor != 1.0:
        parts.append(f"attn={scaling.attention_factor:.3f}")
    return " ".join(parts)


def _check_rope(recipe: RecipeConfig, phase, problems: list) -> None:
    limit = rope_limit(recipe.model, phase.rope_scaling)
    seq_len, model = phase.seq_len, recipe.model
    if limit is None or seq_len <= limit:
        return
    rope_field = f"{phase.where}.rope" if recipe.phases and recipe.phases[phase.index].rope is not None else "model.rope"
    scaling = phase.rope_scaling
    if scaling.type == "default":
        valid = (f"{rope_field} (default, theta={scaling.theta:g}) covers model.max_position_embeddings="
                 f"{model.max_position_embeddings} positions; to extend, give the phase a rope with a larger "
                 f"theta (abf) or a scaling type, e.g. {{type: yarn, factor: "
                 f"{seq_len / model.max_position_embeddings:g}, "
                 f"original_max_position_embeddings: {model.max_position_embeddings}}}")
    else:
        original = getattr(scaling, "original_max_position_embeddings", model.max_position_embeddings)
        valid = (f"{rope_field} ({scaling.type} factor={scaling.factor:g} x original {original}) covers {limit} "
                 f"positions; use seq_len <= {limit} or factor >= {seq_len / original:g}")
    problems.append(f"{field_name(recipe, phase, 'seq_len')}={seq_len} is invalid: {valid}")


def _check_budget(recipe: RecipeConfig, phase, problems: list) -> None:
    try:
        phase.lr.check_budget(phase.steps)
    except ConfigError as exc:
        problems.append(f"{field_name(recipe, phase, 'lr')}.{exc} (the phase has {phase.steps} steps)")
    if phase.budget_tokens is not None and phase.budget_tokens < phase.tokens_per_step:
        t = phase.training
        problems.append(f"phases[{phase.name}].tokens={phase.budget_tokens} is invalid: less than one global batch "
                        f"(global_batch_size x seq_len = {t.global_batch_size} x {t.seq_len} = "
                        f"{phase.tokens_per_step} tokens); give tokens >= {phase.tokens_per_step}")


# ---- the sequence of phases --------------------------------------------------------------------

def check_sequence(recipe: RecipeConfig, phases: list, problems: list) -> None:
    """What depends on the phase before: optimizer state across a layout change, the first phase's LR."""
    for previous, phase in zip(phases, phases[1:]):
        if previous.parallel != phase.parallel and phase.optimizer_state == "carry" and (
                phase.parallel.use_distributed_optimizer or previous.parallel.use_distributed_optimizer):
            problems.append(f"{phase.where}.optimizer_state='carry' is invalid: the parallel layout changes at this "
                            "phase and the distributed optimizer's state reshards only across data parallelism: use "
                            "optimizer_state: reset, or use_distributed_optimizer: false on both sides")
    if phases and phases[0].index == 0 and phases[0].lr.needs_checkpoint_lr and not recipe.base:
        problems.append(first_phase_lr_problem(phases[0].name, None, None))


# ---- files -------------------------------------------------------------------------------------

def _sources_used(config) -> list:
    """(source, field prefix) for every source that gets samples."""
    shares = knot_shares(config)
    out, n_main = [], len(config.sources)
    for j, source in enumerate(config.all_sources()):
        if shares[:, j].max() <= 0:
            continue  # never sampled: the dataset does not open it
        out.append((source, f"sources[{j}]" if j < n_main else f"replay.sources[{j - n_main}]"))
    return out


def check_files(recipe: RecipeConfig, phases: list, problems: list, hints: list) -> None:
    fields = {}   # (prefix, key) -> the fields that name it, in recipe order
    for phase in phases:
        spec = recipe.phases[phase.index] if recipe.phases else None
        data_field = f"phases[{phase.name}].data" if spec is not None and spec.data is not None else "data"
        for source, name in _sources_used(phase.data):
            for prefix, key in ((source.prefix, "prefix"), (source.mask_prefix, "loss_mask")):
                if prefix is None:
                    continue
                names = fields.setdefault((prefix, key), [])
                if f"{data_field}.{name}" not in names:
                    names.append(f"{data_field}.{name}")
    missing_any = False
    for (prefix, key), names in fields.items():
        missing = [prefix + ext for ext in (".bin", ".idx") if not os.path.isfile(prefix + ext)]
        if missing:
            missing_any = True
            also = f" (also {', '.join(n.split('.sources')[0].split('.replay')[0] for n in names[1:])})" \
                if len(names) > 1 else ""
            if key == "prefix":
                problems.append(f"{names[0]}.prefix={prefix!r}{also} is invalid: {' and '.join(missing)} not found")
            else:
                problems.append(f"{names[0]}.loss_mask=true{also} is invalid: its mask {' and '.join(missing)} "
                                "not found (write masks with `megamid data prepare --prompt-key` or `megamid data "
                                "synthetic`, or set loss_mask: false to score every token)")
    if missing_any:
        hints.append(f"relative data prefixes are read from the working directory {os.getcwd()}; "
                     "build indexed datasets with `megamid data prepare`")
    documents = {}   # eval documents path -> the phases that name it
    for phase in phases:
        for key in ("documents", "short_documents"):
            path = getattr(phase.eval, key) if phase.eval is not None else None
            if path:
                documents.setdefault(path, []).append(f"phases[{phase.name}].eval.{key}")
    for path, names in documents.items():
        if not (os.path.isfile(path) or all(os.path.isfile(path + ext) for ext in (".bin", ".idx"))):
            also = f" (also {', '.join(n.split('.eval')[0] for n in names[1:])})" if len(names) > 1 else ""
            problems.append(f"{names[0]}={path!r}{also} is invalid: no .npy/.npz file or indexed dataset "
                            "(.bin/.idx) there")
    if recipe.tokenizer != "byte" and not os.path.exists(recipe.tokenizer):
        problems.append(f"tokenizer={recipe.tokenizer!r} is invalid: no such file; valid: 'byte', a "
                        "sentencepiece .model, or a HF tokenizer.json (or its folder)")
    if recipe.base:
        _check_base(recipe, phases, problems)
    _check_resume(recipe, problems)


def checkpoint_state(path: str, field: str, on_corrupt: str = "fail") -> dict:
    """The megamid.json of checkpoint `path` (a checkpoint dir or one with a `latest` pointer). Files are
    checked by size only (no checksums): a plan reads just the model config, and training verifies fully
    when it loads the weights. Raises CheckpointError naming `field` and the bad file."""
    return read_state(resolve(path, field, on_corrupt, verify_fn=lambda p: verify(p, checksums=False)))


def _check_shapes(recipe: RecipeConfig, field: str, path: str, meta: dict, problems: list) -> None:
    saved = (meta.get("config") or {}).get("model")
    if not saved:
        return
    try:
        saved_model = build(ModelConfig, saved, f"{field}.model")
    except ConfigError as exc:
        problems.append(f"{field}={path!r}: its saved model config does not load: {exc}")
        return
    for name, a, b in model_differences(recipe.model, saved_model, SHAPE_FIELDS):
        problems.append(f"model.{name}={a!r} is invalid: the {field} checkpoint {path!r} has {name}={b!r}")


def _check_base(recipe: RecipeConfig, phases: list, problems: list) -> None:
    try:
        meta = checkpoint_state(recipe.base, "base")
    except CheckpointError as exc:
        problems.append(f"{exc} (convert HF weights with tools/convert_hf_to_megamid.py)")
        return
    _check_shapes(recipe, "base", recipe.base, meta, problems)
    first = phases[0] if phases and phases[0].index == 0 else None
    if first is not None and first.lr.needs_checkpoint_lr:
        problem = first_phase_lr_problem(first.name, recipe.base, meta)
        if problem:
            problems.append(problem)


def _check_resume(recipe: RecipeConfig, problems: list) -> None:
    """A checkpoint the run would resume from must have the recipe's shapes."""
    load = recipe.checkpoint.load
    if load == "none":
        return
    path = recipe.checkpoint.dir if load == "auto" else load
    if load == "auto" and not os.path.isfile(os.path.join(path, "latest")):
        return
    try:
        meta = checkpoint_state(path, "checkpoint.load" if load != "auto" else "checkpoint.dir",
                                recipe.checkpoint.on_corrupt)
    except CheckpointError as exc:
        problems.append(str(exc))
        return
    _check_shapes(recipe, "resume", path, meta, problems)
