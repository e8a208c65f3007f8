"""Activation recomputation of a phase: none, selective (chosen submodules) or full (whole layers).

    recompute: full                                        # uniform, one layer per unit
    recompute: {granularity: full, method: block, num_layers: 4}
    recompute: {granularity: selective, modules: [layernorm, mlp]}
    recompute: {granularity: offload, num_layers: 24}     # activations of the first 24 layers go to host memory

Maps onto megatron's TransformerConfig recompute_granularity / recompute_method / recompute_num_layers /
recompute_modules, or for `offload` onto its cpu_offloading fields (activations only; megatron refuses it with
recomputation or pipeline parallelism) (megamid.model.engine_config); megamid.recipe.memory estimates what
each mode keeps.
"""

from dataclasses import dataclass
from typing import Optional

from megamid.config.base import check_choice, check_positive, fail

GRANULARITIES = ("none", "selective", "full", "offload")
METHODS = ("uniform", "block")
# megatron-core's recompute_modules that apply to a dense decoder (the MoE/MLA ones need those layers).
MODULES = ("core_attn", "layernorm", "mlp")


@dataclass(frozen=True)
class RecomputeConfig:
    granularity: str = "none"
    modules: tuple = ("core_attn",)     # selective: the submodules recomputed in backward
    method: str = "uniform"             # full: uniform (every layer, in units) | block (the first num_layers per stage)
    num_layers: int = 1                 # full: layers per unit (uniform) or layers recomputed per stage (block);
                                        # offload: layers whose activations are offloaded

    def __post_init__(self):
        check_choice("recompute.granularity", self.granularity, GRANULARITIES)
        if isinstance(self.modules, str) or not isinstance(self.modules, (list, tuple)):
            fail("recompute.modules", self.modules, f"a list drawn from {', '.join(MODULES)}")
        object.__setattr__(self, "modules", tuple(self.modules))
        for module in self.modules:
            check_choice("recompute.modules", module, MODULES)
        if self.granularity == "selective" and not self.modules:
            fail("recompute.modules", list(self.modules), f"selective recompute needs at least one of "
                 f"{', '.join(MODULES)} (or granularity: none)")
        check_choice("recompute.method", self.method, METHODS)
        if isinstance(self.num_layers, bool) or not isinstance(self.num_layers, int):
            fail("recompute.num_layers", self.num_layers, "an integer >= 1")
        check_positive("recompute.num_layers", self.num_layers)

    @classmethod
    def from_value(cls, value, field: str = "recompute") -> "RecomputeConfig":
        """From a recipe value: None / 'none' | 'selective' | 'full' / a mapping of the fields / a RecomputeConfig."""
        from megamid.config.base import ConfigError

        if isinstance(value, RecomputeConfig):
            return value
        if value is None:
            return cls()
        try:
            if isinstance(value, str):
                return cls(granularity=value)
            if isinstance(value, dict):
                unknown = sorted(set(value) - {"granularity", "modules", "method", "num_layers"})
                if unknown:
                    fail(f"recompute.{unknown[0]}", value[unknown[0]],
                         "unknown key; valid: granularity, modules, method, num_layers")
                return cls(**value)
        except ConfigError as exc:
            raise ConfigError(f"{field}: {exc}") from None
        raise ConfigError(f"{field}={value!r} is invalid: expected none, selective, full, offload or a mapping "
                          "{granularity, modules, method, num_layers}")

    def describe(self) -> str:
        if self.granularity == "selective":
            return "selective(" + ",".join(self.modules) + ")"
        if self.granularity == "full":
            return f"full({self.method} {self.num_layers})"
        if self.granularity == "offload":
            return f"offload({self.num_layers})"
        return "none"


def layers_per_stage_check(config: Optional[RecomputeConfig], layers_per_stage: int, field: str) -> Optional[str]:
    """A problem line when a full recompute asks for more layers than a pipeline stage holds, else None."""
    if config is None or config.granularity != "full" or config.num_layers <= layers_per_stage:
        return None
    return (f"{field}.num_layers={config.num_layers} is invalid: a pipeline stage holds {layers_per_stage} layers; "
            f"use num_layers <= {layers_per_stage}")
