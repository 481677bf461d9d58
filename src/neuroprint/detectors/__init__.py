"""Detectors of adversarial inputs: `make_detector(name, **params)` builds any registered one (`DETECTORS`)."""
from __future__ import annotations

from typing import Any

from neuroprint.detectors import bank as _bank  # noqa: F401  (registers "bank")
from neuroprint.detectors import binary_activation as _binary  # noqa: F401  (registers "binary-activation")
from neuroprint.detectors import distance_space as _distance_space  # noqa: F401  (registers "distance-space")
from neuroprint.detectors import dknn as _dknn  # noqa: F401  (registers "dknn")
from neuroprint.detectors import kdbu as _kdbu  # noqa: F401  (registers "kdbu")
from neuroprint.detectors import lid as _lid  # noqa: F401  (registers "lid")
from neuroprint.detectors import mahalanobis as _mahalanobis  # noqa: F401  (registers "mahalanobis")
from neuroprint.detectors import neuralfp as _neuralfp  # noqa: F401  (registers "neuralfp")
from neuroprint.detectors import nnif as _nnif  # noqa: F401  (registers "nnif")
from neuroprint.detectors.base import Detector, FeatureSpec
from neuroprint.registry import DETECTORS
from neuroprint.specs import parse_spec


def make_detector(spec: str, **params: Any) -> Detector:
    """Build a detector from its registered name or a spec `"name:key=value,..."` (e.g. `"bank:d=20,k=10"`).

    Keyword `params` override values in the spec; unknown names or parameters raise `ConfigError`.
    """
    name, spec_params = parse_spec(spec)
    return DETECTORS.create(name, **{**spec_params, **params})


__all__ = ["DETECTORS", "Detector", "FeatureSpec", "make_detector"]
