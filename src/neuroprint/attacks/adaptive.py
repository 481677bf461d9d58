"""Detector-aware (adaptive) PGD: fool the classifier and a differentiable detector at once.

White-box attack in the style of Carlini & Wagner, "Adversarial Examples Are Not Easily Detected: Bypassing Ten
Detection Methods" (arXiv 1705.07263): L-inf PGD on

    loss(x') = CE(f(x'), y) - c * score(x')

where `score` is the attacker's copy of a detector (higher = more adversarial). Each example keeps the iterate
with the lowest detector score among those the classifier misclassifies (the last iterate when none is).
Not a registry entry: it needs a fitted detector object, so build it in code.

Example:
    >>> attack = DetectorAwarePGD(detector, eps=0.3, steps=100, c=1.0)
    >>> result = attack(classifier, x, y)       # AttackResult; detection is judged by the defender's detector
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from neuroprint.attacks.base import Attack
from neuroprint.checks import check_eps, check_float, check_int
from neuroprint.detectors.base import Detector
from neuroprint.errors import NotFittedError
from neuroprint.models.classifier import Classifier


class DetectorAwarePGD(Attack):
    """L-inf PGD against classifier + `detector` (whose `score` must be differentiable in the input).

    Args:
        detector: the attacker's fitted copy of the detector.
        eps: L-inf budget in (0, 1], default 0.3. alpha: step in (0, 1], default 0.01. steps: >= 1, default 100.
        c: weight of the detector score in the loss (>= 0), default 1.0.
    """

    name = "adaptive-pgd"

    def __init__(self, detector: Detector, eps: float = 0.3, alpha: float = 0.01, steps: int = 100, c: float = 1.0) -> None:
        if getattr(detector, "classifier_", None) is None:
            raise NotFittedError("the adaptive attack needs a fitted detector: call detector.fit(...) first")
        super().__init__(eps=check_eps(eps), alpha=check_float("alpha", alpha, 0.0, 1.0),
                         steps=check_int("steps", steps), c=check_float("c", c, 0.0, 1e6, low_open=False),
                         detector=detector.name)
        self.detector = detector

    def _perturb(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps, alpha, c = self.params["eps"], self.params["alpha"], self.params["c"]
        low, high = classifier.bounds
        adv, best = x.clone(), x.clone()
        best_score = torch.full((len(x),), float("inf"), device=x.device)
        for _ in range(self.params["steps"]):
            adv.requires_grad_(True)
            logits = classifier(adv)
            score = self.detector.score(adv).to(x.device)
            fooled = logits.argmax(1) != y
            better = fooled & (score.detach() < best_score)
            best[better], best_score[better] = adv.detach()[better], score.detach()[better]
            loss = F.cross_entropy(logits, y, reduction="sum") - c * score.sum()
            grad = torch.autograd.grad(loss, adv)[0]
            adv = adv.detach() + alpha * grad.sign()
            adv = torch.minimum(torch.maximum(adv, x - eps), x + eps).clamp(low, high)
        never = torch.isinf(best_score)
        best[never] = adv[never]
        return best
