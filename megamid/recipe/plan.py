"""The phase plan of a recipe: every check that can run before training, and the table `megamid plan` prints.

    plan = plan_recipe(load_recipe("recipe.yaml"), world_size=8)   # raises ConfigError listing every problem
    print(format_table(plan))

Pure: reads the recipe, the file system (data files, base checkpoint, tokenizer) and nothing else;
no torch.distributed, no megatron model. A problem names the phase and field, the value and what
would be valid (`phases[ctx32k].seq_len=65536 is invalid: ...`); all problems are reported at once.
"""

import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional

from megamid.config import ConfigError, ModelConfig, RecipeConfig
from megamid.config.data import DataConfig
from megamid.config.recipe import Phase
from megamid.data.mixture_plan import knot_shares, stream_names
from megamid.optim.schedules import LRSchedule, lr_at

# Model fields that decide the weights' shapes: a base checkpoint must match them (rope, dtype and
# dropout may change between the base and the recipe).
SHAPE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "query_groups", "head_dim", "ffn_size",
                "vocab_size", "tie_embeddings", "normalization", "activation", "add_bias_linear", "add_qkv_bias",
                "qk_layernorm")
# Rope types whose positions are bounded by original_max_position_embeddings * factor.
_BOUNDED_TYPES = ("linear", "ntk", "yarn", "longrope", "llama3")


@dataclass(frozen=True)
class PhasePlan:
    """One row of the plan: a resolved phase with its budget, LR segment, mixture and layout."""

    phase: Phase
    start_tokens: int                    # cumulative tokens before this phase
    lr_start: Optional[float]            # LR of the first update (None: start_lr from the checkpoint)
    lr_end: Optional[float]              # LR of the last update
    shares_start: dict                   # {source: share} at the phase's first sample
    shares_end: dict                     # ... and at its last
    data_parallel_size: int
    rope: str                            # a short description: type and key numbers

    @property
    def name(self) -> str:
        return self.phase.name

    @property
    def steps(self) -> int:
        return self.phase.steps

    @property
    def tokens(self) -> int:
        return self.phase.steps * self.phase.tokens_per_step

    @property
    def seq_len(self) -> int:
        return self.phase.training.seq_len

    @property
    def layout(self) -> str:
        p = self.phase.parallel
        pp = f"PP{p.pipeline_model_parallel_size}"
        if p.virtual_pipeline_model_parallel_size:
            pp += f"(v{p.virtual_pipeline_model_parallel_size})"
        return f"TP{p.tensor_model_parallel_size}x{pp}xCP{p.context_parallel_size}xDP{self.data_parallel_size}"


@dataclass(frozen=True)
class RecipePlan:
    recipe: RecipeConfig
    world_size: int
    phases: list
    notes: list = field(default_factory=list)   # not errors: things worth a second look

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    @property
    def total_tokens(self) -> int:
        return sum(p.tokens for p in self.phases)


# ---- checks ------------------------------------------------------------------------------------

def _where(recipe: RecipeConfig, phase: Phase) -> str:
    return f"phases[{phase.name}]" if recipe.phases else "training"


def _field(recipe: RecipeConfig, phase: Phase, key: str, section: str = "training") -> str:
    """Where the phase's `key` is set: `phases[NAME].key`, or `phases[NAME]: training.key` when inherited."""
    if not recipe.phases:
        return f"{section}.{key}"
    if getattr(recipe.phases[phase.index], key) is not None:
        return f"phases[{phase.name}].{key}"
    return f"phases[{phase.name}]: {section}.{key}"


def default_world_size(recipe: RecipeConfig) -> int:
    """The smallest world every phase's TP x PP x CP divides (DP = world / that)."""
    return math.lcm(*(p.parallel.model_parallel_size for p in recipe.resolved_phases()))


