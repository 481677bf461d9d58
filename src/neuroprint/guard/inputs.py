"""Turning what users send into image tensors a guard can score: JSON nested lists, encoded image files (PNG,
JPEG, ...), `.npz` archives and folders of images. Every problem is one `InputError` line naming it.

All functions return float32 pixels in [0, 1], shaped `[N, C, H, W]` for the guard's `(C, H, W)`. Image files are
converted to grey (C = 1) or RGB (C = 3) and resized (bilinear) to `H x W` when their size differs.
"""
from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from neuroprint.data.folder import IMAGE_SUFFIXES
from neuroprint.data.npz import check_images
from neuroprint.distributed import SINGLE, Ranks
from neuroprint.errors import InputError

#: Largest width or height of an image file accepted (pixels), so a small upload cannot expand to gigabytes.
MAX_IMAGE_SIDE = 4096


def images_from_lists(value: Any, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """Nested lists of N images `[C, H, W]` (or `[H, W]` for one channel), numbers in [0, 1] -> `[N, C, H, W]`."""
    c, h, w = image_shape
    expected = f"[N, {c}, {h}, {w}]" + (f" or [N, {h}, {w}]" if c == 1 else "")
    if not isinstance(value, list) or not value:
        raise InputError(f"inputs must be a non-empty list of images {expected}, got {type(value).__name__}")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InputError(f"inputs must be numbers nested as {expected} (ragged or non-numeric lists)") from None
    if array.dtype.kind not in "iuf":  # strings, booleans, nulls, ragged lists and huge integers
        raise InputError(f"inputs must be numbers nested as {expected} (ragged or non-numeric lists)")
    with np.errstate(over="ignore"):  # finite float64 beyond float32 becomes inf, refused below
        array = array.astype(np.float32)
    if array.ndim == 3 and c == 1:
        array = array[:, None]
    return _checked(array, image_shape, expected)


def images_from_array(array: np.ndarray, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """A float array of pixels in [0, 1] (any shape holding `[N, C, H, W]` row-major) -> checked `[N, C, H, W]`."""
    c, h, w = image_shape
    size = c * h * w
    if array.size == 0 or array.size % size:
        raise InputError(f"expected a multiple of {size} pixels ({c}x{h}x{w} per image), got {array.size}")
    return _checked(np.asarray(array, dtype=np.float32).reshape(-1, c, h, w), image_shape, f"[N, {c}, {h}, {w}]")


def _checked(array: np.ndarray, image_shape: tuple[int, int, int], expected: str) -> torch.Tensor:
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(image_shape):
        raise InputError(f"inputs must have shape {expected}, got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise InputError("inputs contain NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise InputError(f"pixels must lie in [0, 1], found [{low:.4g}, {high:.4g}]")
    return torch.from_numpy(np.ascontiguousarray(array))


def image_from_bytes(data: bytes, image_shape: tuple[int, int, int], name: str = "upload") -> torch.Tensor:
    """One encoded image file (PNG, JPEG, BMP, GIF, TIFF, WebP) -> `[1, C, H, W]`, converted and resized."""
    c, h, w = image_shape
    try:
        with Image.open(io.BytesIO(data)) as image:
            if max(image.size) > MAX_IMAGE_SIDE:
                raise InputError(f"{name} is {image.size[0]}x{image.size[1]} pixels; the limit is {MAX_IMAGE_SIDE} a side")
            image = image.convert("L" if c == 1 else "RGB")
            if image.size != (w, h):
                image = image.resize((w, h), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"{name} is not a readable image (PNG, JPEG, BMP, GIF, TIFF or WebP): {type(exc).__name__}") from None
    array = array[None, None] if c == 1 else array.transpose(2, 0, 1)[None]
    return torch.from_numpy(np.ascontiguousarray(array))


def image_to_png(x: torch.Tensor) -> bytes:
    """One image `[C, H, W]` in [0, 1] -> PNG bytes (grey for C = 1, RGB for C = 3)."""
    array = (x.detach().clamp(0, 1).mul(255).round().byte().cpu().numpy())
    image = Image.fromarray(array[0] if len(array) == 1 else array.transpose(1, 2, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def input_files(path: Path) -> list[Path]:
    """The image files to score at `path`: the file itself, or every image file under a folder (sorted, recursive,
    hidden entries skipped)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"expected an image file, a folder of images or an .npz archive at {path}; it does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise InputError(f"the folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def npz_images(path: Path, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """Images of an .npz archive: its array `x` (or its only array), uint8 0..255 or float in [0, 1]."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = archive.files
            key = "x" if "x" in names else (names[0] if len(names) == 1 else None)
            if key is None:
                raise InputError(f"{path} holds {', '.join(names) or 'nothing'}; expected an array named x")
            x = archive[key]
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, AttributeError) as exc:
        raise InputError(f"{path} is not a readable .npz archive ({type(exc).__name__})") from None
    images = check_images(x, path)
    if tuple(images.shape[1:]) != tuple(image_shape):
        raise InputError(f"{path}: images have shape {list(images.shape[1:])}, the model takes {list(image_shape)}")
    return images


def input_batches(path: Path, image_shape: tuple[int, int, int], batch_size: int,
                  ranks: Ranks = SINGLE) -> tuple[int, Iterator[tuple[list[str], torch.Tensor]]]:
    """The number of images this rank reads at `path` and their batches of (names, images `[B, C, H, W]`) from an
    .npz archive (names `file#i`), an image file or a folder (names relative to it); files are read lazily, a batch
    at a time. With `ranks` of a torchrun job, only this rank's block of batches is read."""
    if path.suffix.lower() == ".npz" and path.is_file():
        images = npz_images(path, image_shape)
        first, last = _block(len(images), batch_size, ranks)
        return last - first, (([f"{path.name}#{i}" for i in range(start, min(start + batch_size, last))],
                               images[start : min(start + batch_size, last)]) for start in range(first, last, batch_size))
    files = input_files(path)
    first, last = _block(len(files), batch_size, ranks)
    mine = files[first:last]

    def batches() -> Iterator[tuple[list[str], torch.Tensor]]:
        for start in range(0, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            names = [str(f.relative_to(path)) if path.is_dir() else f.name for f in chunk]
            yield names, torch.cat([image_from_bytes(_read(f), image_shape, str(f)) for f in chunk])

    return len(mine), batches()


def _block(n: int, batch_size: int, ranks: Ranks) -> tuple[int, int]:
    """The first and one-past-last item of this rank's block of batches over `n` items."""
    block = ranks.batches(n, batch_size)
    return block.start * batch_size, min(block.stop * batch_size, n)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror})") from None
