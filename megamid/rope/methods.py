"""The RoPE scaling methods, one frozen dataclass each, matching transformers' ROPE_INIT_FUNCTIONS.

Each `compute` follows HF's order of float32 operations so the tables agree bit for bit (or to one
float32 ulp); python-float parts (bases, correction ranges, attention factors) stay in double as in HF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from megamid.config.base import fail
from megamid.rope.scaling import NTK_MARKER, RopeScaling, base_inv_freq, check_number, original_length_from_hf


def _hf_factor(params: Mapping[str, Any], top: Mapping[str, Any], original: int | None = None) -> float:
    """HF's factor; for yarn/longrope a missing one is max_position_embeddings / original."""
    factor = params.get("factor")
    if factor is None and original is not None and top.get("max_position_embeddings"):
        factor = top["max_position_embeddings"] / original
    if factor is None:
        fail("rope_parameters.factor", None, "required for this rope_type (a number >= 1)")
    return factor


@dataclass(frozen=True, kw_only=True)
class DefaultRope(RopeScaling):
    """Plain RoPE. A base-frequency change (ABF) is this with a new theta (`type: abf` in YAML)."""

    type = "default"

    def compute(self, seq_len=None):
        return base_inv_freq(self.theta, self.rotary_dim), 1.0


@dataclass(frozen=True, kw_only=True)
class LinearRope(RopeScaling):
    """Position Interpolation: every frequency divided by `factor` (positions squeezed by it)."""

    type = "linear"
    factor: float

    def _validate(self):
        check_number("rope.factor", self.factor, minimum=1)

    def compute(self, seq_len=None):
        inv_freq = base_inv_freq(self.theta, self.rotary_dim)
        inv_freq /= self.factor
        return inv_freq, 1.0

    def _hf_parameters(self):
        return {"factor": self.factor}

    @classmethod
    def _fields_from_hf(cls, params, top):
        return {"factor": _hf_factor(params, top)}


@dataclass(frozen=True, kw_only=True)
class NtkRope(RopeScaling):
    """NTK-aware (static): theta * factor ** (d / (d - 2)); not an HF type, written to HF as `default`
    with that theta (identical tables) plus a marker key so the method survives the round trip."""

    type = "ntk"
    factor: float

    def _validate(self):
        check_number("rope.factor", self.factor, minimum=1)
        if self.rotary_dim <= 2:
            fail("rope.head_dim", self.head_dim, "ntk needs a rotary dim > 2 (d / (d - 2) in the base)")

    @property
    def scaled_theta(self) -> float:
        d = self.rotary_dim
        return self.theta * self.factor ** (d / (d - 2))

    def compute(self, seq_len=None):
        return base_inv_freq(self.scaled_theta, self.rotary_dim), 1.0

    def to_hf(self):
        out = super().to_hf()
        out["rope_parameters"].update(rope_type="default", rope_theta=self.scaled_theta)
        out["rope_parameters"][NTK_MARKER] = {"theta": self.theta, "factor": self.factor}
        out["rope_theta"] = self.scaled_theta
        return out

    @classmethod
    def _fields_from_hf(cls, params, top):
        marker = params[NTK_MARKER]
        if not isinstance(marker, Mapping) or {"theta", "factor"} - set(marker):
            fail(f"rope_parameters.{NTK_MARKER}", marker, "expected {'theta': ..., 'factor': ...}")
        return {"theta": marker["theta"], "factor": marker["factor"]}


@dataclass(frozen=True, kw_only=True)
class DynamicNtkRope(RopeScaling):
    """Dynamic NTK: beyond `original_max_position_embeddings` (HF: max_position_embeddings) the base
    grows with the current length: theta * (factor * L / L0 - (factor - 1)) ** (d / (d - 2))."""

    type = "dynamic"
    factor: float
    original_max_position_embeddings: int

    def _validate(self):
        check_number("rope.factor", self.factor, minimum=1)
        check_number("rope.original_max_position_embeddings", self.original_max_position_embeddings,
                     integer=True, above=0)
        if self.rotary_dim <= 2:
            fail("rope.head_dim", self.head_dim, "dynamic needs a rotary dim > 2 (d / (d - 2) in the base)")

    @property
    def seq_len_dependent(self):
        return True

    def theta_at(self, seq_len: int | None) -> float:
        length = max(seq_len or 0, self.original_max_position_embeddings)
        d = self.rotary_dim
        ratio = self.factor * length / self.original_max_position_embeddings - (self.factor - 1)
        return self.theta * ratio ** (d / (d - 2))

    def compute(self, seq_len=None):
        return base_inv_freq(self.theta_at(seq_len), self.rotary_dim), 1.0

    def _hf_parameters(self):
        return {"factor": self.factor}

    def _hf_top_level(self):
        return {"max_position_embeddings": self.original_max_position_embeddings}

    @classmethod
    def _fields_from_hf(cls, params, top):
        length = top.get("max_position_embeddings")
        if length is None:
            fail("max_position_embeddings", None, "dynamic rope needs it (the length scaling starts beyond)")
        return {"factor": _hf_factor(params, top), "original_max_position_embeddings": length}


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


