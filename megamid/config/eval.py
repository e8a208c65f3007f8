"""EvalConfig: a phase's in-loop evaluation (`eval:` of a phase), validated where it is built.

    phases:
      - name: ctx1024
        eval: {tasks: [passkey, ppl], lengths: [512, 1024], samples: 2, interval: 500}

Keys: tasks (default passkey, ppl), lengths (default the phase's seq_len), interval (steps between
evaluations; the phase end always evaluates), documents / short_documents (ppl/short: .npy, .npz or an
indexed prefix; default the phase's first data source, which the run trains on: point it at a held-out
prefix for a clean number), max_batch (sequences per forward), and the keywords of
`megamid.eval.runner.evaluate` (samples, depths, num_candidates, seed, ruler_tasks, greedy, short_length,
num_buckets, max_documents, use_matplotlib).
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
}


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
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in mapping.items()})

    @property
    def needs_documents(self) -> bool:
        return "ppl" in self.tasks or "short" in self.tasks

    def evaluate_kwargs(self) -> dict:
        """The keywords of `megamid.eval.runner.evaluate` this config sets (defaults left to it)."""
        skip = ("tasks", "lengths", "interval", "documents", "short_documents", "max_batch", "use_matplotlib")
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in skip and getattr(self, f.name) is not None}

    def to_dict(self) -> dict:
        """The YAML form (only what differs from the defaults)."""
        default = EvalConfig()
        return {f.name: list(v) if isinstance(v, tuple) else v for f in fields(self)
                if (v := getattr(self, f.name)) != getattr(default, f.name)}


__all__ = ["DEFAULT_TASKS", "EvalConfig", "TASK_NAMES"]
