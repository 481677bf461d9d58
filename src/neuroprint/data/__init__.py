"""Datasets: `load_dataset(name, ...)` returns deterministic `DataSplits` of [0, 1] NCHW images."""
from __future__ import annotations

from typing import Any

from neuroprint.data import digits as _digits  # noqa: F401  (registers "digits")
from neuroprint.data.base import DataSplits, Split
from neuroprint.registry import DATASETS


def load_dataset(name: str, **options: Any) -> DataSplits:
    """Load a registered dataset by name (see `DATASETS.available()`)."""
    return DATASETS.create(name, **options)


__all__ = ["DataSplits", "Split", "load_dataset", "DATASETS"]
