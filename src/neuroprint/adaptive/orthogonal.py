"""Selective and orthogonal PGD: take the classifier step and the detector step in turn, not as one sum.

Bryniarski, Hingun, Pachuca, Wang & Carlini, "Evading Adversarial Example Detection Defenses with Orthogonal
Projected Gradient Descent" (ICLR 2022, arXiv 2106.15023). At every step and for every image: while the classifier
is still right, step on the gradient of its margin z_y - max_{j != y} z_j; once it is fooled but the detector
still flags the image, step on the gradient of the detector's loss. The orthogonal variant projects each gradient
onto the orthogonal complement of the other (per image, flattened), so the classifier step does not raise the
detector's score to first order and the detector step does not undo the misclassification; the selective variant
takes the plain gradients.

Example:
    >>> result = OrthogonalPGD(norm="linf", eps=0.3, steps=200)(classifier, detector_view(detector), x, y)
"""
from __future__ import annotations

from typing import Any

import torch

from neuroprint.adaptive.base import AdaptiveAttack, clean_margin
from neuroprint.adaptive.views import DetectorView
from neuroprint.models.classifier import Classifier
from neuroprint.registry import ADAPTIVE_ATTACKS


def orthogonal_to(g: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """`g` `[B, ...]` minus its projection on `other` `[B, ...]`, per image (flattened)."""
    a, b = g.flatten(1), other.flatten(1)
    coef = (a * b).sum(1, keepdim=True) / b.pow(2).sum(1, keepdim=True).clamp_min(1e-20)
    return (a - coef * b).view_as(g)


@ADAPTIVE_ATTACKS.register("orthogonal")
class OrthogonalPGD(AdaptiveAttack):
    """Orthogonal PGD (module docstring); base args: norm, eps, steps, restarts, step_size, random_state."""

    name = "orthogonal"
    project = True

    def direction(self, classifier: Classifier, view: DetectorView, adv: torch.Tensor, y: torch.Tensor,
                  state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        adv = adv.clone().requires_grad_(True)
        out = view(adv)
        margin = clean_margin(out.logits, y)
        (g_cls,) = torch.autograd.grad(margin.sum(), adv, retain_graph=True)
        (g_det,) = torch.autograd.grad(out.loss.sum(), adv)
        if self.project:
            g_cls, g_det = orthogonal_to(g_cls, g_det), orthogonal_to(g_det, g_cls)
        right = (out.logits.detach().argmax(1) == y).view(-1, *[1] * (adv.dim() - 1))
        return torch.where(right, g_cls, g_det), out.logits.detach(), out.check.to(margin.device)


@ADAPTIVE_ATTACKS.register("selective")
class SelectivePGD(OrthogonalPGD):
    """Selective PGD (module docstring): the classifier step or the detector step, unprojected."""

    name = "selective"
    project = False
