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
from neuroprint.specs import parse_spec


def load_dataset(name: str, **options: Any) -> DataSplits:
    """Load a registered dataset by name (see `DATASETS.available()`) or by spec with its options, e.g.
    `load_dataset("folder:image_size=224", path="imagenet/val")`; keyword `options` win over the spec's."""
    base, params = parse_spec(name)
    return DATASETS.create(base, **{**params, **options})


__all__ = ["DATASETS", "DataSplits", "Split", "load_dataset"]
