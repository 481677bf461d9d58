"""Detectors of adversarial inputs: `make_detector(name, **params)` builds any registered one (`DETECTORS`)."""
from __future__ import annotations

import inspect
from typing import Any

from neuroprint.detectors import bank as _bank  # noqa: F401  (registers "bank")
from neuroprint.detectors import lid as _lid  # noqa: F401  (registers "lid")
from neuroprint.detectors import mahalanobis as _mahalanobis  # noqa: F401  (registers "mahalanobis")
from neuroprint.detectors.base import Detector, FeatureSpec
from neuroprint.errors import ConfigError
from neuroprint.registry import DETECTORS


def make_detector(name: str, **params: Any) -> Detector:
    """Build the detector registered as `name` with hyperparameters `params` (unknown ones raise `ConfigError`)."""
    factory = DETECTORS.get(name)
    valid = [p for p in inspect.signature(factory).parameters if p != "self"]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown} for detector {name!r}; valid: {', '.join(valid)}")
    return DETECTORS.create(name, **params)


__all__ = ["DETECTORS", "Detector", "FeatureSpec", "make_detector"]