@dataclass(frozen=True, kw_only=True)
class YarnRope(RopeScaling):
    """YaRN: interpolate low frequencies by `factor`, keep high ones, ramp between the dims where
    the original context makes beta_fast and beta_slow rotations; cos/sin scaled by attention_factor
    (0.1 ln(factor) + 1 unless given, or the mscale / mscale_all_dim ratio as in DeepSeek)."""

    type = "yarn"
    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor_override: float | None = None
    truncate: bool = True
    dict_keys = {"attention_factor_override": "attention_factor"}

    def _validate(self):
        check_number("rope.factor", self.factor, minimum=1)
        check_number("rope.original_max_position_embeddings", self.original_max_position_embeddings,
                     integer=True, above=0)
        check_number("rope.beta_slow", self.beta_slow, above=0)
        check_number("rope.beta_fast", self.beta_fast, above=0)
        if self.beta_fast <= self.beta_slow:
            fail("rope.beta_fast", self.beta_fast, f"must be > beta_slow={self.beta_slow}")
        for name in ("mscale", "mscale_all_dim"):
            if getattr(self, name) is not None:
                check_number(f"rope.{name}", getattr(self, name), minimum=0)
        if self.attention_factor_override is not None:
            check_number("rope.attention_factor", self.attention_factor_override, above=0)
        if not isinstance(self.truncate, bool):
            fail("rope.truncate", self.truncate, "expected true or false")

    def correction_range(self) -> tuple[float, float]:
        """Dims (of rotary_dim // 2) where the ramp from interpolation to extrapolation starts / ends."""
        d, length = self.rotary_dim, self.original_max_position_embeddings

        def dim_of(rotations):
            return d * math.log(length / (rotations * 2 * math.pi)) / (2 * math.log(self.theta))

        low, high = dim_of(self.beta_fast), dim_of(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        return max(low, 0), min(high, d - 1)

    def compute(self, seq_len=None):
        d = self.rotary_dim
        pos_freqs = self.theta ** (torch.arange(0, d, 2).to(torch.float32) / d)
        extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (self.factor * pos_freqs)
        low, high = self.correction_range()
        if low == high:
            high += 0.001  # HF's guard against a zero-width ramp
        ramp = torch.clamp((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        keep = 1 - ramp  # 1 where the original frequency is kept (high frequencies)
        return interpolation * (1 - keep) + extrapolation * keep, self._attention_factor()

    def _attention_factor(self) -> float:
        if self.attention_factor_override is not None:
            return self.attention_factor_override
        if self.mscale and self.mscale_all_dim:
            return float(_yarn_mscale(self.factor, self.mscale) / _yarn_mscale(self.factor, self.mscale_all_dim))
        return _yarn_mscale(self.factor)

    def _hf_parameters(self):
        out = {"factor": self.factor, "original_max_position_embeddings": self.original_max_position_embeddings,
               "beta_fast": self.beta_fast, "beta_slow": self.beta_slow, "truncate": self.truncate}
        for key, value in (("mscale", self.mscale), ("mscale_all_dim", self.mscale_all_dim),
                           ("attention_factor", self.attention_factor_override)):
            if value is not None:
                out[key] = value
        return out

    def _hf_top_level(self):
        return {"original_max_position_embeddings": self.original_max_position_embeddings}

    @classmethod
    def _fields_from_hf(cls, params, top):
        original = original_length_from_hf(params, top)
        return {"factor": _hf_factor(params, top, original), "original_max_position_embeddings": original,
                # HF reads `beta_fast or 32`: an absent or zero value means the default
                "beta_fast": params.get("beta_fast") or 32.0, "beta_slow": params.get("beta_slow") or 1.0,
                "mscale": params.get("mscale"), "mscale_all_dim": params.get("mscale_all_dim"),
                "attention_factor_override": params.get("attention_factor"),
                "truncate": params.get("truncate", True)}


@dataclass(frozen=True, kw_only=True)
class LongRope(RopeScaling):
    """LongRoPE (Phi-3): per-dimension divisors, `short_factor` up to original_max_position_embeddings
    tokens and `long_factor` beyond; cos/sin scaled by sqrt(1 + ln(factor) / ln(original)) unless given."""

    type = "longrope"
    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]
    original_max_position_embeddings: int
    factor: float = 1.0
    attention_factor_override: float | None = None
    dict_keys = {"attention_factor_override": "attention_factor"}

    def __post_init__(self):
        for name in ("short_factor", "long_factor"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))  # frozen and hashable, lists from YAML
        super().__post_init__()

    def _validate(self):
        n = self.rotary_dim // 2
        for name in ("short_factor", "long_factor"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != n:
                fail(f"rope.{name}", value, f"expected a list of rotary_dim // 2 = {n} numbers")
            for i, x in enumerate(value):
                check_number(f"rope.{name}[{i}]", x, above=0)
        check_number("rope.original_max_position_embeddings", self.original_max_position_embeddings,
                     integer=True, above=1)
        check_number("rope.factor", self.factor, minimum=1)
        if self.attention_factor_override is not None:
            check_number("rope.attention_factor", self.attention_factor_override, above=0)

    @property
    def seq_len_dependent(self):
        return True

    def compute(self, seq_len=None):
        use_long = bool(seq_len) and seq_len > self.original_max_position_embeddings
        ext = torch.tensor(self.long_factor if use_long else self.short_factor, dtype=torch.float32)
        shape = torch.arange(0, self.rotary_dim, 2, dtype=torch.int64).float() / self.rotary_dim
        return 1.0 / (ext * self.theta**shape), self._attention_factor()

    def _attention_factor(self) -> float:
        if self.attention_factor_override is not None:
            return self.attention_factor_override
        if self.factor <= 1.0:
            return 1.0
        return math.sqrt(1 + math.log(self.factor) / math.log(self.original_max_position_embeddings))

    def _hf_parameters(self):
        out = {"short_factor": list(self.short_factor), "long_factor": list(self.long_factor),
               "original_max_position_embeddings": self.original_max_position_embeddings, "factor": self.factor}
        if self.attention_factor_override is not None:
            out["attention_factor"] = self.attention_factor_override
        return out

    def _hf_top_level(self):
        return {"original_max_position_embeddings": self.original_max_position_embeddings}

    @classmethod
    def _fields_from_hf(cls, params, top):
        original = original_length_from_hf(params, top)
        for name in ("short_factor", "long_factor"):
            if params.get(name) is None:
                fail(f"rope_parameters.{name}", None, "longrope needs a list of rotary_dim // 2 numbers")
        return {"short_factor": params["short_factor"], "long_factor": params["long_factor"],
                "original_max_position_embeddings": original, "factor": _hf_factor(params, top, original),
                "attention_factor_override": params.get("attention_factor")}


@dataclass(frozen=True, kw_only=True)
class Llama3Rope(RopeScaling):
    """Llama-3.1 by-parts: wavelengths above original/low_freq_factor divided by factor, below
    original/high_freq_factor kept, smoothly interpolated between."""

    type = "llama3"
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def _validate(self):
        check_number("rope.factor", self.factor, minimum=1)
        check_number("rope.low_freq_factor", self.low_freq_factor, above=0)
        check_number("rope.high_freq_factor", self.high_freq_factor, above=0)
        if self.low_freq_factor >= self.high_freq_factor:
            fail("rope.low_freq_factor", self.low_freq_factor, f"must be < high_freq_factor={self.high_freq_factor}")
        check_number("rope.original_max_position_embeddings", self.original_max_position_embeddings,
                     integer=True, above=0)

    def compute(self, seq_len=None):
        inv_freq = base_inv_freq(self.theta, self.rotary_dim)
        length, low, high = self.original_max_position_embeddings, self.low_freq_factor, self.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > length / low, inv_freq / self.factor, inv_freq)
        smooth = (length / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
        is_medium = ~(wavelen < length / high) * ~(wavelen > length / low)
        return torch.where(is_medium, smoothed, scaled), 1.0

    def _hf_parameters(self):
        return {"factor": self.factor, "low_freq_factor": self.low_freq_factor,
                "high_freq_factor": self.high_freq_factor,
                "original_max_position_embeddings": self.original_max_position_embeddings}

    def _hf_top_level(self):
        return {"original_max_position_embeddings": self.original_max_position_embeddings}

    @classmethod
    def _fields_from_hf(cls, params, top):
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            if params.get(name) is None:
                fail(f"rope_parameters.{name}", None, "required for rope_type 'llama3'")
        return {"factor": params["factor"], "low_freq_factor": params["low_freq_factor"],
                "high_freq_factor": params["high_freq_factor"],
                "original_max_position_embeddings": original_length_from_hf(params, top)}
