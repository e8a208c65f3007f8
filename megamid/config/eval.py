"""EvalConfig: a phase's in-loop evaluation (`eval:` of a phase), validated where it is built.

    phases:
      - name: ctx1024
        eval: {tasks: [passkey, ppl], lengths: [512, 1024], samples: 2, interval: 500}

Keys: tasks (default passkey, ppl), lengths (default the phase's seq_len), interval (steps between
evaluations; the phase end always evaluates), documents / short_documents (ppl/short: .npy, .npz or an
indexed prefix; default the phase's first data source, which the run trains on: point it at a held-out
prefix for a clean number), max_batch (sequences per forward), and the keywords of
`megamid.eval.runner.evaluate` (samples, depths, num_candidates, seed, ruler_tasks, greedy, short_length,
num_buckets, max_documents, use_matplotlib), and rope: evaluate under another RoPE than the phase trains
with (zero-shot: `rope: {type: yarn, factor: 4, original_max_position_embeddings: 256}`; theta defaults to
the training rope's); the training rope is restored after each evaluation.

Without `documents`, ppl/short read the last documents of the phase's first data source: that is
training data, not held out, and the results say so (`ppl.held_out: false`). Megatron-LM evaluates on a
held-out split of its blend; here a held-out set is named by `documents` (e.g. one written by
`megamid data synthetic`).
"""

from dataclasses import dataclass, fields
from typing import Optional

from megamid.config.base import ConfigError

TASK_NAMES = ("passkey", "needle", "ruler", "ppl", "short")
DEFAULT_TASKS = ("passkey", "ppl")
DEFAULT_MAX_DOCUMENTS = 16  # ppl documents per length read from an indexed prefix (the whole corpus is not)


def _pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def _str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(t, str) for t in v)


# key -> (what is valid, check)
_CHECKS = {
    "tasks": ("a list of task names", lambda v: _str_list(v) and bool(v)),
    "lengths": ("a list of positive token counts", lambda v: isinstance(v, list) and v and all(_pos_int(n) for n in v)),
    "interval": ("a positive number of steps", _pos_int),
    "samples": ("a positive integer", _pos_int),
    "depths": ("a list of depths in [0, 1]", lambda v: isinstance(v, list) and v and all(_number(d) and 0 <= d <= 1 for d in v)),
    "num_candidates": ("an integer >= 2", lambda v: _pos_int(v) and v >= 2),
    "seed": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "ruler_tasks": ("a list of RULER task names", _str_list),
    "greedy": ("true or false", lambda v: isinstance(v, bool)),
    "documents": ("a path: .npy, .npz or an indexed dataset prefix", lambda v: isinstance(v, str) and v),
    "short_documents": ("a path: .npy, .npz or an indexed dataset prefix", lambda v: isinstance(v, str) and v),
    "short_length": ("a positive integer", _pos_int),
    "num_buckets": ("a positive integer", _pos_int),
    "max_documents": ("a positive integer", _pos_int),
    "max_batch": ("a positive integer (sequences per forward)", _pos_int),
    "use_matplotlib": ("true, false or null", lambda v: v is None or isinstance(v, bool)),
    "rope": ("a rope mapping with a string 'type' (e.g. {type: yarn, factor: 4, original_max_position_embeddings: 256})",
             lambda v: isinstance(v, dict) and isinstance(v.get("type"), str)),
}


def parse_rope_spec(text: str, where: str = "--rope") -> dict:
    """'TYPE[:key=value,...]' -> a rope mapping ({'type': TYPE, key: value}); values are YAML scalars."""
    import yaml

    kind, _, rest = str(text).partition(":")
    if not kind.strip():
        raise ConfigError(f"{where}={text!r} is invalid: expected TYPE[:key=value,...], e.g. "
                          "yarn:factor=4,original_max_position_embeddings=256")
    out = {"type": kind.strip()}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ConfigError(f"{where}={text!r} is invalid: {item!r} is not key=value")
        try:
            out[key.strip()] = yaml.safe_load(value.strip())
        except yaml.YAMLError:
            out[key.strip()] = value.strip()
    return out


def eval_rope(training_rope: dict, rope: dict) -> dict:
    """The rope mapping to evaluate under: `rope` with the training rope's theta (and head_dim,
    rotary_dim or partial_rotary_factor) where it gives none."""
    out = dict(rope)
    for key in ("theta", "head_dim"):
        if key not in out and key in training_rope:
            out[key] = training_rope[key]
    if "rotary_dim" not in out and "partial_rotary_factor" not in out:
        for key in ("rotary_dim", "partial_rotary_factor"):
            if key in training_rope:
                out[key] = training_rope[key]
    return out


@dataclass(frozen=True)
class EvalConfig:
    """A phase's evaluation settings; None means the evaluator's default (lengths: the phase's seq_len)."""

    tasks: tuple = DEFAULT_TASKS
    lengths: Optional[tuple] = None
    interval: Optional[int] = None
    samples: Optional[int] = None
    depths: Optional[tuple] = None
    num_candidates: Optional[int] = None
    seed: Optional[int] = None
    ruler_tasks: Optional[tuple] = None
    greedy: Optional[bool] = None
    documents: Optional[str] = None
    short_documents: Optional[str] = None
    short_length: Optional[int] = None
    num_buckets: Optional[int] = None
    max_documents: int = DEFAULT_MAX_DOCUMENTS
    max_batch: int = 4
    use_matplotlib: Optional[bool] = None
    rope: Optional[dict] = None

    @classmethod
    def from_mapping(cls, phase_name: str, mapping) -> "EvalConfig":
        """Validates a phase's `eval:` mapping; errors name `phases[NAME].eval.KEY`."""
        where = f"phases[{phase_name}].eval"
        if not isinstance(mapping, dict):
            raise ConfigError(f"{where}={mapping!r} is invalid: expected a mapping with keys {', '.join(_CHECKS)}")
        for key, value in mapping.items():
            if key not in _CHECKS:
                raise ConfigError(f"{where}.{key} is not a valid key; valid: {', '.join(_CHECKS)}")
            valid, ok = _CHECKS[key]
            if not ok(value):
                raise ConfigError(f"{where}.{key}={value!r} is invalid: expected {valid}")
        unknown = [t for t in mapping.get("tasks", ()) if t not in TASK_NAMES]
        if unknown:
            raise ConfigError(f"{where}.tasks={mapping['tasks']!r} is invalid: unknown {', '.join(unknown)}; "
                              f"valid: {', '.join(TASK_NAMES)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v
                      for k, v in mapping.items()})

    @property
    def needs_documents(self) -> bool:
        return "ppl" in self.tasks or "short" in self.tasks

    def evaluate_kwargs(self) -> dict:
        """The keywords of `megamid.eval.runner.evaluate` this config sets (defaults left to it)."""
        skip = ("tasks", "lengths", "interval", "documents", "short_documents", "max_batch", "use_matplotlib", "rope")
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in skip and getattr(self, f.name) is not None}

    def to_dict(self) -> dict:
        """The YAML form (only what differs from the defaults)."""
        default = EvalConfig()
        return {f.name: list(v) if isinstance(v, tuple) else v for f in fields(self)
                if (v := getattr(self, f.name)) != getattr(default, f.name)}


__all__ = ["DEFAULT_TASKS", "EvalConfig", "TASK_NAMES", "eval_rope", "parse_rope_spec"]
