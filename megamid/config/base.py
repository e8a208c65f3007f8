"""The error type and field checks shared by every config dataclass."""

import math
from typing import Any, Iterable

from megamid.errors import MegamidError


class ConfigError(MegamidError, ValueError):
    """An invalid configuration value. The message names the field, the value and what is valid."""


def fail(field: str, value: Any, valid: str) -> None:
    raise ConfigError(f"{field}={value!r} is invalid: {valid}")


def check_number(field: str, value, valid: str = "expected a finite number") -> None:
    """A real, finite number (bools, NaN and +-inf are refused: every comparison with NaN is False)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(field, value, valid)
    if isinstance(value, float) and not math.isfinite(value):
        fail(field, value, valid)


def check_positive(field: str, value, allow_zero: bool = False) -> None:
    check_number(field, value, "expected a finite number " + (">= 0" if allow_zero else "> 0"))
    if value < 0 or (value == 0 and not allow_zero):
        fail(field, value, "must be >= 0" if allow_zero else "must be > 0")


def check_range(field: str, value, low: float, high: float, high_open: bool = True) -> None:
    """low <= value < high (or <= high with high_open=False), finite."""
    interval = f"[{low:g}, {high:g}{')' if high_open else ']'}"
    check_number(field, value, f"expected a finite number in {interval}")
    if not (low <= value and (value < high if high_open else value <= high)):
        fail(field, value, f"must be in {interval}")


def check_choice(field: str, value, choices: Iterable) -> None:
    choices = list(choices)
    if value not in choices:
        fail(field, value, f"expected one of {', '.join(map(str, choices))}")


def check_divisible(field: str, value: int, divisor: int, divisor_name: str) -> None:
    if divisor <= 0 or value % divisor:
        fail(field, value, f"must be divisible by {divisor_name}={divisor}")
