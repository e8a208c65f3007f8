"""YAML files and `key.sub=value` overrides into config dataclasses.

Dataclasses are built recursively from their type hints: a field whose type is a dataclass takes a
mapping; unknown keys are rejected with the list of valid ones. Overrides are parsed as YAML scalars
(`training.lr.peak_lr=3e-4`, `parallel.use_distributed_optimizer=true`, `checkpoint.keep_last=null`).
"""

import dataclasses
import os
import types
import typing
from typing import Any

import yaml

from megamid.config.base import ConfigError


def load_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"recipe file {path!r} does not exist")
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe file {path!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe file {path!r} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Returns a copy of `data` with each `a.b.c=value` applied (creating mappings as needed)."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is invalid: expected key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {item!r}: {'.'.join(parts[:i])!r} is a list; "
                                      f"index with 0..{len(node) - 1}")
                node = node[int(part)]
                continue
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, (dict, list)):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])!r} is a value, not a mapping")
            node = child
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"override {item!r}: index {last!r} out of range 0..{len(node) - 1}")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(field_path: str, tp, value: Any) -> Any:
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"{field_path}=None is invalid: a value is required")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, field_path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{field_path}={value!r} is invalid: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{field_path}={value!r} is invalid: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{field_path}={value!r} is invalid: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{field_path}={value!r} is invalid: expected a string")
        return value
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{field_path}={value!r} is invalid: expected a list")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(f"{field_path}.{i}", item_tp, v) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{field_path}={value!r} is invalid: expected a mapping")
        return dict(value)
    return value


def build(cls, data: Any, path: str = ""):
    """Construct dataclass `cls` from a mapping; errors name the dotted field path."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}={data!r} is invalid: expected a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = path or "the top level"
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; "
                          f"valid keys: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(f"{path}.{name}" if path else name, hints[name], value)
    try:
        return cls(**kwargs)  # __post_init__ errors name their fields in full already
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{path or cls.__name__}: {exc}") from None


def to_dict(obj) -> Any:
    """Plain-data form of a config (what is written next to every checkpoint)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
