"""Learning-rate schedules as pure functions of (schedule, step, total_steps); no torch, no megatron.

A phase's schedule is linear warmup from `start_lr` to `peak_lr` over `warmup_steps`, then one of:

  constant      peak_lr
  linear        peak_lr -> min_lr, linearly, from the end of warmup to total_steps
  cosine        peak_lr -> min_lr, half a cosine, from the end of warmup to total_steps
  inverse-sqrt  peak_lr * sqrt(max(warmup_steps, 1) / step), never below min_lr
  wsd           peak_lr (stable) until the last `decay_steps` (or `decay_fraction` of the phase),
                then peak_lr -> min_lr with `decay_style` linear | cosine | 1-sqrt | exponential

Recipe keys (`LRSchedule.from_dict` / `to_dict`):
  style           constant | linear | cosine | inverse-sqrt | wsd            (required)
  peak_lr         LR after warmup; omitted -> equal to start_lr (anneal from where you are)
  start_lr        LR at step 0, where warmup starts (default 0.0), or "from_checkpoint": the trainer
                  resolves it with `schedule.resolve(checkpoint_lr)` before calling `lr_at`
  min_lr          LR at the end of a decay (default 0.0)
  warmup_steps    default 0
  decay_steps     wsd only: length of the final decay, which ends at total_steps
  decay_fraction  wsd only, instead of decay_steps: that length as a fraction of total_steps
  decay_style     wsd only: linear (default) | cosine | 1-sqrt | exponential

Step counting is Megatron-Core's (`OptimizerParamScheduler.num_steps`): `step` is the number of
optimizer updates already taken, so step 0 is the first update and runs at `start_lr` (as Megatron's
first iteration runs at `init_lr`); `peak_lr` is reached at step == warmup_steps; a decay reaches
`min_lr` at step == total_steps, one past the phase's last update (step total_steps - 1), so no
update is spent at min_lr (which is often 0). Beyond total_steps the LR holds lr_at(total_steps);
there Megatron differs only for inverse-sqrt, which it drops to min_lr after lr_decay_steps.
"""

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Union

from megamid.config.base import ConfigError, check_choice, check_positive, fail

STYLES = ("constant", "linear", "cosine", "inverse-sqrt", "wsd")
DECAY_STYLES = ("linear", "cosine", "1-sqrt", "exponential")
FROM_CHECKPOINT = "from_checkpoint"


def decay_coefficient(decay_style: str, ratio: float) -> float:
    """Fraction of (peak_lr - min_lr) left after `ratio` in [0, 1] of a decay: 1 at 0, 0 at 1.

    The shapes are Megatron-Core's (`exponential` is its 2 * 0.5**r - 1, which reaches 0 at r = 1
    and so works with min_lr = 0, unlike a geometric interpolation)."""
    if decay_style == "linear":
        return 1.0 - ratio
    if decay_style == "cosine":
        return 0.5 * (math.cos(math.pi * ratio) + 1.0)
    if decay_style == "1-sqrt":
        return 1.0 - math.sqrt(ratio)
    if decay_style == "exponential":
        return 2.0 * math.pow(0.5, ratio) - 1.0
    raise ConfigError(f"decay_style={decay_style!r} is invalid: expected one of {', '.join(DECAY_STYLES)}")


