"""Read dataset pickles without running code: only the globals numpy arrays need are admitted."""
from __future__ import annotations

import gzip
import importlib
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from neuroprint.errors import InputError

# (numpy core submodule, name) pairs an ndarray / numpy scalar pickle may reference, under either
# `numpy.core` (numpy 1.x writers, e.g. the official MNIST and CIFAR-10 files) or `numpy._core` (numpy 2.x).
_NUMPY_CORE_GLOBALS = {("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")}


def _numpy_core_attr(submodule: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(f"numpy._core.{submodule}"), name)
    except (ImportError, AttributeError):
        return getattr(importlib.import_module(f"numpy.core.{submodule}"), name)


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """How Python 3 writes non-empty `bytes` at protocol 2: `_codecs.encode(text, "latin1")`."""
    if encoding != "latin1":
        raise ValueError(f"unexpected _codecs.encode encoding {encoding!r}")
    return text.encode("latin1")


def _empty_bytes() -> bytes:
    """How Python 3 writes `b""` at protocol 2: `bytes()`."""
    return b""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose `find_class` admits numpy arrays, dtypes and scalars (and Python 3 protocol-2 bytes).

    Anything else (e.g. `os.system`) raises `InputError` before it is looked up, so loading never runs code.
    Containers and plain values (dict, list, str, bytes, int) need no globals and load as usual.
    """

    def __init__(self, file: Any, source: Path, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        for prefix in ("numpy.core.", "numpy._core."):
            submodule = module.removeprefix(prefix)
            if submodule != module and (submodule, name) in _NUMPY_CORE_GLOBALS:
                return _numpy_core_attr(submodule, name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if module in ("builtins", "__builtin__") and name == "bytes":
            return _empty_bytes
        raise InputError(f"refusing to unpickle {module}.{name} from {self.source}")


def load_pickle(path: Path, encoding: str) -> Any:
    """Unpickle `path` (gunzipped first when it ends in `.gz`) with `RestrictedUnpickler`.

    `encoding` decodes Python 2 `str` objects: `"latin1"` for numpy arrays, `"bytes"` to keep them as bytes.
    A missing, truncated or corrupt file raises `InputError` naming it.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return RestrictedUnpickler(f, path, encoding).load()
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"expected a pickle file at {path}, but it does not exist") from None
    except (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError,
            AttributeError) as exc:
        raise InputError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc})") from None