def _check_layout(recipe: RecipeConfig, phase: Phase, world_size: int, problems: list) -> int:
    """Divisibilities of one phase at `world_size`; returns its data-parallel size (0 if invalid)."""
    p, t = phase.parallel, phase.training
    parallel = _field(recipe, phase, "parallel", "").replace(": .", ": ")  # parallel is top-level, not training.*
    mp = p.model_parallel_size
    if world_size % mp:
        problems.append(f"{parallel}: TP={p.tensor_model_parallel_size} x PP={p.pipeline_model_parallel_size} "
                        f"x CP={p.context_parallel_size} = {mp} does not divide the world size {world_size}; "
                        f"launch a multiple of {mp} processes (or change the layout)")
        return 0
    dp = world_size // mp
    if t.global_batch_size % (t.micro_batch_size * dp):
        problems.append(f"{_field(recipe, phase, 'global_batch_size')}={t.global_batch_size} is invalid at world size {world_size}: "
                        f"must be divisible by micro_batch_size x DP = {t.micro_batch_size} x {dp} = "
                        f"{t.micro_batch_size * dp}")
    cp = p.context_parallel_size
    if cp > 1 and t.seq_len % (2 * cp):
        problems.append(f"{_field(recipe, phase, 'seq_len')}={t.seq_len} is invalid with context_parallel_size={cp}: load-balanced "
                        f"context parallelism splits a sequence into 2 x CP = {2 * cp} chunks; use a multiple of {2 * cp}")
    if p.sequence_parallel and t.seq_len % (p.tensor_model_parallel_size * cp):
        problems.append(f"{_field(recipe, phase, 'seq_len')}={t.seq_len} is invalid with sequence_parallel: must be divisible by "
                        f"TP x CP = {p.tensor_model_parallel_size * cp}")
    return dp


def rope_limit(model: ModelConfig, rope: dict) -> Optional[int]:
    """The longest sequence `rope` covers on `model`, or None where the method has no bound (dynamic
    NTK grows its base with the length; ABF, a larger theta than the model's, has no formula)."""
    scaling = model.rope_scaling(rope, "rope")
    if scaling.type == "default":
        base_theta = float(model.rope.get("theta", 10000.0))
        return None if scaling.theta > base_theta else model.max_position_embeddings
    if scaling.type not in _BOUNDED_TYPES:
        return None
    original = getattr(scaling, "original_max_position_embeddings", model.max_position_embeddings)
    return int(original * scaling.factor)


def describe_rope(model: ModelConfig, rope: dict) -> str:
    s = model.rope_scaling(rope, "rope")
    parts = [s.type]
    factor = getattr(s, "factor", None)
    if factor is not None:
        parts.append(f"x{factor:g}")
    original = getattr(s, "original_max_position_embeddings", None)
    if original is not None:
        parts.append(f"of {original}")
    parts.append(f"theta={s.theta:g}")
    if s.attention_factor != 1.0:
        parts.append(f"attn={s.attention_factor:.3f}")
    return " ".join(parts)


def _check_rope(where: str, recipe: RecipeConfig, phase: Phase, problems: list) -> None:
    limit = rope_limit(recipe.model, phase.rope)
    seq_len = phase.training.seq_len
    if limit is None or seq_len <= limit:
        return
    rope_field = f"{where}.rope" if recipe.phases and recipe.phases[phase.index].rope is not None else "model.rope"
    kind = phase.rope.get("type", "default")
    if kind in ("default", "abf"):
        theta = recipe.model.rope_scaling(phase.rope, rope_field).theta
        valid = (f"{rope_field} (default, theta={theta:g}) covers model.max_position_embeddings="
                 f"{recipe.model.max_position_embeddings} positions; to extend, give the phase a rope with a larger "
                 f"theta (abf) or a scaling type, e.g. {{type: yarn, factor: "
                 f"{_factor_for(seq_len, recipe.model.max_position_embeddings)}, "
                 f"original_max_position_embeddings: {recipe.model.max_position_embeddings}}}")
    else:
        scaling = recipe.model.rope_scaling(phase.rope, rope_field)
        original = getattr(scaling, "original_max_position_embeddings", recipe.model.max_position_embeddings)
        valid = (f"{rope_field} ({kind} factor={scaling.factor:g} x original {original}) covers {limit} positions; "
                 f"use seq_len <= {limit} or factor >= {_factor_for(seq_len, original)}")
    problems.append(f"{_field(recipe, phase, 'seq_len')}={seq_len} is invalid: {valid}")


def _factor_for(seq_len: int, original: int) -> str:
    return f"{seq_len / original:g}"


def _check_budget(recipe: RecipeConfig, phase: Phase, spec, problems: list) -> None:
    schedule = LRSchedule.from_dict(phase.training.lr, _field(recipe, phase, "lr"))
    try:
        schedule.check_budget(phase.steps)
    except ConfigError as exc:
        problems.append(f"{_field(recipe, phase, 'lr')}.{exc} (the phase has {phase.steps} steps)")
    per_step = phase.tokens_per_step
    if spec is not None and spec.tokens is not None and spec.tokens < per_step:
        problems.append(f"phases[{phase.name}].tokens={spec.tokens} is invalid: less than one global batch "
                        f"(global_batch_size x seq_len = {phase.training.global_batch_size} x "
                        f"{phase.training.seq_len} = {per_step} tokens); give tokens >= {per_step}")


