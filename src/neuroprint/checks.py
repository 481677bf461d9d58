"""Parameter checks shared by attacks and detectors: one-line `ConfigError`s that name the parameter and value."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from neuroprint.errors import ConfigError


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return `value` if it is an integer >= `minimum`, else raise `ConfigError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_float(name: str, value: Any, low: float, high: float, *, low_open: bool = True) -> float:
    """Return `value` as a float if it lies in (`low`, `high`] (or [`low`, `high`]), else raise `ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    too_low = value <= low if low_open else value < low
    if too_low or value > high or math.isnan(value):
        raise ConfigError(f"{name} must be in {'(' if low_open else '['}{low}, {high}], got {value!r}")
    return float(value)


def check_eps(value: Any, name: str = "eps") -> float:
    """An L-inf budget in pixel units of [0, 1] images: 0 < eps <= 1."""
    return check_float(name, value, 0.0, 1.0)


def check_layers(layers: Sequence[str] | None) -> list[str] | None:
    """Feature-layer names: None (the classifier's own) or a non-empty list of names, else `ConfigError`."""
    if layers is not None and (isinstance(layers, str) or len(layers) == 0):
        raise ConfigError(f"layers must be a non-empty list of layer names or None, got {layers!r}")
    return None if layers is None else list(layers)


def check_bool(name: str, value: Any) -> bool:
    """Return `value` if it is a bool, else raise `ConfigError`."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return `value` if it is one of `choices`, else raise `ConfigError` listing them."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def check_seed(value: Any) -> int | None:
    """`random_state`: None (draw from torch's global generator) or an integer >= 0."""
    if value is None:
        return None
    return check_int("random_state", value, minimum=0)


def check_optional_cap(name: str, value: Any, integer: bool = False) -> Any:
    """A cap that may be off: None or 0 -> None (0 for configs that cannot write None), else `value` if it is a
    number >= 0 (an integer when `integer`), else `ConfigError`."""
    if value is None:
        return None
    if integer:
        check_int(name, value, 0)
    else:
        check_float(name, value, 0.0, math.inf, low_open=False)
    return value or None
