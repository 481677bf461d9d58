"""`folder`: labelled images in class-per-subfolder layout (`root/<class>/<image>`), read with Pillow."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from neuroprint.checks import check_int
from neuroprint.data.base import SPLIT_FRACTIONS, DataSplits, Split, split_indices
from neuroprint.errors import ConfigError, InputError
from neuroprint.io import atomic_path
from neuroprint.registry import DATASETS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def read_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """One image file -> uint8 `[H, W]` (channels 1) or `[H, W, 3]` (channels 3), resized to `image_size`."""
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.array(image, dtype=np.uint8)  # a writable copy, as torch.from_numpy expects
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read the image {path} ({type(exc).__name__}: {exc})") from None


class FolderImages(Dataset[tuple[torch.Tensor, int]]):
    """Image files read lazily, one per item: `(image [channels, image_size, image_size] float32 in [0, 1], label)`.

    Nothing is decoded until an item is asked for, so a `torch.utils.data.DataLoader` with workers streams a folder
    of any size in memory that does not grow with it (`stream_folder`)."""

    def __init__(self, files: list[Path], labels: list[int], image_size: int, channels: int) -> None:
        self.files, self.labels, self.image_size, self.channels = files, labels, image_size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = read_image(self.files[index], self.image_size, self.channels)
        image = torch.from_numpy(pixels).reshape(self.image_size, self.image_size, self.channels)
        return image.permute(2, 0, 1).float().div(255.0), self.labels[index]

    def subset(self, index: torch.Tensor) -> FolderImages:
        """The items at `index` (int64 `[M]`), still unread."""
        return FolderImages([self.files[i] for i in index.tolist()], [self.labels[i] for i in index.tolist()],
                            self.image_size, self.channels)


def folder_images(path: str | Path, image_size: int = 32, channels: int = 3, seed: int = 0) -> dict[str, FolderImages]:
    """The `train`, `val` and `test` parts of the `folder` dataset (same files, labels and split as `folder`),
    as unread `FolderImages`."""
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    if image_size < 1:
        raise ConfigError(f"image_size must be a positive number of pixels, got {image_size}")
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"expected an image folder with one subfolder per class at {root}, but it does not exist")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"{root} has no class subfolders (expected {root}/<class name>/<image>)")
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(classes):
        found = sorted(p for p in class_dir.iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise InputError(f"the class folder {class_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        files += found
        labels += [label] * len(found)
    every = FolderImages(files, labels, image_size, channels)
    parts = split_indices(len(every), SPLIT_FRACTIONS, seed)
    return {name: every.subset(index) for name, index in zip(("train", "val", "test"), parts, strict=True)}


def stream_folder(path: str | Path, part: str = "test", image_size: int = 32, channels: int = 3, seed: int = 0,
                  batch_size: int = 256, workers: int = 2) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    """Batches `(x [B, channels, image_size, image_size], y [B])` of one part (`train`, `val` or `test`) of the
    `folder` dataset, in order, decoded by `workers` processes as they are consumed.

    Example:
        >>> for x, y in stream_folder("imagenet/val", image_size=224, batch_size=64, workers=8):
        ...     flags = guard.score(x)
    """
    parts = folder_images(path, image_size, channels, seed)
    if part not in parts:
        raise ConfigError(f"unknown part {part!r}; valid: {', '.join(parts)}")
    check_int("batch_size", batch_size)
    check_int("workers", workers, minimum=0)
    return DataLoader(parts[part], batch_size=batch_size, shuffle=False, num_workers=workers)


@DATASETS.register("folder")
def folder(path: str | Path, image_size: int = 32, channels: int = 3, seed: int = 0,
           memmap_dir: str | None = None, workers: int = 2) -> DataSplits:
    """Images under `path/<class name>/`, one subfolder per class; labels follow the sorted subfolder names.

    Every file with an image suffix (`IMAGE_SUFFIXES`, any case) directly inside a class folder is read, converted
    to grey (`channels=1`) or RGB (`channels=3`) and stretched to `image_size` x `image_size` pixels (bilinear);
    other files, hidden entries and nested folders are ignored. Returns `[N, channels, image_size, image_size]`
    in [0, 1], split 70/15/15 after a shuffle with `seed`: in memory, or with `memmap_dir` (spec
    `folder:memmap_dir=runs/cache/folders`) decoded once by `workers` processes into a memory map there and read
    lazily, so a folder larger than memory works (`stream_folder` reads one part batch by batch).
    """
    parts = folder_images(path, image_size, channels, seed)
    if memmap_dir is None:
        splits = {name: _in_memory(images) for name, images in parts.items()}
    else:
        splits = memory_mapped(parts, Path(memmap_dir), check_int("workers", workers, minimum=0))
    classes = 1 + max(label for images in parts.values() for label in images.labels)
    return DataSplits("folder", splits["train"], splits["val"], splits["test"], classes)


def memory_mapped(parts: dict[str, FolderImages], directory: Path, workers: int) -> dict[str, Split]:
    """Every part decoded once, a batch at a time, into one float32 `.npy` memory map in `directory` (named by a
    hash of the files, their sizes and times, and the image settings; written atomically), then read back as
    copy-on-write views, one per part: pages load as they are touched and stay reclaimable."""
    every = [f for images in parts.values() for f in images.files]
    first = next(iter(parts.values()))
    blob = json.dumps([first.image_size, first.channels, [(str(f), f.stat().st_size, f.stat().st_mtime_ns)
                                                          for f in every]])
    path = directory / f"folder-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.npy"
    shape = (len(every), first.channels, first.image_size, first.image_size)
    if not path.is_file():  # plain writes, not a writable map: written pages go to the page cache, not to our RSS
        with atomic_path(path) as tmp, tmp.open("wb") as out:
            np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                       "fortran_order": False, "shape": shape})
            for images in parts.values():
                for x, _ in DataLoader(images, batch_size=16, num_workers=workers):
                    out.write(x.contiguous().numpy().data)
    x = torch.from_numpy(np.load(path, mmap_mode="c"))
    splits, row = {}, 0
    for name, images in parts.items():
        splits[name] = Split(x[row : row + len(images)], torch.tensor(images.labels, dtype=torch.long))
        row += len(images)
    return splits


def _in_memory(images: FolderImages) -> Split:
    """Every image of `images` decoded into one `Split` (each part holds at least one image)."""
    return Split(torch.stack([images[i][0] for i in range(len(images))]), torch.tensor(images.labels, dtype=torch.long))
