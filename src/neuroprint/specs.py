"""The `"name:key=value,..."` spec syntax that names an attack, a detector or a dataset with its parameters.

Examples: `pgd:eps=0.1,steps=20`, `torchattacks.APGD:eps=0.3,loss=ce`, `bank:d=20,k=10,layers=fc1+fc2`.
"""
from __future__ import annotations

from typing import Any

from neuroprint.errors import ConfigError


def parse_value(text: str) -> Any:
    """Parse one spec value: `true`/`false` -> bool, `none` -> None, int, float, `a+b` -> ["a", "b"], else str."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    if "+" in text:
        return [part.strip() for part in text.split("+")]
    return text.strip()


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split `"name"` or `"name:key=value,key=value"` into the name and a dict of parsed values.

    Example:
        >>> parse_spec("pgd:eps=0.1,steps=20,random_start=false")
        ('pgd', {'eps': 0.1, 'steps': 20, 'random_start': False})
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"a spec must be a non-empty string like 'pgd:eps=0.1,steps=20', got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if not name:
        raise ConfigError(f"spec {spec!r} has no name before ':'")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise ConfigError(f"spec item {item!r} in {spec!r} is not of the form key=value")
        if key in kwargs:
            raise ConfigError(f"spec {spec!r} sets {key!r} twice")
        kwargs[key] = parse_value(value)
    return name, kwargs
