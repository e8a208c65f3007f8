"""RopeScaling: the base of the RoPE scaling methods, their registry, and the HF / YAML dict forms.

Pure math: torch for the float32 tables, no megatron. Each method (methods.py) is a frozen dataclass
that computes `(inv_freq, attention_factor)` for a sequence length, exactly as transformers'
`ROPE_INIT_FUNCTIONS` do, and maps itself to and from HF's `rope_parameters` dict.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch

from megamid.config.base import ConfigError, fail

_REGISTRY: dict[str, type["RopeScaling"]] = {}
# Names accepted in recipe YAML for methods that are another method under HF's name.
_ALIASES = {"abf": "default", "pi": "linear", "dynamic_ntk": "dynamic", "ntk_aware": "ntk"}
# HF has no static NTK-aware type: to_hf writes it as "default" with the scaled theta (what HF computes
# identically) and keeps the method under this key so that from_hf restores it.
NTK_MARKER = "megamid_ntk"
HF_DEFAULT_THETA = 10_000.0


def check_number(field: str, value, *, minimum=None, above=None, integer=False) -> None:
    """Raise ConfigError unless value is a real number (an int if integer) >= minimum / > above."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or (not integer and not math.isfinite(value)):
        fail(field, value, "expected an integer" if integer else "expected a finite number")
    if minimum is not None and value < minimum:
        fail(field, value, f"must be >= {minimum}")
    if above is not None and value <= above:
        fail(field, value, f"must be > {above}")


def base_inv_freq(theta: float, rotary_dim: int) -> torch.Tensor:
    """theta ** (-2i / rotary_dim), float32, computed in HF's order of operations (bit-identical)."""
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.int64).to(torch.float32) / rotary_dim
    return 1.0 / (theta**exponent)


@dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """One RoPE configuration: base `theta`, `head_dim`, the rotated fraction, and a scaling method.

    Subclasses set `type` (HF's `rope_type`) and implement `compute(seq_len)`. Build them with
    `RopeScaling.from_dict` (recipe YAML) or `RopeScaling.from_hf` (a transformers config)."""

    type: ClassVar[str] = ""
    # dataclass field -> its key in YAML and HF dicts, where the HF name is taken by a property
    dict_keys: ClassVar[dict[str, str]] = {}
    theta: float = HF_DEFAULT_THETA
    head_dim: int
    partial_rotary_factor: float = 1.0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.type:
            _REGISTRY[cls.type] = cls

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if str(f.type).startswith("float") and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))  # YAML's 8 and 8.0 build the same object
        check_number("rope.theta", self.theta, above=1)
        check_number("rope.head_dim", self.head_dim, integer=True, above=0)
        check_number("rope.partial_rotary_factor", self.partial_rotary_factor, above=0)
        if self.partial_rotary_factor > 1:
            fail("rope.partial_rotary_factor", self.partial_rotary_factor, "must be in (0, 1]")
        dim = self.rotary_dim
        if dim < 2 or dim % 2:
            fail("rope.partial_rotary_factor", self.partial_rotary_factor,
                 f"int(head_dim={self.head_dim} * partial_rotary_factor) = {dim} must be even and >= 2")
        self._validate()

    # ---- what subclasses provide -------------------------------------------------------------
    def _validate(self) -> None:
        """Check the method's own fields; raise ConfigError naming field, value and what is valid."""

    def compute(self, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
        """(inv_freq float32 [rotary_dim // 2], attention_factor) for sequences of seq_len tokens."""
        raise NotImplementedError

    def _hf_parameters(self) -> dict[str, Any]:
        """The method's keys of HF's `rope_parameters` (besides rope_type, rope_theta, partial factor)."""
        return {}

    def _hf_top_level(self) -> dict[str, Any]:
        """Keys HF reads from the top level of config.json for this method."""
        return {}

    @classmethod
    def _fields_from_hf(cls, params: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
        """The method's dataclass fields from HF's rope parameters and the config's top level."""
        return {}

    # ---- derived -------------------------------------------------------------------------------
    @property
    def rotary_dim(self) -> int:
        """Rotated channels per head; HF's int(head_dim * partial_rotary_factor)."""
        return int(self.head_dim * self.partial_rotary_factor)

    def inv_freq(self, seq_len: int | None = None) -> torch.Tensor:
        """float32 [rotary_dim // 2]; seq_len matters only for `dynamic` and `longrope`."""
        return self.compute(seq_len)[0]

    @property
    def attention_factor(self) -> float:
        """Factor HF multiplies cos and sin by (so q.k logits scale by its square); 1.0 for most."""
        return self.compute(None)[1]

    def attention_factor_at(self, seq_len: int | None = None) -> float:
        """The attention factor for a sequence length (constant in every method HF defines)."""
        return self.compute(seq_len)[1]

    @property
    def seq_len_dependent(self) -> bool:
        """Whether inv_freq changes with the sequence length (dynamic NTK, LongRoPE)."""
        return False

    # ---- recipe YAML dicts -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, head_dim: int | None = None) -> "RopeScaling":
        """Build from a recipe dict: {"type": ..., "theta": ..., method fields by HF's names}.

        head_dim may come from the dict or the keyword (the model's); `rotary_dim` may stand in for
        `partial_rotary_factor`. Unknown types and keys raise ConfigError."""
        if not isinstance(d, Mapping):
            fail("rope", d, "expected a mapping with a 'type' key")
        d = dict(d)
        kind = d.pop("type", "default")
        target = _REGISTRY.get(_ALIASES.get(kind, kind)) if isinstance(kind, str) else None
        if target is None:
            fail("rope.type", kind, f"expected one of {', '.join(sorted([*_REGISTRY, *_ALIASES]))}")
        if "head_dim" not in d:
            if head_dim is None:
                fail("rope.head_dim", None, "give head_dim in the rope dict or as from_dict(..., head_dim=)")
            d["head_dim"] = head_dim
        if "rotary_dim" in d:
            rotary_dim = d.pop("rotary_dim")
            if "partial_rotary_factor" in d:
                fail("rope.rotary_dim", rotary_dim, "give rotary_dim or partial_rotary_factor, not both")
            check_number("rope.rotary_dim", rotary_dim, integer=True, above=0)
            check_number("rope.head_dim", d["head_dim"], integer=True, above=0)
            d["partial_rotary_factor"] = rotary_dim / d["head_dim"]
        for field, key in target.dict_keys.items():
            if key in d:
                d[field] = d.pop(key)
        names = {f.name for f in dataclasses.fields(target)}
        unknown = sorted(set(d) - names)
        if unknown:
            fail(f"rope.{unknown[0]}", d[unknown[0]],
                 f"not a key of rope type {target.type!r}; valid: type, rotary_dim, "
                 + ", ".join(sorted(target.dict_keys.get(n, n) for n in names)))
        missing = [f.name for f in dataclasses.fields(target) if f.name not in d
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            fail(f"rope.{target.dict_keys.get(missing[0], missing[0])}", None,
                 f"missing; rope type {target.type!r} needs {', '.join(missing)}")
        return target(**d)

    def to_dict(self) -> dict[str, Any]:
        """The recipe dict; from_dict(to_dict()) == self. Unset optional fields are left out."""
        out: dict[str, Any] = {"type": self.type}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or (f.name == "partial_rotary_factor" and value == 1.0):
                continue
            out[self.dict_keys.get(f.name, f.name)] = list(value) if isinstance(value, tuple) else value
        return out

    # ---- transformers configs ----------------------------------------------------------------
    @classmethod
    def from_hf(cls, config) -> "RopeScaling":
        """Build from a transformers PretrainedConfig or a config.json dict, legacy `rope_scaling` or
        newer `rope_parameters` form, resolving defaults the way transformers does."""
        top = config if isinstance(config, Mapping) else _ConfigView(config)
        params = top.get("rope_parameters") or top.get("rope_scaling") or {}
        if not isinstance(params, Mapping):
            fail("rope_parameters", params, "expected a mapping")
        if "rope_type" not in params and "type" not in params and any(isinstance(v, Mapping) for v in params.values()):
            fail("rope_parameters", dict(params), "per-layer-type RoPE parameters are not supported; give one dict")
        params = dict(params)
        kind = params.get("rope_type", params.get("type", "default"))
        if params.get(NTK_MARKER):
            kind = "ntk"
        target = _REGISTRY.get(kind)
        if target is None:
            fail("rope_parameters.rope_type", kind, f"expected one of {', '.join(sorted(_REGISTRY))}")
        theta = params.get("rope_theta", top.get("rope_theta"))
        head_dim = top.get("head_dim") or _head_dim_from(top)
        partial = params.get("partial_rotary_factor", top.get("partial_rotary_factor"))
        fields = dict(theta=HF_DEFAULT_THETA if theta is None else theta, head_dim=head_dim)
        if partial is not None:
            fields["partial_rotary_factor"] = partial
        fields.update(target._fields_from_hf(params, top))
        return target(**fields)

    def to_hf(self) -> dict[str, Any]:
        """Keys to merge into a config.json: `rope_parameters` (transformers >= 5), `rope_theta`,
        `head_dim`, and any top-level keys the method needs. from_hf(to_hf()) == self."""
        params = {"rope_type": self.type, "rope_theta": self.theta, **self._hf_parameters()}
        if self.partial_rotary_factor != 1.0:
            params["partial_rotary_factor"] = self.partial_rotary_factor
        return {"rope_parameters": params, "rope_theta": params["rope_theta"], "head_dim": self.head_dim,
                **self._hf_top_level()}


def _head_dim_from(top: Mapping[str, Any]) -> int:
    hidden, heads = top.get("hidden_size"), top.get("num_attention_heads")
    if not hidden or not heads:
        fail("head_dim", top.get("head_dim"), "give head_dim, or hidden_size and num_attention_heads")
    return hidden // heads


def original_length_from_hf(params: Mapping[str, Any], top: Mapping[str, Any]) -> int:
    """HF's rule for llama3/yarn/longrope: a top-level original_max_position_embeddings (Phi-3) wins,
    then the rope dict's, then max_position_embeddings."""
    value = top.get("original_max_position_embeddings") or params.get("original_max_position_embeddings")
    value = value or top.get("max_position_embeddings")
    if value is None:
        fail("rope_parameters.original_max_position_embeddings", None,
             "give it, or max_position_embeddings, in the config")
    return value


class _ConfigView(Mapping):
    """Read a PretrainedConfig's attributes like a config.json dict (missing or None -> absent)."""

    def __init__(self, config):
        self._config = config

    def __getitem__(self, key):
        value = getattr(self._config, key, None)
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self):
        return iter(vars(self._config))

    def __len__(self):
        return len(vars(self._config))


def registered_types() -> dict[str, type[RopeScaling]]:
    """The rope types by HF name (a copy)."""
    return dict(_REGISTRY)


def model_rope_scaling(model, rope: Mapping[str, Any], where: str = "rope") -> RopeScaling:
    """The RopeScaling of the rope mapping `rope` at `model`'s head dim (a ModelConfig); errors name `where`."""
    try:
        return RopeScaling.from_dict(dict(rope), head_dim=model.head_dim)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


__all__ = ["RopeScaling", "ConfigError", "base_inv_freq", "check_number", "model_rope_scaling", "registered_types"]
