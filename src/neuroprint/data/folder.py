"""`folder`: labelled images in class-per-subfolder layout (`root/<class>/<image>`), read with Pillow."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from neuroprint.data.base import DataSplits, make_splits
from neuroprint.errors import ConfigError, InputError
from neuroprint.registry import DATASETS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def read_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """One image file -> uint8 `[H, W]` (channels 1) or `[H, W, 3]` (channels 3), resized to `image_size`."""
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read the image {path} ({type(exc).__name__}: {exc})") from None


@DATASETS.register("folder")
def folder(path: str | Path, image_size: int = 32, channels: int = 3, seed: int = 0) -> DataSplits:
    """Images under `path/<class name>/`, one subfolder per class; labels follow the sorted subfolder names.

    Every file with an image suffix (`IMAGE_SUFFIXES`, any case) directly inside a class folder is read, converted
    to grey (`channels=1`) or RGB (`channels=3`) and stretched to `image_size` x `image_size` pixels (bilinear);
    other files, hidden entries and nested folders are ignored. Returns `[N, channels, image_size, image_size]`
    in [0, 1], split 70/15/15 after a shuffle with `seed`.
    """
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
    images, labels = [], []
    for label, class_dir in enumerate(classes):
        files = sorted(p for p in class_dir.iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"the class folder {class_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        images += [read_image(file, image_size, channels) for file in files]
        labels += [label] * len(files)
    x = torch.from_numpy(np.stack(images)).reshape(len(images), image_size, image_size, channels)
    x = x.permute(0, 3, 1, 2).float().div(255.0).contiguous()
    return make_splits("folder", x, torch.tensor(labels, dtype=torch.long), seed)
