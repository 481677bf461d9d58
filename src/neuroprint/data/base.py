"""Dataset containers: every loader returns `DataSplits` of float images in [0, 1], NCHW, with int64 labels."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from neuroprint.errors import InputError


@dataclass(frozen=True)
class Split:
    """Images `x` `[N, C, H, W]` float32 in [0, 1] and labels `y` `[N]` int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.y.shape != (len(self.x),):
            raise InputError(f"a split needs x [N, C, H, W] and y [N], got {list(self.x.shape)} and {list(self.y.shape)}")

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.x[index], self.y[index])


@dataclass(frozen=True)
class DataSplits:
    """Deterministic train / validation / test splits of one dataset.

    `mean`/`std` are per-channel statistics of the training images (what `Classifier` normalises with).
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.x.shape[1:]
        return int(c), int(h), int(w)

    @property
    def mean(self) -> list[float]:
        return self.train.x.mean(dim=(0, 2, 3)).tolist()

    @property
    def std(self) -> list[float]:
        return self.train.x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()


def split_indices(n: int, fractions: tuple[float, float, float], seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministically shuffle `range(n)` with `seed` and cut it into train/val/test parts by `fractions`."""
    if n < 3:
        raise InputError(f"a dataset needs at least 3 images to split, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = max(1, round(fractions[0] * n))
    n_val = max(1, round(fractions[1] * n))
    n_train = min(n_train, n - n_val - 1)
    return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]


SPLIT_FRACTIONS = (0.7, 0.15, 0.15)  # train, validation, test shares of sources that ship no official split


def make_splits(name: str, x: torch.Tensor, y: torch.Tensor, seed: int,
                fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> DataSplits:
    """Split one labelled pool `x`, `y` deterministically (used by sources that ship no official split)."""
    tr, va, te = split_indices(len(x), fractions, seed)
    return DataSplits(name, Split(x[tr], y[tr]), Split(x[va], y[va]), Split(x[te], y[te]), int(y.max()) + 1)
