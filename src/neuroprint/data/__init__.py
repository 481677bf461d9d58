"""Datasets: `load_dataset(name, ...)` returns deterministic `DataSplits` of [0, 1] NCHW images."""
from __future__ import annotations

from typing import Any

from neuroprint.data import cifar10 as _cifar10  # noqa: F401  (registers "cifar10")
from neuroprint.data import digits as _digits  # noqa: F401  (registers "digits")
from neuroprint.data import folder as _folder  # noqa: F401  (registers "folder")
from neuroprint.data import mnist as _mnist  # noqa: F401  (registers "mnist")
from neuroprint.data import npz as _npz  # noqa: F401  (registers "npz")
from neuroprint.data.base import DataSplits, Split
from neuroprint.registry import DATASETS


def load_dataset(name: str, **options: Any) -> DataSplits:
    """Load a registered dataset by name (see `DATASETS.available()`)."""
    return DATASETS.create(name, **options)


__all__ = ["DATASETS", "DataSplits", "Split", "load_dataset"]
