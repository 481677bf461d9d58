"""Shared benchmark helpers: interleaved timing (ratios in one run), peak memory and the provenance record."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import torch

from neuroprint.attacks.adversarial_set import AdversarialSet
from neuroprint.io import git_commit, versions
from neuroprint.models.checkpoint import load_checkpoint
from neuroprint.models.classifier import Classifier


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


def launcher(processes: int) -> list[str]:
    """The start of a command line that runs a Python script (or, followed by `-m`, a module) in one process, or
    under torchrun with `processes` ranks on this machine."""
    if processes == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]


def process_thread_configs(cores: int) -> dict[str, tuple[int, int]]:
    """(processes, threads per process) to compare on `cores` cores: 1 x 1, 1 x `cores`, and P x 1 for P >= 2."""
    return {"1 process x 1 thread": (1, 1), f"1 process x {cores} threads": (1, cores),
            **{f"{p} processes x 1 thread": (p, 1) for p in range(2, cores + 1)}}


def alternating_runs(configs: dict[str, tuple[int, int]], command: Callable[[str, int], list[str]],
                     rounds: int) -> dict[str, float]:
    """Median wall seconds of each configuration's command (a fresh interpreter each time, `OMP_NUM_THREADS` set
    to its threads), the configurations alternating over `rounds` rounds so machine noise hits them alike.
    `command(name, processes)` gives the command line of one run."""
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(rounds):
        for name, (processes, threads) in configs.items():
            start = time.perf_counter()
            subprocess.run(command(name, processes), check=True, capture_output=True,
                           env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def speed_ups(seconds: dict[str, float], configs: dict[str, tuple[int, int]]) -> dict[str, dict[str, float]]:
    """Speed-up over "1 process x 1 thread" and efficiency (speed-up per core used) of every configuration."""
    single = seconds["1 process x 1 thread"]
    return {"speed_up": {name: single / s for name, s in seconds.items()},
            "efficiency": {name: single / s / (configs[name][0] * configs[name][1]) for name, s in seconds.items()}}


def emit(record: dict[str, Any]) -> dict[str, Any]:
    """Print one JSON line with versions, git hash and thread count added; returns that record."""
    record = {**record, "threads": torch.get_num_threads(), "versions": versions(), "git": git_commit()}
    print(json.dumps(record), flush=True)
    return record


class PeakRSS:
    """Context manager: the peak resident set size (MiB) above the level at entry, sampled every 20 ms."""

    def __enter__(self) -> Self:
        self.base = self.peak = _rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())

    @property
    def above_base(self) -> float:
        return self.peak - self.base


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load_cached_attack(cache: Path, model_name: str, attack: str, split: str) -> AdversarialSet:
    """The one adversarial set of `attack` on `split` that experiments/detection_mnist.py cached in `cache`."""
    (path,) = sorted((cache / "adv" / model_name).glob(f"{attack}-{split}-*.json"))
    return AdversarialSet.load(path.with_suffix(""))


def load_cached_model(cache: Path) -> tuple[Classifier, str]:
    """The one model whose adversarial sets are cached under `cache` (checkpoint in `cache/models`), and its name."""
    (adv_dir,) = sorted((cache / "adv").iterdir())
    classifier, _ = load_checkpoint(cache / "models" / adv_dir.name)
    return classifier, adv_dir.name