@dataclass(frozen=True)
class LRSchedule:
    """One phase's LR schedule, validated at construction. See the module docstring for the keys."""

    style: str
    peak_lr: Optional[float] = None
    start_lr: Union[float, str] = 0.0
    min_lr: float = 0.0
    warmup_steps: int = 0
    decay_steps: Optional[int] = None
    decay_fraction: Optional[float] = None
    decay_style: Optional[str] = None

    def __post_init__(self):
        check_choice("style", self.style, STYLES)
        if isinstance(self.start_lr, str):
            if self.start_lr != FROM_CHECKPOINT:
                fail("start_lr", self.start_lr, f"expected a number >= 0 or {FROM_CHECKPOINT!r}")
        else:
            check_positive("start_lr", self.start_lr, allow_zero=True)
        if self.peak_lr is None:
            if self.start_lr == 0.0:
                fail("peak_lr", None, "required unless start_lr is set (the schedule would be all zeros)")
        else:
            check_positive("peak_lr", self.peak_lr)
        check_positive("min_lr", self.min_lr, allow_zero=True)
        _check_int("warmup_steps", self.warmup_steps, allow_zero=True)
        if self.style == "wsd":
            if (self.decay_steps is None) == (self.decay_fraction is None):
                fail("decay_steps", self.decay_steps, "style=wsd needs exactly one of decay_steps, decay_fraction")
            if self.decay_steps is not None:
                _check_int("decay_steps", self.decay_steps)
            elif not (isinstance(self.decay_fraction, (int, float)) and 0 < self.decay_fraction <= 1):
                fail("decay_fraction", self.decay_fraction, "expected a number in (0, 1]")
            if self.decay_style is None:
                object.__setattr__(self, "decay_style", "linear")
            check_choice("decay_style", self.decay_style, DECAY_STYLES)
        else:
            # One way to say each thing: a plateau before the decay is style=wsd.
            for name in ("decay_steps", "decay_fraction", "decay_style"):
                if getattr(self, name) is not None:
                    fail(name, getattr(self, name), f"only applies to style=wsd, not style={self.style}")
        if not (self.needs_checkpoint_lr and self.peak_lr is None) and self.min_lr > self.peak:
            fail("min_lr", self.min_lr, f"must be <= peak_lr={self.peak}")

    # -- start_lr: from_checkpoint ------------------------------------------------------------

    @property
    def needs_checkpoint_lr(self) -> bool:
        """True while start_lr is "from_checkpoint": the trainer must call `resolve` first."""
        return self.start_lr == FROM_CHECKPOINT

    @property
    def peak(self) -> float:
        """The LR after warmup: peak_lr, or start_lr where peak_lr is omitted."""
        if self.needs_checkpoint_lr and self.peak_lr is None:
            raise ConfigError("start_lr='from_checkpoint' is unresolved: call schedule.resolve(checkpoint_lr)")
        return float(self.start_lr if self.peak_lr is None else self.peak_lr)

    def resolve(self, checkpoint_lr: float) -> "LRSchedule":
        """This schedule with start_lr="from_checkpoint" replaced by the checkpoint's LR.

        NaN stands for "not known before training" (the plan shows such LRs as "ckpt"); an infinite or
        negative LR is refused like any start_lr."""
        if not self.needs_checkpoint_lr:
            return self
        lr = float(checkpoint_lr)
        if math.isnan(lr):
            resolved = copy.copy(self)      # every other field is validated already
            object.__setattr__(resolved, "start_lr", lr)
            return resolved
        return dataclasses.replace(self, start_lr=lr)

    # -- budget -------------------------------------------------------------------------------

    def decay_steps_for(self, total_steps: int) -> int:
        """Length of the decay in a phase of total_steps (wsd: the final segment; else after warmup)."""
        if self.style != "wsd":
            return total_steps - self.warmup_steps
        if self.decay_steps is not None:
            return self.decay_steps
        return max(1, round(self.decay_fraction * total_steps))

    def check_budget(self, total_steps: int) -> None:
        """Raise ConfigError unless warmup (and a wsd decay) fit in total_steps."""
        _check_int("total_steps", total_steps)
        if self.warmup_steps > total_steps:
            fail("warmup_steps", self.warmup_steps, f"must be <= total_steps={total_steps}")
        if self.style == "wsd" and self.warmup_steps + self.decay_steps_for(total_steps) > total_steps:
            fail("decay_steps", self.decay_steps_for(total_steps),
                 f"warmup_steps={self.warmup_steps} + decay must be <= total_steps={total_steps}")

    # -- recipe YAML --------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict, path: str = "lr") -> "LRSchedule":
        """Build from a recipe mapping; errors are prefixed with `path` (e.g. "phases[1].lr")."""
        if not isinstance(d, dict):
            fail(path, d, "expected a mapping with a 'style' key")
        names = [f.name for f in dataclasses.fields(cls)]
        kwargs = {}
        for key, value in d.items():
            if key not in names:
                fail(f"{path}.{key}", value, f"unknown key; valid keys: {', '.join(names)}")
            kwargs[key] = _coerce(key, value)
        if "style" not in kwargs:
            fail(f"{path}.style", None, f"required; expected one of {', '.join(STYLES)}")
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{path}.{exc}") from None

    def to_dict(self) -> dict:
        """The recipe mapping; fields left unset (None) are omitted, so from_dict(to_dict(s)) == s."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def lr_at(schedule: LRSchedule, step: int, total_steps: int) -> float:
    """The LR for the update after `step` updates of a phase of `total_steps` (see module docstring)."""
    schedule.check_budget(total_steps)
    if step < 0:
        fail("step", step, "must be >= 0")
    if schedule.needs_checkpoint_lr:
        raise ConfigError("start_lr='from_checkpoint' is unresolved: call schedule.resolve(checkpoint_lr)")
    step = min(step, total_steps)
    peak, min_lr, warmup = schedule.peak, schedule.min_lr, schedule.warmup_steps
    if warmup > 0 and step <= warmup:
        return schedule.start_lr + (peak - schedule.start_lr) * step / warmup
    if schedule.style == "constant":
        return peak
    if schedule.style == "inverse-sqrt":
        return max(min_lr, peak * math.sqrt(max(warmup, 1) / max(step, 1)))
    decay = schedule.decay_steps_for(total_steps)
    decay_start = total_steps - decay
    if step <= decay_start or decay == 0:
        return peak
    shape = schedule.decay_style if schedule.style == "wsd" else schedule.style
    return min_lr + (peak - min_lr) * decay_coefficient(shape, (step - decay_start) / decay)


def _check_int(field: str, value, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(field, value, "expected an integer number of steps")
    check_positive(field, value, allow_zero=allow_zero)


def _coerce(key: str, value):
    """YAML 1.1 (PyYAML) reads `3e-4` as a string and `1e3` steps as a float: accept both."""
    if key.endswith("_lr") or key == "decay_fraction":
        if isinstance(value, str) and value != FROM_CHECKPOINT:
            try:
                return float(value)
            except ValueError:
                return value
        return value
    if key.endswith("_steps") and isinstance(value, float) and value.is_integer():
        return int(value)
    return value
