"""DataConfig: one phase's data mixture, validated at construction (errors name the field).

Recipe YAML (`data:` of a phase):

    data:
      sources:
        - {name: code, prefix: corpus/code_text_document, weight: 0.5}
        - {name: prose, prefix: corpus/prose_text_document, weight: 0.3, weight_end: 0.1}
        - {name: long, prefix: corpus/long_text_document, weight: 0.2, upsample_long: 2.0}
      replay: {share: 0.2, sources: [{name: web, prefix: corpus/pretrain_text_document, weight: 1.0}]}
      long_short: {long_share: 0.6, long_sources: [long], long_threshold_tokens: 2048}
      pack: true
      seed: 1234

Meaning (every sample holds exactly seq_len tokens, so sample shares are token shares):
- `weight` is relative: the phase's sources share `1 - replay.share` in proportion to their weights.
  `weight_end` (optional) is the weight at the phase's last sample; the normalised share moves
  linearly from its start value to its end value over the phase's samples.
- `replay.share` of all samples comes from the pretraining sources in `replay.sources`, split by
  their weights (constant through the phase).
- `long_short` (optional, ProLong-style): of the non-replay share, `long_share` goes to the sources
  named in `long_sources`, the rest to the other phase sources; inside each group, by weight.
- `upsample_long` (per source, default 1): documents of at least `long_threshold_tokens` tokens
  (the source's own, else long_short's) appear that many times per epoch of the source's stream.
- `loss_mask` (per source, default false): only the tokens that the sidecar `PREFIX.lossmask.bin/.idx`
  marks with 1 are scored (one 0/1 uint8 per token, the same documents as PREFIX; `megamid data
  synthetic` writes one for every task, marking the answers: the passkey, the queried values, the
  copy). Like an SFT prompt mask: the model still reads every token, it is trained on the answers only.
- `pack`: rows expose document boundaries (positions restart after EOD, cu_seqlens, no loss across
  a boundary) for document-masked attention; false gives plain causal rows (GPTDataset's default).
- `seed`: the seed of every source's document permutation; keep it across phases so that streams
  continue where the previous phase stopped.
"""

import math
from dataclasses import dataclass, field
from typing import Optional

from megamid.config.base import ConfigError, check_positive, fail

LOSS_MASK_SUFFIX = ".lossmask"  # PREFIX.lossmask.bin/.idx: a source's per-token 0/1 loss mask
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def _check_keys(where: str, d: dict, allowed) -> None:
    if not isinstance(d, dict):
        fail(where, d, "expected a mapping")
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        fail(f"{where}.{unknown[0]}", d[unknown[0]], f"unknown key; valid keys: {', '.join(allowed)}")


