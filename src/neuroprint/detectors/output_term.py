"""The fingerprint bank's output term (ours): how atypical the logits are for the predicted class.

With u(x) the logits whitened by the within-class covariance of the clean fit inputs and m_c their class-c mean,
D(x) = mean_i (u_i(x) - m_c,i)^2 for the predicted class c. Minimal-perturbation attacks (CW, DeepFool, EAD) stop
just past the decision boundary, so their logits are far from every class centre even when no fingerprint moved
the way the fit attack (e.g. PGD, which lands deep inside the target class) moved it. D uses clean data only, so
it is attack-agnostic; the bank caps its share (`output_cap`) so that a clean input with unusual logits (a hard
digit) cannot outscore an attacked one that the fingerprints flag.
"""
from __future__ import annotations

import torch

from neuroprint.detectors.whitening import within_class_whiteners


def fit_class_centres(logits: torch.Tensor, y: torch.Tensor, n_classes: int, min_count: int,
                      shrinkage: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(whitener `[K, K]`, class centres `[C, K]`) of clean logits `[N, K]` with labels `y` `[N]`: the ZCA
    whitener of their within-class covariance (shrunk by `shrinkage`) and each class's whitened mean; a class with
    fewer than `min_count` inputs is centred on the mean of all of them."""
    (whitener,) = within_class_whiteners(logits, y, [logits.shape[1]], n_classes, shrinkage)
    white = logits @ whitener
    centres = torch.stack([white[y == c].mean(0) if int((y == c).sum()) >= min_count else white.mean(0)
                           for c in range(n_classes)])
    return whitener, centres


def output_distance(logits: torch.Tensor, pred: torch.Tensor, whitener: torch.Tensor,
                    centres: torch.Tensor) -> torch.Tensor:
    """D `[N]`: mean squared distance of the whitened logits `[N, K]` from the centre of their predicted class
    `pred` `[N]` (differentiable in `logits`)."""
    return ((logits @ whitener - centres[pred]) ** 2).mean(1)
