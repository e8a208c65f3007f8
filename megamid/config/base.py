"""The error type and field checks shared by every config dataclass."""

from typing import Any, Iterable

from megamid.errors import MegamidError


class ConfigError(MegamidError, ValueError):
    """An invalid configuration value. The message names the field, the value and what is valid."""


def fail(field: str, value: Any, valid: str) -> None:
    raise ConfigError(f"{field}={value!r} is invalid: {valid}")


def check_positive(field: str, value, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(field, value, "expected a number")
    if value < 0 or (value == 0 and not allow_zero):
        fail(field, value, "must be >= 0" if allow_zero else "must be > 0")


def check_choice(field: str, value, choices: Iterable) -> None:
    choices = list(choices)
    if value not in choices:
        fail(field, value, f"expected one of {', '.join(map(str, choices))}")


def check_divisible(field: str, value: int, divisor: int, divisor_name: str) -> None:
    if divisor <= 0 or value % divisor:
        fail(field, value, f"must be divisible by {divisor_name}={divisor}")
