"""Shared benchmark helpers: interleaved timing (ratios in one run) and the provenance record."""
from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from neuroprint.io import git_commit, versions


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int = 30, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved so machine noise hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def emit(record: dict[str, Any]) -> None:
    """Print one JSON line with versions, git hash and thread count added."""
    record = {**record, "threads": torch.get_num_threads(), "versions": versions(), "git": git_commit()}
    print(json.dumps(record), flush=True)
