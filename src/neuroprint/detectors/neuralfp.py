"""NeuralFP detector (Dathathri, Zheng et al., arXiv 1803.03870, Algorithm 1 and eq. 8–11).

The model itself carries the defence: it was trained (`neuroprint train --probes N --probe-eps EPS`) so that its
normalised logits move by `dy[i, j]` along each secret direction `dx[i]` for clean inputs of class `j`. The score of
an input is how badly its responses match:

    score(x) = min_j D_j(x)           (score_kind="min", the paper's test: flag if no class matches)
    score(x) = D_{argmax f(x)}(x)     (score_kind="predicted", the class the model predicts)

with D_j(x) = mean_i ||F(x, dx_i) - dy[i, j]||_2. Higher = more adversarial. Nothing is learned from adversarial
examples (the method is attack-agnostic); `calibrate` sets the threshold from clean validation images. One score
costs a single forward pass over the (n + 1) x batch inputs. The score is differentiable in x.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from neuroprint.checks import check_choice, check_int
from neuroprint.detectors.base import Detector
from neuroprint.errors import ConfigError, InputError
from neuroprint.models.classifier import Classifier
from neuroprint.models.probes import NeuralFPProbes, probe_distances, probe_responses
from neuroprint.registry import DETECTORS

SCORE_KINDS = ("min", "predicted")


@DETECTORS.register("neuralfp")
class NeuralFPDetector(Detector):
    """Flag inputs whose probe responses match no class (see the module docstring).

    Args:
        score_kind: "min" (min over classes of D_j) or "predicted" (D at the predicted class).
        batch_size: images per forward pass; each becomes n + 1 inputs.

    Example:
        >>> clf, _ = load_checkpoint("runs/models/nfp")          # trained with --probes 10
        >>> det = NeuralFPDetector().fit(clf, x_val, y_val).calibrate(x_val_clean)
        >>> det.predict(x)                                       # BoolTensor [N]
    """

    name = "neuralfp"
    needs_adversarial_examples: ClassVar[bool] = False

    def __init__(self, score_kind: str = "min", batch_size: int = 128) -> None:
        self.score_kind = check_choice("score_kind", score_kind, SCORE_KINDS)
        self.batch_size = check_int("batch_size", batch_size)

    def fit(
        self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None = None
    ) -> NeuralFPDetector:
        """Attach to a NeuralFP-trained `classifier` after checking its probes fit images `x` `[N, C, H, W]`.

        `x_adv` is accepted (and checked) so the detector fits the common protocol, but never used.
        """
        probes = model_probes(classifier)
        self._check_labelled_images(classifier, x, y)
        if x_adv is not None:
            classifier.check_input(x_adv, "x_adv")
        if tuple(x.shape[1:]) != tuple(probes.dx.shape[1:]):
            raise InputError(f"x has images of shape {list(x.shape[1:])}; the model's probes were drawn for "
                             f"{list(probes.dx.shape[1:])}")
        self.classifier_ = classifier
        return self

    def distances(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(D `[N, K]`, predicted class `[N]`) for images `x`, in batches (differentiable in x)."""
        self._check_fitted()
        self.classifier_.check_input(x, "x")
        probes = model_probes(self.classifier_)
        parts, predicted = [], []
        for start in range(0, len(x), self.batch_size):
            logits, responses = probe_responses(
                self.classifier_, x[start : start + self.batch_size], probes, self.classifier_.bounds
            )
            parts.append(probe_distances(responses, probes))
            predicted.append(logits.argmax(1))
        return torch.cat(parts), torch.cat(predicted)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """`[N]` probe mismatch (higher = more adversarial)."""
        distances, predicted = self.distances(x)
        if self.score_kind == "min":
            return distances.min(dim=1).values
        return distances.gather(1, predicted.unsqueeze(1)).squeeze(1)


def model_probes(classifier: Classifier) -> NeuralFPProbes:
    """The NeuralFP probes a classifier was trained with, or a `ConfigError` saying how to get them."""
    probes = getattr(classifier, "probes", None)
    if probes is None:
        raise ConfigError(
            "this model was not trained with NeuralFP probes (its checkpoint has no probes.safetensors); "
            "train one with `neuroprint train --probes N --probe-eps EPS`"
        )
    if probes.num_classes != classifier.num_classes:
        raise ConfigError(f"the model's probes cover {probes.num_classes} classes, the model has "
                          f"{classifier.num_classes}")
    return probes
