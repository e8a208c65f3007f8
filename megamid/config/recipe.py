"""A recipe: the model, the base run settings, and optionally phases that override them one by one.

Without `phases`, the recipe is one phase named "main" of `training.train_steps` steps. Each phase may
override seq_len, batches, rope, data, lr, the parallel layout and its budget (steps or tokens). This
module checks each field on its own; `megamid.recipe` resolves the phases against the model and each
other (typed PhasePlans) and reports every cross-field problem at once.
"""

from dataclasses import dataclass, field
from typing import Any, Optional

from megamid.config.base import check_choice, check_positive, fail
from megamid.config.fp8 import Fp8Config
from megamid.config.model import ModelConfig
from megamid.config.parallel import ParallelConfig
from megamid.config.recompute import RecomputeConfig
from megamid.config.training import CheckpointConfig, TrainingConfig


@dataclass(frozen=True)
class PhaseConfig:
    """One phase as written in the recipe: None means "the recipe's value"."""

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
    recompute: Any = None                 # none | selective | full | {granularity, modules, method, num_layers}
    fp8: Optional[Any] = None             # null (BF16) | true | {format, recipe, amax_history_len, ...}

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            fail("phases.name", self.name, "a non-empty string")
        if (self.steps is None) == (self.tokens is None):
            fail(f"phases[{self.name}].steps", self.steps, "give exactly one of steps or tokens")
        for key in ("steps", "tokens", "seq_len", "global_batch_size", "micro_batch_size", "save_interval"):
            if getattr(self, key) is not None:
                check_positive(f"phases[{self.name}].{key}", getattr(self, key))
        check_choice(f"phases[{self.name}].optimizer_state", self.optimizer_state, ("carry", "reset"))
        RecomputeConfig.from_value(self.recompute, f"phases[{self.name}].recompute")
        Fp8Config.from_value(self.fp8, f"phases[{self.name}].fp8")


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

    def phase_specs(self) -> list[PhaseConfig]:
        """The phases as written; a recipe without `phases` is one phase "main" of training.train_steps."""
        return list(self.phases) or [PhaseConfig(name="main", steps=self.training.train_steps)]
