"""The resolved plan of a recipe: typed PhasePlans that `train`, `plan`, `eval`, export and averaging consume.

    plan = plan_recipe(load_recipe("recipe.yaml"), world_size=8)   # raises ConfigError listing every problem
    for phase in plan.phases: phase.rope_scaling, phase.data, phase.lr, phase.eval, phase.parallel, phase.steps

Each phase is resolved once against the recipe's defaults into typed parts (RopeScaling, DataConfig,
LRSchedule, EvalConfig, ParallelConfig, budget in steps and tokens); then every check that can run before
training runs (megamid.recipe.checks). Every problem names the phase and field, the value and what would
be valid (`phases[ctx32k].seq_len=65536 is invalid: ...`), and all are reported at once. Pure: reads the
recipe and the file system (data files, base and resume checkpoints, tokenizer); no torch.distributed,
no model.
"""

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

from megamid.config import ConfigError, EvalConfig, ParallelConfig, RecipeConfig, TrainingConfig, build, to_dict
from megamid.config.data import DataConfig
from megamid.config.fp8 import Fp8Config
from megamid.config.recompute import RecomputeConfig
from megamid.config.eval import eval_rope
from megamid.config.parallel import check_layout
from megamid.data.mixture_plan import knot_shares, stream_names
from megamid.optim.schedules import LRSchedule, lr_at
from megamid.recipe.limits import check_phase_sizes
from megamid.rope import RopeScaling, model_rope_scaling


@dataclass(frozen=True)
class PhasePlan:
    """One phase with every setting resolved and typed, its budget, LR segment, mixture and layout."""

    index: int
    name: str
    where: str                           # how errors name it: "phases[NAME]" (or "training" without phases)
    steps: int
    training: TrainingConfig             # seq_len, batches, optimizer settings (its `lr` is the raw mapping)
    parallel: ParallelConfig
    rope: dict                           # the rope mapping (what checkpoints record)
    rope_scaling: RopeScaling
    data: DataConfig
    lr: LRSchedule                       # start_lr may still be "from_checkpoint": the trainer resolves it
    optimizer_state: str
    save_interval: Optional[int]
    eval: Optional[EvalConfig]
    recompute: RecomputeConfig = RecomputeConfig()
    fp8: Optional[Fp8Config] = None      # None: BF16 (or the model's dtype)
    budget_tokens: Optional[int] = None  # `tokens:` as written (steps round it up)
    start_tokens: int = 0                # cumulative tokens before this phase
    data_parallel_size: int = 0          # at the plan's world size (0: the layout does not fit it)
    lr_start: Optional[float] = None     # LR of the first update (None: start_lr from the checkpoint)
    lr_end: Optional[float] = None       # LR of the last update
    shares_start: dict = field(default_factory=dict)   # {source: share} at the phase's first sample
    shares_end: dict = field(default_factory=dict)     # ... and at its last

    @property
    def seq_len(self) -> int:
        return self.training.seq_len

    @property
    def tokens_per_step(self) -> int:
        return self.training.global_batch_size * self.training.seq_len

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def engine(self) -> tuple:
        """What the model is built for: a change between phases rebuilds it (and reloads the weights)."""
        return self.parallel, self.recompute, self.fp8

    @property
    def eval_interval(self) -> Optional[int]:
        return self.eval.interval if self.eval is not None else None

    def evaluates_at(self, step: int) -> bool:
        """Whether the phase evaluates after its `step`-th update (1-based): at its end and every interval."""
        if self.eval is None:
            return False
        return step == self.steps or bool(self.eval.interval and step % self.eval.interval == 0)

    @property
    def layout(self) -> str:
        p = self.parallel
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

    @property
    def names(self) -> list:
        return [p.name for p in self.phases]

    def phase(self, name: str) -> PhasePlan:
        for p in self.phases:
            if p.name == name:
                return p
        raise ConfigError(f"phase {name!r} is invalid: the recipe's phases are {', '.join(self.names)}")


# ---- resolution -------------------------------------------------------------------------------