def _check_number(field_name: str, value, valid: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        fail(field_name, value, valid)


def _check_weight(field_name: str, value) -> None:
    _check_number(field_name, value, "expected a finite number >= 0")
    if value < 0:
        fail(field_name, value, "weights must be >= 0")


@dataclass
class SourceConfig:
    """One token stream: an indexed dataset prefix (`PREFIX.bin` / `PREFIX.idx`) and its weight."""

    name: str
    prefix: str
    weight: float = 1.0
    weight_end: Optional[float] = None
    upsample_long: float = 1.0
    long_threshold_tokens: Optional[int] = None
    loss_mask: bool = False
    where: str = field(default="data.sources[?]", repr=False, compare=False)

    KEYS = ("name", "prefix", "weight", "weight_end", "upsample_long", "long_threshold_tokens", "loss_mask")

    def __post_init__(self):
        w = self.where
        if not isinstance(self.name, str) or not self.name or set(self.name) - NAME_CHARS:
            fail(f"{w}.name", self.name, "expected a non-empty name of letters, digits, _ - .")
        if not isinstance(self.prefix, str) or not self.prefix:
            fail(f"{w}.prefix", self.prefix, "expected the path prefix of PREFIX.bin/PREFIX.idx")
        _check_weight(f"{w}.weight", self.weight)
        if self.weight_end is not None:
            _check_weight(f"{w}.weight_end", self.weight_end)
        _check_number(f"{w}.upsample_long", self.upsample_long, "expected a factor >= 1")
        if self.upsample_long < 1:
            fail(f"{w}.upsample_long", self.upsample_long, "expected a factor >= 1")
        if self.long_threshold_tokens is not None:
            if isinstance(self.long_threshold_tokens, bool) or not isinstance(self.long_threshold_tokens, int):
                fail(f"{w}.long_threshold_tokens", self.long_threshold_tokens, "expected an integer > 0")
            check_positive(f"{w}.long_threshold_tokens", self.long_threshold_tokens)
        if not isinstance(self.loss_mask, bool):
            fail(f"{w}.loss_mask", self.loss_mask, "expected true (score only the tokens PREFIX.lossmask marks) "
                 "or false")

    @property
    def mask_prefix(self) -> Optional[str]:
        """The loss-mask sidecar's prefix (PREFIX.lossmask), or None when every token is scored."""
        return self.prefix + LOSS_MASK_SUFFIX if self.loss_mask else None

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "SourceConfig":
        _check_keys(where, d, cls.KEYS)
        for key in ("name", "prefix"):
            if key not in d:
                fail(f"{where}.{key}", None, "required")
        return cls(**d, where=where)

    def to_dict(self) -> dict:
        out = {"name": self.name, "prefix": self.prefix, "weight": self.weight}
        for key in ("weight_end", "long_threshold_tokens"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.upsample_long != 1.0:
            out["upsample_long"] = self.upsample_long
        if self.loss_mask:
            out["loss_mask"] = True
        return out


@dataclass
class ReplayConfig:
    """A fixed share of every phase's samples drawn from the pretraining sources."""

    share: float = 0.0
    sources: list = field(default_factory=list)

    def __post_init__(self):
        _check_number("data.replay.share", self.share, "expected a share in [0, 1)")
        if not 0 <= self.share < 1:
            fail("data.replay.share", self.share, "expected a share in [0, 1)")
        if self.share > 0 and not self.sources:
            fail("data.replay.sources", self.sources, "replay.share > 0 needs at least one source")
        if self.share > 0 and sum(s.weight for s in self.sources) <= 0:
            fail("data.replay.sources[*].weight", [s.weight for s in self.sources],
                 "all zero; at least one replay weight must be > 0")

    @classmethod
    def from_dict(cls, d: dict) -> "ReplayConfig":
        _check_keys("data.replay", d, ("share", "sources"))
        sources = d.get("sources", [])
        if not isinstance(sources, list):
            fail("data.replay.sources", sources, "expected a list of sources")
        return cls(share=d.get("share", 0.0),
                   sources=[SourceConfig.from_dict(s, f"data.replay.sources[{i}]") for i, s in enumerate(sources)])


@dataclass
class LongShortConfig:
    """Length-aware mixing for context extension: a token share for long-document sources."""

    long_share: float
    long_sources: list
    long_threshold_tokens: int = 2048

    def __post_init__(self):
        _check_number("data.long_short.long_share", self.long_share, "expected a share in [0, 1]")
        if not 0 <= self.long_share <= 1:
            fail("data.long_short.long_share", self.long_share, "expected a share in [0, 1]")
        if not isinstance(self.long_sources, list) or not self.long_sources \
                or not all(isinstance(n, str) for n in self.long_sources):
            fail("data.long_short.long_sources", self.long_sources, "expected a non-empty list of source names")
        if isinstance(self.long_threshold_tokens, bool) or not isinstance(self.long_threshold_tokens, int):
            fail("data.long_short.long_threshold_tokens", self.long_threshold_tokens, "expected an integer > 0")
        check_positive("data.long_short.long_threshold_tokens", self.long_threshold_tokens)

    @classmethod
    def from_dict(cls, d: dict) -> "LongShortConfig":
        _check_keys("data.long_short", d, ("long_share", "long_sources", "long_threshold_tokens"))
        for key in ("long_share", "long_sources"):
            if key not in d:
                fail(f"data.long_short.{key}", None, "required")
        return cls(**d)


@dataclass
class DataConfig:
    """One phase's data: sources with (scheduled) weights, replay, length-aware mixing, packing."""

    sources: list
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    long_short: Optional[LongShortConfig] = None
    pack: bool = False
    seed: int = 1234

    def __post_init__(self):
        if not isinstance(self.sources, list) or not self.sources:
            fail("data.sources", self.sources, "expected a non-empty list of sources")
        names = [s.name for s in self.all_sources()]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            fail("data.sources[*].name", dup[0], "source names must be unique across sources and replay.sources")
        starts = [s.weight for s in self.sources]
        ends = [s.weight if s.weight_end is None else s.weight_end for s in self.sources]
        for label, ws in (("weight", starts), ("weight_end", ends)):
            if sum(ws) <= 0:
                fail(f"data.sources[*].{label}", ws, "all zero; at least one source weight must be > 0")
        if not isinstance(self.pack, bool):
            fail("data.pack", self.pack, "expected true or false")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            fail("data.seed", self.seed, "expected an integer >= 0")
        if self.long_short is not None:
            self._check_long_short()

    def _check_long_short(self) -> None:
        phase_names = [s.name for s in self.sources]
        for n in self.long_short.long_sources:
            if n not in phase_names:
                fail("data.long_short.long_sources", n, f"not a phase source; valid: {', '.join(phase_names)}")
        long_set = set(self.long_short.long_sources)
        for group, share, is_long in (("long", self.long_short.long_share, True),
                                      ("short", 1 - self.long_short.long_share, False)):
            members = [s for s in self.sources if (s.name in long_set) == is_long]
            if share > 0 and (not members or sum(s.weight for s in members) <= 0):
                fail("data.long_short.long_share", self.long_short.long_share,
                     f"the {group} group gets a share but has no source with weight > 0")

    def all_sources(self) -> list:
        """Phase sources, then replay sources: the order of stream ids."""
        return list(self.sources) + list(self.replay.sources)

    def long_threshold_for(self, source: SourceConfig) -> Optional[int]:
        if source.long_threshold_tokens is not None:
            return source.long_threshold_tokens
        return self.long_short.long_threshold_tokens if self.long_short is not None else None

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        _check_keys("data", d, ("sources", "replay", "long_short", "pack", "seed"))
        sources = d.get("sources")
        if not isinstance(sources, list) or not sources:
            fail("data.sources", sources, "expected a non-empty list of sources")
        kwargs = dict(sources=[SourceConfig.from_dict(s, f"data.sources[{i}]") for i, s in enumerate(sources)])
        if d.get("replay") is not None:
            kwargs["replay"] = ReplayConfig.from_dict(d["replay"])
        if d.get("long_short") is not None:
            kwargs["long_short"] = LongShortConfig.from_dict(d["long_short"])
        for key in ("pack", "seed"):
            if key in d:
                kwargs[key] = d[key]
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """The YAML form: DataConfig.from_dict(c.to_dict()) == c."""
        out = {"sources": [s.to_dict() for s in self.sources], "pack": self.pack, "seed": self.seed}
        if self.replay.share > 0 or self.replay.sources:
            out["replay"] = {"share": self.replay.share, "sources": [s.to_dict() for s in self.replay.sources]}
        if self.long_short is not None:
            ls = self.long_short
            out["long_short"] = {"long_share": ls.long_share, "long_sources": list(ls.long_sources),
                                 "long_threshold_tokens": ls.long_threshold_tokens}
        return out


__all__ = ["ConfigError", "DataConfig", "LongShortConfig", "ReplayConfig", "SourceConfig"]
