"""A recipe: the model, the base run settings, and optionally phases that override them one by one.

Without `phases`, the recipe is one phase named "main" of `training.train_steps` steps. Each phase may
override seq_len, batches, rope, data, lr, the parallel layout and its budget (steps or tokens).
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from megamid.config.base import ConfigError, check_choice, check_positive, fail
from megamid.config.model import ModelConfig
from megamid.config.parallel import ParallelConfig
from megamid.config.training import CheckpointConfig, TrainingConfig


@dataclass(frozen=True)
class PhaseConfig:
    name: str
    steps: Optional[int] = None
    tokens: Optional[int] = None
    seq_len: Optional[int] = None
    global_batch_size: Optional[int] = None
    micro_batch_size: Optional[int] = None
    rope: Optional[dict] = None
    data: Optional[dict] = None
    lr: Optional[dict] = None
    parallel: Optional[dict] = None
    optimizer_state: str = "carry"        # carry | reset (fresh Adam moments at the phase start)
    save_interval: Optional[int] = None
    eval: Optional[dict] = None

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            fail("phases.name", self.name, "a non-empty string")
        if (self.steps is None) == (self.tokens is None):
            fail(f"phases[{self.name}].steps", self.steps, "give exactly one of steps or tokens")
        for key in ("steps", "tokens", "seq_len", "global_batch_size", "micro_batch_size", "save_interval"):
            if getattr(self, key) is not None:
                check_positive(f"phases[{self.name}].{key}", getattr(self, key))
        check_choice(f"phases[{self.name}].optimizer_state", self.optimizer_state, ("carry", "reset"))
        if self.eval is not None:
            from megamid.eval.in_loop import check_eval_config

            check_eval_config(self.name, self.eval)


@dataclass(frozen=True)
class Phase:
    """A phase with every setting resolved against the recipe's defaults."""

    index: int
    name: str
    steps: int
    training: TrainingConfig
    parallel: ParallelConfig
    rope: dict
    data: dict
    optimizer_state: str
    save_interval: Optional[int]
    eval: Optional[dict]

    @property
    def tokens_per_step(self) -> int:
        return self.training.global_batch_size * self.training.seq_len


@dataclass(frozen=True)
class RecipeConfig:
    model: ModelConfig
    training: TrainingConfig
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    data: dict = field(default_factory=dict)
    name: str = "megamid"
    tokenizer: str = "byte"                  # byte | a sentencepiece .model | a HF tokenizer.json
    base: Optional[str] = None               # a megamid checkpoint to start from (weights only)
    phases: list[PhaseConfig] = field(default_factory=list)

    def __post_init__(self):
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            fail("phases", names, "phase names must be unique")
        self.resolved_phases()  # validates every phase against the model

    def resolved_phases(self) -> list[Phase]:
        from megamid.model.builder import validate_layout

        specs = self.phases or [PhaseConfig(name="main", steps=self.training.train_steps)]
        phases = []
        for i, spec in enumerate(specs):
            where = f"phases[{spec.name}]" if self.phases else "training"
            overrides = {k: getattr(spec, k) for k in ("seq_len", "global_batch_size", "micro_batch_size", "lr")
                         if getattr(spec, k) is not None}
            try:
                training = dataclasses.replace(self.training, **overrides)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            from megamid.optim.schedules import LRSchedule

            LRSchedule.from_dict(training.lr, f"{where}.lr")
            if spec.tokens is not None:
                steps = -(-spec.tokens // (training.global_batch_size * training.seq_len))
            else:
                steps = spec.steps
            parallel = self.parallel
            if spec.parallel:
                from megamid.config.loader import build, to_dict

                parallel = build(ParallelConfig, {**to_dict(self.parallel), **spec.parallel}, f"{where}.parallel")
            validate_layout(self.model, parallel, f"{where}.parallel" if spec.parallel else "parallel")
            rope = spec.rope if spec.rope is not None else self.model.rope
            if spec.rope is not None:
                self.model.rope_scaling(spec.rope, f"{where}.rope")
            if training.seq_len > self.model.max_position_embeddings and spec.rope is None and not self.phases:
                fail(f"{where}.seq_len", training.seq_len,
                     f"must be <= model.max_position_embeddings={self.model.max_position_embeddings}")
            data = spec.data if spec.data is not None else self.data
            from megamid.config.data import DataConfig

            if not data:
                fail(f"{where}.data", data, "a mapping with sources: [{name, prefix, weight}, ...]")
            try:
                DataConfig.from_dict(data)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            if phases and phases[-1].parallel != parallel and spec.optimizer_state == "carry" and (
                    parallel.use_distributed_optimizer or phases[-1].parallel.use_distributed_optimizer):
                fail(f"{where}.optimizer_state", "carry", "the parallel layout changes at this phase and the "
                     "distributed optimizer's state reshards only across data parallelism: use "
                     "optimizer_state: reset, or use_distributed_optimizer: false on both sides")
            phases.append(Phase(i, spec.name, steps, training, parallel, rope, data, spec.optimizer_state,
                                spec.save_interval or self.checkpoint.save_interval, spec.eval))
        return phases
