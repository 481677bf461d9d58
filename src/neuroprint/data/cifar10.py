"""`cifar10`: CIFAR-10 read from a local copy in the official "python version" layout (pickled batches)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from neuroprint.data.base import DataSplits, Split
from neuroprint.data.safe_pickle import load_pickle
from neuroprint.errors import ConfigError, InputError
from neuroprint.registry import DATASETS

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file -> images `[N, 3, 32, 32]` float32 in [0, 1] and labels `[N]` int64 in 0..9.

    The file is a pickled dict with `b"data"` (uint8 `[N, 3072]`, each row the 1024 red, then green, then
    blue pixels in row-major order) and `b"labels"` (N ints); its other keys are ignored.
    """
    if not path.is_file():
        raise InputError(f"expected the CIFAR-10 batch file {path.name} at {path}, but it does not exist")
    batch = load_pickle(path, encoding="bytes")
    if not isinstance(batch, dict):
        raise InputError(f"{path} is not a CIFAR-10 batch (a pickled dict with b'data' and b'labels')")
    batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise InputError(f"{path}: b'data' must be a uint8 array [N, 3072], found {found}")
    bad_labels = InputError(f"{path}: b'labels' must be {len(data)} integers 0..9, one per image")
    try:
        y = np.asarray(labels)
    except ValueError:  # ragged nesting
        raise bad_labels from None
    if y.shape != (len(data),) or (len(y) and (y.dtype.kind not in "iu" or y.min() < 0 or y.max() > 9)):
        raise bad_labels
    x = data.reshape(-1, 3, 32, 32).astype(np.float32)
    x /= 255.0
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


@DATASETS.register("cifar10")
def cifar10(path: str | Path, val_size: int = 5000) -> DataSplits:
    """CIFAR-10 from the directory `path` holding `data_batch_1` .. `data_batch_5` and `test_batch`.

    Train is the five training batches in file order minus their last `val_size` images, which form the
    validation split (with the official files: 45,000 / 5,000, validation = the end of `data_batch_5`); test is
    `test_batch` (10,000). No shuffling, so the split is the same everywhere. Images `[N, 3, 32, 32]` in [0, 1].
    """
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"expected a CIFAR-10 directory (python version: {', '.join(TRAIN_BATCHES)}, "
                         f"{TEST_BATCH}) at {root}, but it does not exist")
    parts = [read_batch(root / name) for name in TRAIN_BATCHES]
    x = torch.cat([part[0] for part in parts])
    y = torch.cat([part[1] for part in parts])
    if not 0 < val_size < len(x):
        raise ConfigError(f"val_size must be between 1 and {len(x) - 1} (the training images), got {val_size}")
    test = Split(*read_batch(root / TEST_BATCH))
    if len(test) == 0:
        raise InputError(f"{root / TEST_BATCH} holds no images")
    cut = len(x) - val_size
    return DataSplits("cifar10", Split(x[:cut], y[:cut]), Split(x[cut:], y[cut:]), test, 10)
