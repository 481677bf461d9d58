"""`npz`: a labelled image pool stored as arrays `x` and `y` in a numpy `.npz` archive."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from neuroprint.data.base import DataSplits, make_splits
from neuroprint.errors import InputError
from neuroprint.registry import DATASETS


def read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays `x` and `y` of the archive `path` (loaded without pickle, so object arrays are refused)."""
    if not path.is_file():
        raise InputError(f"expected an .npz archive with arrays x and y at {path}, but it does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise InputError(f"{path} is a single .npy array; expected an .npz archive with arrays x and y")
        with archive:
            missing = [name for name in ("x", "y") if name not in archive.files]
            if missing:
                found = ", ".join(archive.files) or "nothing"
                raise InputError(f"{path} lacks the array(s) {', '.join(missing)}; it holds {found}")
            return archive["x"], archive["y"]
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path} is not a readable .npz archive ({type(exc).__name__}: {exc})") from None


def check_images(x: np.ndarray, path: Path) -> torch.Tensor:
    """`x` `[N, C, H, W]` or `[N, H, W]`, uint8 0..255 or float in [0, 1] -> float32 `[N, C, H, W]` in [0, 1]."""
    if x.ndim not in (3, 4):
        raise InputError(f"{path}: x must be [N, C, H, W] or [N, H, W], got shape {list(x.shape)}")
    if x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        raise InputError(f"{path}: x looks channels-last {list(x.shape)}; store it as [N, C, H, W]")
    if len(x) == 0 or x.size == 0:
        raise InputError(f"{path}: x holds no pixels (shape {list(x.shape)})")
    if x.dtype == np.uint8:
        images = torch.from_numpy(x.astype(np.float32) / 255.0)
    elif x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise InputError(f"{path}: x contains NaN or infinite values")
        if x.min() < 0 or x.max() > 1:
            raise InputError(f"{path}: float x must lie in [0, 1], found [{x.min():.4g}, {x.max():.4g}]")
        images = torch.from_numpy(x.astype(np.float32))
    else:
        raise InputError(f"{path}: x must be uint8 (0..255) or float in [0, 1], got dtype {x.dtype}")
    return images.unsqueeze(1) if x.ndim == 3 else images


def check_labels(y: np.ndarray, n: int, path: Path) -> torch.Tensor:
    """`y` `[n]` of non-negative integers -> int64 tensor."""
    if y.shape != (n,):
        raise InputError(f"{path}: y must be [N] with N = {n} (one label per image in x), got shape {list(y.shape)}")
    if y.dtype.kind not in "iu":
        raise InputError(f"{path}: y must hold integer class labels, got dtype {y.dtype}")
    if y.min() < 0:
        raise InputError(f"{path}: y must hold labels 0, 1, 2, ..., found {y.min()}")
    return torch.from_numpy(y.astype(np.int64))


@DATASETS.register("npz")
def npz(path: str | Path, seed: int = 0) -> DataSplits:
    """Images `x` and labels `y` from the `.npz` archive `path`, split 70/15/15 after a shuffle with `seed`.

    `x` is `[N, C, H, W]` (or `[N, H, W]`, given one channel), uint8 0..255 (scaled to [0, 1]) or float in
    [0, 1]; `y` is `[N]` integers 0..K-1. Other arrays in the archive are ignored.
    """
    path = Path(path)
    x, y = read_arrays(path)
    images = check_images(x, path)
    return make_splits("npz", images, check_labels(y, len(images), path), seed)
