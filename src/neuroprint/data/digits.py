"""`digits`: scikit-learn's 1,797 8x8 handwritten digits (ships with scikit-learn; no download)."""
from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from neuroprint.data.base import DataSplits, make_splits
from neuroprint.registry import DATASETS


@DATASETS.register("digits")
def digits(seed: int = 0) -> DataSplits:
    """Images `[N, 1, 8, 8]` scaled from 0..16 to [0, 1]; 70/15/15 split shuffled with `seed`."""
    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    return make_splits("digits", x, y, seed)
