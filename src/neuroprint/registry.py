"""Name -> factory registries for detectors, attacks, models and datasets (the names used by the API and CLI)."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from neuroprint.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from a public name to a factory; unknown names raise `ConfigError` listing the valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ConfigError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.available())}")
        return self._entries[name]

    def create(self, name: str, **kwargs: Any) -> T:
        """Call the factory of `name`; a parameter it does not take raises `ConfigError` listing those it takes."""
        factory = self.get(name)
        params = inspect.signature(factory).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        unknown = sorted(set(kwargs) - set(params))
        if unknown and not takes_any:
            valid = ", ".join(p for p in params if p != "self") or "none"
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for {self.kind} {name!r}; valid: {valid}")
        return factory(**kwargs)

    def parameters(self, name: str) -> list[str]:
        """Names of the keyword parameters `name`'s factory accepts."""
        return [p for p in inspect.signature(self.get(name)).parameters if p != "self"]

    def available(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


DETECTORS: Registry[Any] = Registry("detector")
ATTACKS: Registry[Any] = Registry("attack")
MODELS: Registry[Any] = Registry("model")
DATASETS: Registry[Any] = Registry("dataset")
ADAPTIVE_ATTACKS: Registry[Any] = Registry("adaptive attack")
