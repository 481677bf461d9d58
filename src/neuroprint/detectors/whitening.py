"""Within-class ZCA whitening of concatenated layer activations (the fingerprint bank's decorrelation).

ZCA (Kessy, Lewin, Strimmer, "Optimal Whitening and Decorrelation", arXiv 1512.00809) multiplies a layer's
activations by the symmetric inverse square root of their covariance; here the covariance is the within-class one
of clean images (each class centred on its own mean), shrunk towards its diagonal. A layer wider than
`MAX_ZCA_WIDTH` neurons is scaled per neuron by its within-class standard deviation instead (the limit of full
shrinkage): a `[w, w]` matrix would not fit in memory.
"""
from __future__ import annotations

import torch

MAX_ZCA_WIDTH = 4096
VAR_FLOOR = 1e-8  # smallest variance a whitener divides by: a dead neuron gets a bounded gain, never inf/NaN


def within_class_whiteners(features: torch.Tensor, y: torch.Tensor, widths: list[int], n_classes: int,
                           shrinkage: float) -> tuple[torch.Tensor, ...]:
    """One whitener per layer of the concatenated activations `features` `[N, D]` (labels `y` `[N]`, `widths`
    neurons per layer, summing to D): a `[w, w]` ZCA matrix of the within-class covariance shrunk by `shrinkage`
    in [0, 1] towards its diagonal, or a `[w]` vector of per-neuron scales for a layer wider than `MAX_ZCA_WIDTH`."""
    centred = features.double().clone()
    for c in range(n_classes):
        rows = y == c
        if rows.any():
            centred[rows] -= centred[rows].mean(0)
    dof = max(len(centred) - len(torch.unique(y)), 1)
    out: list[torch.Tensor] = []
    for block in centred.split(widths, dim=1):
        if block.shape[1] > MAX_ZCA_WIDTH:
            var = (block**2).sum(0) / dof
            out.append(var.clamp(min=max(1e-6 * float(var.max()), VAR_FLOOR)).rsqrt().float())
            continue
        cov = block.T @ block / dof
        cov = (1.0 - shrinkage) * cov + shrinkage * torch.diag(torch.diag(cov))
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp(min=max(1e-6 * float(evals.max()), VAR_FLOOR))
        out.append(((evecs * evals.rsqrt()) @ evecs.T).float())
    return tuple(out)


def whiten(features: torch.Tensor, whiteners: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Concatenated activations `[N, D]` with every layer multiplied by its whitener (matrix or per-neuron vector,
    from `within_class_whiteners`); returned unchanged when `whiteners` is empty. Differentiable."""
    if not whiteners:
        return features
    blocks = features.split([len(w) for w in whiteners], dim=1)
    return torch.cat([b @ w if w.dim() == 2 else b * w for b, w in zip(blocks, whiteners, strict=True)], dim=1)
