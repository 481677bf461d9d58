"""High-confidence PGD: misclassify far past the decision boundary, ignoring the detector's gradient.

Athalye, Carlini & Wagner (ICML 2018, arXiv 1802.00420, Sec. 5.1) found LID blind to high-confidence adversarial
examples: attacks that push the margin well past zero produce activations LID was never fit on. This attack
descends max(z_y - max_{j != y} z_j, -kappa) on the logits z with a large `kappa` and uses no detector gradient;
the detector enters only through the choice of iterate (the first one misclassified and below the defender's
threshold, as for every adaptive attack), so it also works on detectors with no gradient at all.

Example:
    >>> result = HighConfidencePGD(norm="linf", eps=0.3, kappa=20)(classifier, detector_view(detector), x, y)
"""
from __future__ import annotations

from typing import Any

import torch

from neuroprint.adaptive.base import AdaptiveAttack, clean_margin
from neuroprint.adaptive.views import DetectorView
from neuroprint.checks import check_float
from neuroprint.models.classifier import Classifier
from neuroprint.registry import ADAPTIVE_ATTACKS


@ADAPTIVE_ATTACKS.register("high-confidence")
class HighConfidencePGD(AdaptiveAttack):
    """Margin PGD to confidence `kappa` (logits, default 20; module docstring); base args as `AdaptiveAttack`."""

    name = "high-confidence"

    def __init__(self, kappa: float = 20.0, **base: Any) -> None:
        super().__init__(**base)
        self.params["kappa"] = check_float("kappa", kappa, 0.0, 1e3, low_open=False)

    def direction(self, classifier: Classifier, view: DetectorView, adv: torch.Tensor, y: torch.Tensor,
                  state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            check = view(adv.detach()).check
        adv = adv.clone().requires_grad_(True)
        logits = classifier(adv)
        loss = clean_margin(logits, y).clamp_min(-self.params["kappa"])
        (grad,) = torch.autograd.grad(loss.sum(), adv)
        return grad, logits.detach(), check.to(logits.device)
