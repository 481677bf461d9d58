"""Adaptive evaluation: attacks that know the classifier *and* the detector, and the SR@FPR metric over them.

Above both `neuroprint.attacks` and `neuroprint.detectors` (neither imports this package). `detector_view` gives an
attacker's differentiable view of any fitted detector (`views`); every attack in `ADAPTIVE_ATTACKS` takes
``(classifier, view, x, y)`` with its norm and budget as parameters; `run_robustness` runs a suite of them
against every detector and budget and reports the share of attacked images that get through
(`neuroprint.evaluation.metrics.success_rate_at_threshold`).

Example:
    >>> from neuroprint.adaptive import detector_view, make_adaptive_attack
    >>> view = detector_view(detector)                            # fitted and calibrated detector
    >>> result = make_adaptive_attack("joint:eps=0.3,steps=200")(classifier, view, x, y)
    >>> (result.fooled & ~detector.predict(result.x_adv)).float().mean()   # SR at the defender's threshold
"""
from __future__ import annotations

import inspect
from typing import Any

from neuroprint.adaptive import feature_matching as _feature_matching  # noqa: F401  (each module registers)
from neuroprint.adaptive import high_confidence as _high_confidence  # noqa: F401
from neuroprint.adaptive import joint as _joint  # noqa: F401
from neuroprint.adaptive import orthogonal as _orthogonal  # noqa: F401
from neuroprint.adaptive import papers as _papers  # noqa: F401
from neuroprint.adaptive.base import AdaptiveAttack, AdaptiveResult
from neuroprint.adaptive.views import VIEWS, DetectorView, ViewOutput, detector_view, register_view
from neuroprint.errors import ConfigError
from neuroprint.registry import ADAPTIVE_ATTACKS
from neuroprint.specs import parse_spec


def make_adaptive_attack(spec: str, **params: Any) -> AdaptiveAttack:
    """Build an adaptive attack from `"name"` or `"name:key=value,..."`; keyword `params` override the spec.

    Example:
        >>> make_adaptive_attack("joint:norm=l2,eps=2.0", steps=100).params["steps"]
        100
    """
    name, spec_params = parse_spec(spec)
    factory = ADAPTIVE_ATTACKS.get(name)  # ConfigError naming the valid attacks
    valid = [p for cls in (factory, AdaptiveAttack) for p in inspect.signature(cls.__init__).parameters
             if p not in ("self", "base")]
    unknown = sorted((set(spec_params) | set(params)) - set(valid))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for adaptive attack {name!r}; valid: {', '.join(valid)}")
    return factory(**{**spec_params, **params})


__all__ = ["ADAPTIVE_ATTACKS", "VIEWS", "AdaptiveAttack", "AdaptiveResult", "DetectorView", "ViewOutput",
           "detector_view", "make_adaptive_attack", "register_view"]