def _resolve_phase(recipe: RecipeConfig, i: int, spec) -> PhasePlan:
    """The phase `spec` resolved against the recipe; raises ConfigError naming its field."""
    where = f"phases[{spec.name}]" if recipe.phases else "training"
    overrides = {k: getattr(spec, k) for k in ("seq_len", "global_batch_size", "micro_batch_size", "lr")
                 if getattr(spec, k) is not None}
    try:
        training = dataclasses.replace(recipe.training, **overrides)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    lr = LRSchedule.from_dict(training.lr, f"{where}.lr")
    steps = spec.steps if spec.tokens is None else -(-spec.tokens // (training.global_batch_size * training.seq_len))
    parallel = recipe.parallel
    if spec.parallel:
        parallel = build(ParallelConfig, {**to_dict(recipe.parallel), **spec.parallel}, f"{where}.parallel")
    check_layout(recipe.model, parallel, f"{where}.parallel" if spec.parallel else "parallel")
    rope = dict(spec.rope if spec.rope is not None else recipe.model.rope)
    rope_field = f"{where}.rope" if spec.rope is not None else "model.rope"
    rope_scaling = rope_scaling_for(recipe.model, rope, rope_field)
    data = spec.data if spec.data is not None else recipe.data
    if not data:
        raise ConfigError(f"{where}.data={data!r} is invalid: a mapping with sources: [{{name, prefix, weight}}, ...]")
    try:
        data = DataConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    eval_cfg = EvalConfig.from_mapping(spec.name, spec.eval) if spec.eval is not None else None
    if eval_cfg is not None and eval_cfg.rope is not None:  # the full check needs the model's head dim
        rope_scaling_for(recipe.model, eval_rope(rope, eval_cfg.rope), f"phases[{spec.name}].eval.rope")
    recompute = RecomputeConfig.from_value(spec.recompute if spec.recompute is not None else training.recompute,
                                           f"{where}.recompute" if spec.recompute is not None else "training.recompute")
    fp8 = Fp8Config.from_value(spec.fp8, f"{where}.fp8")
    return PhasePlan(i, spec.name, where, steps, training, parallel, rope, rope_scaling, data, lr,
                     spec.optimizer_state, spec.save_interval or recipe.checkpoint.save_interval, eval_cfg,
                     recompute=recompute, fp8=fp8, budget_tokens=spec.tokens)


def rope_scaling_for(model, rope: dict, where: str) -> RopeScaling:
    """The RopeScaling of `rope` at the model's head dim; errors name `where`."""
    return model_rope_scaling(model, rope, where)


def _lr_range(phase: PhasePlan):
    schedule = phase.lr
    if schedule.needs_checkpoint_lr:
        schedule = schedule.resolve(float("nan"))   # values that depend on the checkpoint's LR show as "ckpt"
    values = []
    for step in (0, phase.steps - 1):
        try:
            value = lr_at(schedule, step, phase.steps)
        except ConfigError:
            value = float("nan")   # a budget problem, reported by the checks
        values.append(None if value != value else value)
    return values


def resolve_phases(recipe: RecipeConfig, problems: list) -> list:
    """Every phase that resolves, in order, with cumulative tokens, LR range and mixture shares; the
    problems of the others are appended to `problems`."""
    try:
        rope_scaling_for(recipe.model, recipe.model.rope, "model.rope")
    except ConfigError as exc:
        problems.append(str(exc))
    phases, start = [], 0
    for i, spec in enumerate(recipe.phase_specs()):
        try:
            phase = _resolve_phase(recipe, i, spec)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        names, shares = stream_names(phase.data), knot_shares(phase.data)
        lr_start, lr_end = _lr_range(phase)
        phase = dataclasses.replace(phase, start_tokens=start, lr_start=lr_start, lr_end=lr_end,
                                    shares_start=dict(zip(names, shares[0].tolist())),
                                    shares_end=dict(zip(names, shares[1].tolist())))
        phases.append(phase)
        start += phase.tokens
    return phases


def default_world_size(phases: list) -> int:
    """The smallest world every phase's TP x PP x CP divides (DP = world / that)."""
    return math.lcm(*(p.parallel.model_parallel_size for p in phases)) if phases else 1


def plan_recipe(recipe: RecipeConfig, world_size: Optional[int] = None, check_files: bool = True) -> RecipePlan:
    """Resolves and validates `recipe` for a launch of `world_size` processes (default: the smallest that
    fits) and returns its plan. Raises ConfigError naming every problem found."""
    from megamid.recipe import checks

    if world_size is not None and (isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1):
        raise ConfigError(f"world_size={world_size!r} is invalid: expected an integer >= 1")
    problems, hints, notes = [], [], []
    phases = resolve_phases(recipe, problems)
    problems += check_phase_sizes(recipe.model, phases)   # absurd sizes, refused with their estimate
    if world_size is None:
        world_size = default_world_size(phases)
    rows = []
    for phase in phases:
        dp = checks.check_phase(recipe, phase, world_size, problems, notes)
        rows.append(dataclasses.replace(phase, data_parallel_size=dp))
    checks.check_sequence(recipe, rows, problems)
    if check_files:
        checks.check_files(recipe, rows, problems, hints)
    if problems:
        head = f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in recipe {recipe.name!r}:"
        raise ConfigError(head + "".join(f"\n  {p}" for p in problems) + "".join(f"\n  ({h})" for h in hints))
    return RecipePlan(recipe, world_size, rows, notes)


def load_plan(path: str, overrides=(), world_size: Optional[int] = None, check_files: bool = True) -> RecipePlan:
    """The plan of the recipe file at `path` with `key.sub=value` overrides."""
    from megamid.config import load_recipe

    return plan_recipe(load_recipe(path, overrides), world_size, check_files)
