"""The evaluation protocol's image sets: seeded, disjoint, and only correctly classified clean images.

`n_fit` validation and `n_test` test sources are each drawn with a seed and cut into two disjoint halves, one
scored as clean and one attacked; the clean validation half is split again into images to fit on and a quarter
held out to set thresholds on (images a detector was fit on look "too clean" and would give a threshold with the
wrong false-positive rate). Every harness (evaluate, robustness, the guard, the experiments) draws its images here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from neuroprint.data import DataSplits, Split
from neuroprint.errors import InputError
from neuroprint.models.classifier import Classifier


def draw_sources(n_available: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded draw of `n` source indices cut into two disjoint halves: (clean half, attacked half)."""
    if n_available < 4:
        raise InputError(f"the split has only {n_available} images; need at least 4")
    n = min(n, n_available)
    perm = torch.randperm(n_available, generator=torch.Generator().manual_seed(seed))[:n]
    return perm[: n // 2].sort().values, perm[n // 2 :].sort().values


def held_out_index(n_available: int, n_drawn: int, seed: int) -> torch.Tensor:
    """The indices `draw_sources(n_available, n_drawn, seed)` left undrawn (sorted): images of the split that no
    detector was fit or calibrated on, for choosing a design without touching the test set."""
    if n_drawn >= n_available:
        raise InputError(f"all {n_available} images of the split are drawn for fitting (n_fit={n_drawn}); none are "
                         "left to attack: lower n_fit or attack the test images")
    perm = torch.randperm(n_available, generator=torch.Generator().manual_seed(seed))
    return perm[n_drawn:].sort().values


@dataclass
class ProtocolSplits:
    """The protocol's disjoint image sets (module docstring): clean validation images to fit on (`val_clean`) and
    to set thresholds on (`val_calib`, a quarter held out from fitting), the validation sources to attack for
    fitting (`val_adv_index`), correctly classified clean test images (`test_clean`) and the test sources to
    attack (`test_adv_index`)."""

    val_clean: Split
    val_calib: Split
    val_adv_index: torch.Tensor
    test_clean: Split
    test_adv_index: torch.Tensor


def protocol_splits(classifier: Classifier, data: DataSplits, n_fit: int, n_test: int, seed: int) -> ProtocolSplits:
    """Seeded draw of the protocol's image sets: `n_fit` validation and `n_test` test sources, each cut in two
    disjoint halves (clean, attacked); only correctly classified clean images are kept."""
    val_clean, val_calib, val_adv_idx = fit_splits(classifier, data.val, n_fit, seed)
    test_clean_idx, test_adv_idx = draw_sources(len(data.test), n_test, seed + 1)
    return ProtocolSplits(val_clean, val_calib, val_adv_idx, correct_clean(classifier, data.test, test_clean_idx),
                          test_adv_idx)


def fit_splits(classifier: Classifier, val: Split, n_fit: int, seed: int) -> tuple[Split, Split, torch.Tensor]:
    """Seeded draw of `n_fit` sources from `val`, cut in two disjoint halves: the correctly classified clean half,
    split into images to fit on and a quarter held out to set thresholds on, and the indices of the half to attack.
    Returns (fit clean, calibration clean, attack index)."""
    val_clean_idx, val_adv_idx = draw_sources(len(val), n_fit, seed)
    val_clean = correct_clean(classifier, val, val_clean_idx)
    calib_mask = torch.rand(len(val_clean), generator=torch.Generator().manual_seed(seed + 2)) < 0.25
    return val_clean.subset(~calib_mask), val_clean.subset(calib_mask), val_adv_idx


def correct_clean(classifier: Classifier, split: Split, index: torch.Tensor) -> Split:
    """The images at `index` that `classifier` labels correctly."""
    sub = split.subset(index)
    keep = classifier.predict(sub.x) == sub.y
    return sub.subset(keep.nonzero().flatten())
