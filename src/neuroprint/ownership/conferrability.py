"""Targeted transferability and conferrability of inputs across a set of models (Lukas, Zhang and Kerschbaum 2021,
"Deep Neural Network Fingerprinting by Conferrable Adversarial Examples", ICLR, arXiv 1912.00888, eqs. 1-2).

An input x with target label t is *conferrable* when the source model's surrogates predict t on it and independently
trained reference models do not: ``Confer(x, t) = Transfer(surrogates, x, t) * (1 - Transfer(references, x, t))``,
where ``Transfer(models, x, t)`` is the share of `models` predicting t. Scores lie in [0, 1]; higher = more
conferrable.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from neuroprint.errors import InputError
from neuroprint.models.classifier import Classifier


def transfer(predictions: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Share of models predicting `target`: `predictions` `[M, N]` (labels of M models), `target` `[N]` -> `[N]`."""
    if predictions.ndim != 2 or target.shape != (predictions.shape[1],):
        raise InputError(f"predictions must be [models, N] and target [N]; got {list(predictions.shape)} and "
                         f"{list(target.shape)}")
    if predictions.shape[0] == 0:
        raise InputError("transferability needs at least one model's predictions, got 0 models")
    return (predictions == target.unsqueeze(0)).float().mean(0)


def conferrability(surrogate_predictions: torch.Tensor, reference_predictions: torch.Tensor,
                   target: torch.Tensor) -> torch.Tensor:
    """Eq. 2: ``transfer(surrogates) * (1 - transfer(references))`` per input, `[N]` in [0, 1].

    Args:
        surrogate_predictions: labels `[S, N]` of S surrogate models.
        reference_predictions: labels `[R, N]` of R reference models.
        target: target labels `[N]` (the source model's prediction on each input).
    """
    return transfer(surrogate_predictions, target) * (1 - transfer(reference_predictions, target))


def predictions(models: Sequence[Classifier], x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Labels `[len(models), N]` that each model predicts for images `x` `[N, C, H, W]`."""
    if not models:
        raise InputError("predictions need at least one model, got none")
    return torch.stack([model.predict(x, batch_size) for model in models])