def _sources_used(config: DataConfig) -> list:
    """(index in all_sources, source, field prefix) for every source that gets samples."""
    shares = knot_shares(config)
    out = []
    n_main = len(config.sources)
    for j, source in enumerate(config.all_sources()):
        if shares[:, j].max() <= 0:
            continue  # never sampled: the dataset does not open it
        field_name = f"sources[{j}]" if j < n_main else f"replay.sources[{j - n_main}]"
        out.append((source, field_name))
    return out


def _check_files(recipe: RecipeConfig, phases: list, problems: list, hints: list) -> None:
    fields = {}   # prefix -> the fields that name it, in recipe order
    for phase in phases:
        spec = recipe.phases[phase.index] if recipe.phases else None
        data_field = f"phases[{phase.name}].data" if spec is not None and spec.data is not None else "data"
        for source, field_name in _sources_used(DataConfig.from_dict(phase.data)):
            names = fields.setdefault(source.prefix, [])
            if f"{data_field}.{field_name}" not in names:
                names.append(f"{data_field}.{field_name}")
    missing_any = False
    for prefix, names in fields.items():
        missing = [prefix + ext for ext in (".bin", ".idx") if not os.path.isfile(prefix + ext)]
        if missing:
            missing_any = True
            also = f" (also {', '.join(n.split('.sources')[0].split('.replay')[0] for n in names[1:])})" \
                if len(names) > 1 else ""
            problems.append(f"{names[0]}.prefix={prefix!r}{also} is invalid: {' and '.join(missing)} not found")
    if missing_any:
        hints.append(f"relative data prefixes are read from the working directory {os.getcwd()}; "
                        "build indexed datasets with `megamid data prepare`")
    documents = {}   # eval documents path -> the phases that name it
    for phase in phases:
        for key in ("documents", "short_documents"):
            path = (phase.eval or {}).get(key)
            if isinstance(path, str):
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
        _check_base(recipe, problems)


def _base_state(base: str) -> Optional[str]:
    """Path of the megamid.json of checkpoint `base` (a checkpoint dir or one with a `latest` pointer)."""
    latest = os.path.join(base, "latest")
    if os.path.isfile(latest):
        with open(latest) as f:
            base = os.path.join(base, f.read().strip())
    state = os.path.join(base, "megamid.json")
    return state if os.path.isfile(state) else None


def _check_base(recipe: RecipeConfig, problems: list) -> None:
    state = _base_state(recipe.base)
    if state is None:
        problems.append(f"base={recipe.base!r} is invalid: not a megamid checkpoint (expected a directory with "
                        "megamid.json, or one with a 'latest' pointer; convert HF weights with "
                        "tools/convert_hf_to_megamid.py)")
        return
    with open(state) as f:
        meta = json.load(f)
    first = recipe.resolved_phases()[0]
    if LRSchedule.from_dict(first.training.lr, f"{_where(recipe, first)}.lr").needs_checkpoint_lr:
        from megamid.checkpoint.record import first_phase_lr_problem

        problem = first_phase_lr_problem(first.name, recipe.base, meta)
        if problem:
            problems.append(problem)
    saved = (meta.get("config") or {}).get("model")
    if not saved:
        return
    from megamid.config import build

    try:
        base_model = build(ModelConfig, saved, "base.model")
    except ConfigError as exc:
        problems.append(f"base={recipe.base!r}: its saved model config does not load: {exc}")
        return
    for name, a, b in model_differences(recipe.model, base_model, SHAPE_FIELDS):
        problems.append(f"model.{name}={a!r} is invalid: the base checkpoint {recipe.base!r} has {name}={b!r}")


def model_differences(a: ModelConfig, b: ModelConfig, fields=None) -> list:
    """[(field, a's value, b's value)] where two model configs differ (all dataclass fields by default;
    `fields` may name properties such as ffn_size, which resolve defaults)."""
    import dataclasses

    names = fields or [f.name for f in dataclasses.fields(ModelConfig)]
    return [(n, getattr(a, n), getattr(b, n)) for n in names if getattr(a, n) != getattr(b, n)]


# ---- the plan ----------------------------------------------------------------------------------

def _lr_range(phase: Phase, where: str):
    schedule = LRSchedule.from_dict(phase.training.lr, f"{where}.lr")
    last = phase.steps - 1
    if schedule.needs_checkpoint_lr:
        # Values that depend on the checkpoint's LR come out NaN and are shown as "ckpt".
        schedule = schedule.resolve(float("nan"))
    values = []
    for step in (0, last):
        try:
            value = lr_at(schedule, step, phase.steps)
        except ConfigError:
            value = float("nan")   # a budget problem, reported by _check_budget
        values.append(None if value != value else value)
    return values


