"""Choosing a detector hyperparameter by cross-validated detection AUC on the validation data (the NNIF paper's
"nested cross validation within the validation set", Cohen et al. 2020, arXiv 1909.06872, Sec. 4).

Each candidate value gives its own feature matrix; a logistic regression is fitted on the training folds and scored
by ROC AUC on the held-out fold. Folds are stratified and grouped, so a clean image and its attack (same group)
never fall on both sides. The value with the best mean AUC wins (ties: the first in the given order).
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from neuroprint.detectors.logistic import LogisticHead
from neuroprint.errors import ConfigError


def check_grid(name: str, values: Sequence[Any] | None) -> list[int] | None:
    """A candidate grid: None, or a non-empty list of integers >= 1 (digit strings, as a spec `10+20` gives, are
    accepted); returns it as ints, or raises `ConfigError` naming `name`."""
    if values is None:
        return None
    if isinstance(values, (str, int)) or len(values) == 0:
        raise ConfigError(f"{name} must be a non-empty list of integers >= 1 or None, got {values!r}")
    grid = []
    for v in values:
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a non-empty list of integers >= 1 or None, got {values!r}")
        grid.append(v)
    return grid


def paired_groups(n_clean: int, n_adv: int) -> torch.Tensor:
    """Group ids `[n_clean + n_adv]`: clean i and adversarial i share group i when the sets are paired (equal
    length, row i of the attack set is the attack on clean image i); otherwise every row is its own group."""
    clean = torch.arange(n_clean)
    adv = torch.arange(n_adv) if n_adv == n_clean else n_clean + torch.arange(n_adv)
    return torch.cat([clean, adv])


def select_by_cv(
    candidates: Mapping[Hashable, torch.Tensor],
    labels: torch.Tensor,
    groups: torch.Tensor,
    folds: int = 5,
    random_state: int = 0,
) -> tuple[Hashable, dict[Hashable, float]]:
    """The candidate whose features `[N, F]` give the best mean held-out AUC, and every candidate's mean AUC.

    `labels` `[N]` are 0 = clean, 1 = adversarial; `groups` `[N]` keep related rows in one fold.
    """
    t = labels.numpy()
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=random_state)
    splits = list(splitter.split(np.zeros(len(t)), t, groups.numpy()))
    aucs: dict[Hashable, float] = {}
    for value, features in candidates.items():
        fold_aucs = []
        for train, test in splits:
            head = LogisticHead(cv_folds=0).fit(features[train], labels[train])
            fold_aucs.append(roc_auc_score(t[test], head(features[test].float()).detach().numpy()))
        aucs[value] = float(np.mean(fold_aucs))
    best = max(aucs, key=lambda v: aucs[v])  # max keeps the first of equal values
    return best, aucs
