"""What the protocol fits and tests a detector on: a set of images, or the activations of those images when the
detector reads nothing else (`Detector.feature_spec`).

Activations are extracted once per feature spec and image set, shared by every detector that reads the same spec
(one forward pass for Mahalanobis, LID and the bank when their layers and pooling agree), and, under torchrun,
extracted by every rank for its block of batches and gathered in rank order (`features.extract` with `ranks`), so
the fitted detectors and their scores are those of one process.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from neuroprint.detectors import Detector
from neuroprint.detectors.base import FeatureSpec, resolve_layers
from neuroprint.distributed import Ranks
from neuroprint.features import Features, extract
from neuroprint.models.classifier import Classifier

SCORE_BATCH = 500  # images per `Detector.score` call when a detector reads the images themselves


@dataclass(frozen=True)
class DetectorInput:
    """One image set as a detector reads it: `images` `[N, C, H, W]`, their `features` (None for a detector that
    reads the images) and the `seconds` their extraction took (0 without features)."""

    images: torch.Tensor
    features: Features | None = None
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.images)


def concat(parts: list[DetectorInput]) -> DetectorInput:
    """The sets one after the other (their extraction seconds added)."""
    images = torch.cat([p.images for p in parts])
    if any(p.features is None for p in parts):
        return DetectorInput(images)
    features = [p.features for p in parts if p.features is not None]
    logits = torch.cat([f.logits for f in features])
    layers = {name: torch.cat([f[name] for f in features]) for name in features[0]}
    return DetectorInput(images, Features(logits, layers), sum(p.seconds for p in parts))


class SharedActivations:
    """The activations of named image sets for one feature spec at a time (a new spec drops the last one's, so
    memory holds one spec's sets). Under torchrun every rank must ask for the same sets in the same order."""

    def __init__(self, classifier: Classifier, batch_size: int, ranks: Ranks) -> None:
        self.classifier, self.batch_size, self.ranks = classifier, batch_size, ranks
        self._spec: FeatureSpec | None = None
        self._sets: dict[str, tuple[Features, float]] = {}

    def input(self, detector: Detector, name: str, images: torch.Tensor) -> DetectorInput:
        """Set `name` (`images`) as `detector` reads it: its activations when the detector has a feature spec."""
        spec = detector.feature_spec
        if spec is None:
            return DetectorInput(images)
        spec = FeatureSpec(resolve_layers(spec.layers, self.classifier), spec.pooling)  # as it reads after fitting
        if spec != self._spec:
            self._spec, self._sets = spec, {}
        if name not in self._sets:
            start = time.perf_counter()
            features = extract(self.classifier, images, spec.layers, spec.pooling, self.batch_size, ranks=self.ranks)
            self._sets[name] = (features, time.perf_counter() - start)
        features, seconds = self._sets[name]
        return DetectorInput(images, features, seconds)


def fit(detector: Detector, classifier: Classifier, clean: DetectorInput, y: torch.Tensor,
        adversarial: DetectorInput | None) -> None:
    """`fit_features` when the clean (and adversarial) sets come with features, else `fit` on the images."""
    if clean.features is not None and adversarial is not None and adversarial.features is not None:
        detector.fit_features(classifier, clean.features, y, adversarial.features)
    else:
        detector.fit(classifier, clean.images, y, None if adversarial is None else adversarial.images)


def calibrate(detector: Detector, clean: DetectorInput, fpr: float) -> None:
    """`calibrate_features` or `calibrate`, as the set comes."""
    if clean.features is not None:
        detector.calibrate_features(clean.features, fpr)
    else:
        detector.calibrate(clean.images, fpr)


@torch.no_grad()
def scores(detector: Detector, inputs: DetectorInput) -> np.ndarray:
    """Scores `[N]` (higher = more adversarial) without an autograd graph (a detector that needs input gradients
    enables them itself); images are scored `SCORE_BATCH` at a time."""
    if inputs.features is not None:
        return detector.score_features(inputs.features).cpu().numpy()
    x = inputs.images
    return np.concatenate([detector.score(x[i : i + SCORE_BATCH]).cpu().numpy() for i in range(0, len(x), SCORE_BATCH)])