def plan_recipe(recipe: RecipeConfig, world_size: Optional[int] = None, check_files: bool = True) -> RecipePlan:
    """Validates `recipe` for a launch of `world_size` processes (default: the smallest that fits) and
    returns its plan. Raises ConfigError naming every problem found."""
    phases = recipe.resolved_phases()
    if world_size is None:
        world_size = default_world_size(recipe)
    problems, hints, notes, rows = [], [], [], []
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world_size={world_size!r} is invalid: expected an integer >= 1")
    start = 0
    for phase in phases:
        where = _where(recipe, phase)
        spec = recipe.phases[phase.index] if recipe.phases else None
        dp = _check_layout(recipe, phase, world_size, problems)
        _check_rope(where, recipe, phase, problems)
        _check_budget(recipe, phase, spec, problems)
        if phase.index == 0 and not recipe.base and LRSchedule.from_dict(phase.training.lr, where).needs_checkpoint_lr:
            from megamid.checkpoint.record import first_phase_lr_problem

            problems.append(first_phase_lr_problem(phase.name, None, None))
        if phase.eval is not None:
            from megamid.eval.in_loop import check_eval_config  # pure: no torch

            try:
                check_eval_config(phase.name, phase.eval)
            except ConfigError as exc:
                problems.append(str(exc))
        if spec is not None and spec.tokens is not None and phase.steps * phase.tokens_per_step > spec.tokens * 1.01:
            notes.append(f"{where}.tokens={spec.tokens} rounds up to {phase.steps} steps = "
                         f"{phase.steps * phase.tokens_per_step} tokens")
        config = DataConfig.from_dict(phase.data)
        names, shares = stream_names(config), knot_shares(config)
        lr_start, lr_end = _lr_range(phase, where)
        rows.append(PhasePlan(phase, start, lr_start, lr_end, dict(zip(names, shares[0].tolist())),
                              dict(zip(names, shares[1].tolist())), dp, describe_rope(recipe.model, phase.rope)))
        start += phase.steps * phase.tokens_per_step
    if check_files:
        _check_files(recipe, phases, problems, hints)
    if problems:
        head = f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in recipe {recipe.name!r}:"
        raise ConfigError(head + "".join(f"\n  {p}" for p in problems) + "".join(f"\n  ({h})" for h in hints))
    return RecipePlan(recipe, world_size, rows, notes)


# ---- printing ----------------------------------------------------------------------------------

def human(n: float) -> str:
    """1234 -> 1.2K, 3.4e9 -> 3.4B."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:g}"


def _lr(value: Optional[float]) -> str:
    if value is None:
        return "ckpt"
    return "0" if value == 0 else f"{value:.2e}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}"


def describe_mix(row: PhasePlan) -> str:
    parts = []
    for name, a in row.shares_start.items():
        b = row.shares_end[name]
        if a == 0 and b == 0:
            continue
        parts.append(f"{name} {_pct(a)}%" if abs(a - b) < 5e-4 else f"{name} {_pct(a)}->{_pct(b)}%")
    return ", ".join(parts)


def table_rows(plan: RecipePlan) -> list:
    header = ["phase", "steps", "tokens", "seq_len", "layout", "rope", "LR first->last", "mix"]
    rows = [header]
    for r in plan.phases:
        rows.append([r.name, str(r.steps), human(r.tokens), str(r.seq_len), r.layout, r.rope,
                     f"{_lr(r.lr_start)}->{_lr(r.lr_end)}", describe_mix(r)])
    rows.append(["total", str(plan.total_steps), human(plan.total_tokens), "", "", "", "", ""])
    return rows


def format_table(plan: RecipePlan) -> str:
    """The plan as an aligned text table with a heading line and notes."""
    recipe = plan.recipe
    m = recipe.model
    lines = [f"recipe {recipe.name}: {human(m.num_parameters())} parameters ({m.num_layers} layers, hidden "
             f"{m.hidden_size}, {m.num_attention_heads} heads / {m.query_groups} KV), {m.dtype}, world size "
             f"{plan.world_size}, base {recipe.base or 'none (random init)'}, tokenizer {recipe.tokenizer}"]
    rows = table_rows(plan)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = {1, 2, 3}
    for k, row in enumerate(rows):
        if k == len(rows) - 1:
            lines.append("  ".join("-" * w for w in widths))
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)
