"""FP8 training of a phase through Transformer Engine (megatron's fp8 / fp8_recipe fields).

    fp8: {format: hybrid, recipe: tensorwise}                      # current scaling (Hopper and Blackwell)
    fp8: {format: hybrid, recipe: delayed, amax_history_len: 1024}
    fp8: {recipe: mxfp8, param_gather: true}                       # Blackwell only
    fp8: {recipe: tensorwise, bf16_layers_at_start: 1, bf16_layers_at_end: 1}

Hardware checks (FP8 needs TE and an FP8 GPU; MXFP8 needs Blackwell) belong to the plan
(megamid.recipe.fit), which knows the target GPU; this module validates each field alone.
"""

from dataclasses import dataclass
from typing import Optional

from megamid.config.base import check_choice, check_positive, fail

FORMATS = ("hybrid", "e4m3")          # hybrid: e4m3 forward, e5m2 gradients
RECIPES = ("tensorwise", "delayed", "blockwise", "mxfp8")


@dataclass(frozen=True)
class Fp8Config:
    format: str = "hybrid"
    recipe: str = "tensorwise"
    amax_history_len: int = 1         # delayed scaling's amax window (Megatron-LM runs use 1024)
    param_gather: bool = False        # keep FP8 weights: the distributed optimizer all-gathers FP8 (fp8_param)
    bf16_layers_at_start: int = 0     # the first N layers of the model stay in BF16
    bf16_layers_at_end: int = 0       # ... and the last N

    def __post_init__(self):
        check_choice("fp8.format", self.format, FORMATS)
        check_choice("fp8.recipe", self.recipe, RECIPES)
        for name in ("amax_history_len", "bf16_layers_at_start", "bf16_layers_at_end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                fail(f"fp8.{name}", value, "an integer")
        check_positive("fp8.amax_history_len", self.amax_history_len)
        check_positive("fp8.bf16_layers_at_start", self.bf16_layers_at_start, allow_zero=True)
        check_positive("fp8.bf16_layers_at_end", self.bf16_layers_at_end, allow_zero=True)
        if not isinstance(self.param_gather, bool):
            fail("fp8.param_gather", self.param_gather, "true or false")
        if self.recipe == "delayed" and (self.bf16_layers_at_start or self.bf16_layers_at_end):
            name = "bf16_layers_at_start" if self.bf16_layers_at_start else "bf16_layers_at_end"
            fail(f"fp8.{name}", getattr(self, name),
                 "megatron's delayed scaling cannot keep layers in BF16: use recipe tensorwise, or 0")
        if self.recipe != "delayed" and self.amax_history_len != 1:
            fail("fp8.amax_history_len", self.amax_history_len, f"only delayed scaling keeps an amax history "
                 f"(recipe {self.recipe} scales from the current tensor): leave it at 1")

    @classmethod
    def from_value(cls, value, field: str = "fp8") -> Optional["Fp8Config"]:
        """None / false: BF16; true: the default FP8 (hybrid, tensorwise); a mapping of the fields."""
        from megamid.config.base import ConfigError

        if value is None or value is False:
            return None
        if isinstance(value, Fp8Config):
            return value
        if value is True:
            return cls()
        if not isinstance(value, dict):
            raise ConfigError(f"{field}={value!r} is invalid: expected null, true or a mapping {{format, recipe, "
                              "amax_history_len, param_gather, bf16_layers_at_start, bf16_layers_at_end}")
        valid = ("format", "recipe", "amax_history_len", "param_gather", "bf16_layers_at_start", "bf16_layers_at_end")
        try:
            unknown = sorted(set(value) - set(valid))
            if unknown:
                fail(f"fp8.{unknown[0]}", value[unknown[0]], f"unknown key; valid: {', '.join(valid)}")
            return cls(**value)
        except ConfigError as exc:
            raise ConfigError(f"{field}: {exc}") from None

    @property
    def bf16_layers(self) -> int:
        return self.bf16_layers_at_start + self.bf16_layers_at_end

    def describe(self) -> str:
        return f"{self.recipe}/{self.format}" + ("+param" if self.param_gather else "")


def fp8_recompute_problem(fp8: Optional[Fp8Config], recompute) -> Optional[str]:
    """A problem line where megatron refuses the pair: delayed scaling with layernorm recompute
    (output-discarding checkpoints need current scaling), else None."""
    modules = getattr(recompute, "modules", ()) if getattr(recompute, "granularity", "none") == "selective" else ()
    if fp8 is not None and fp8.recipe == "delayed" and "layernorm" in modules:
        return ("fp8.recipe='delayed' is invalid with recompute modules [layernorm]: megatron's delayed scaling "
                "cannot rebuild discarded norm outputs; use recipe tensorwise, or drop layernorm from recompute")
    return None
