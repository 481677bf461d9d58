"""Activation extraction: one hooked forward pass gives the logits and the pooled outputs of named layers.

Conv maps `[N, C, H, W]` become `[N, C]` by global average pooling (`pooling="avg"`), `[N, 3C]` by the spatial
mean, max and standard deviation of every channel (`pooling="stats"`: max and spread also see a perturbation
confined to a few pixels, which the mean dilutes), or `[N, C*H*W]` (`pooling="flatten"`); vectors stay as they
are. Large sets stream, batch by batch, into memory-mapped arrays.
"""
from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from neuroprint.distributed import SINGLE, Ranks
from neuroprint.errors import ConfigError, InputError
from neuroprint.models.classifier import Classifier

Pooling = Literal["avg", "stats", "flatten"]
POOLINGS = ("avg", "stats", "flatten")
_VAR_FLOOR = 1e-12  # "stats": smallest variance (a constant map has std 1e-6, not 0, and a finite gradient)


def pool(t: torch.Tensor, pooling: Pooling = "avg") -> torch.Tensor:
    """Turn a layer output `[N, ...]` into `[N, D]` (differentiable)."""
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
    if t.ndim == 4 and pooling == "avg":
        return t.mean(dim=(2, 3))
    if t.ndim == 4 and pooling == "stats":  # [mean of every channel, max of every channel, std of every channel]
        mean = t.mean(dim=(2, 3))
        mean_square = torch.linalg.vector_norm(t, dim=(2, 3)) ** 2 / (t.shape[2] * t.shape[3])
        # one pass each (torch.std is ~20x slower on CPU); the floor keeps the gradient of a constant map finite
        std = (mean_square - mean**2).clamp(min=_VAR_FLOOR).sqrt()
        return torch.cat([mean, t.amax(dim=(2, 3)), std], dim=1)
    return t.flatten(1)


def activations(
    classifier: Classifier, x: torch.Tensor, layers: Sequence[str] | None = None, pooling: Pooling = "avg"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Differentiable: logits `[N, K]` and pooled activations `{layer: [N, D_layer]}` of one forward pass."""
    logits, raw = classifier.layer_outputs(x, layers)
    return logits, {name: pool(out, pooling) for name, out in raw.items()}


class Features(dict[str, torch.Tensor]):
    """`{layer: [N, D]}` activations plus `logits` `[N, K]` of the same inputs."""

    def __init__(self, logits: torch.Tensor, layers: dict[str, torch.Tensor]) -> None:
        super().__init__(layers)
        self.logits = logits

    def __len__(self) -> int:  # number of inputs, not of layers
        return int(self.logits.shape[0])

    @property
    def layer_names(self) -> list[str]:
        return list(self.keys())


@torch.no_grad()
def extract(
    classifier: Classifier,
    x: torch.Tensor,
    layers: Sequence[str] | None = None,
    pooling: Pooling = "avg",
    batch_size: int = 256,
    memmap_dir: str | Path | None = None,
    progress: bool = False,
    ranks: Ranks = SINGLE,
) -> Features:
    """Batched, gradient-free extraction of `activations` over a whole set `x` `[N, C, H, W]`.

    With `memmap_dir`, every layer is written batch by batch into a `.npy` memory map there (for sets that do
    not fit in memory) and the returned tensors are views of those maps.

    With `ranks` of a torchrun job, every rank must call this with the same arguments: each extracts its block of
    batches (`Ranks.batches`) and every rank gets the blocks gathered in rank order, which are the activations one
    process computes (same batches, same order). The gathered set is held in memory on every rank.
    """
    if ranks.world > 1:
        return _extract_sharded(classifier, x, layers, pooling, batch_size, progress, ranks, memmap_dir)
    classifier.check_input(x)
    classifier.eval()
    n = len(x)
    stores: dict[str, torch.Tensor] = {}
    logits_out: torch.Tensor | None = None
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="features", disable=not progress, unit="batch", leave=False):
        xb = x[start : start + batch_size].to(classifier.device)
        logits, acts = activations(classifier, xb, layers, pooling)
        if logits_out is None:
            if memmap_dir is None:
                check_fits_in_memory(n, logits.shape[1] + sum(v.shape[1] for v in acts.values()))
            logits_out = _allocate(n, logits.shape[1], "logits", memmap_dir)
            stores = {k: _allocate(n, v.shape[1], k, memmap_dir) for k, v in acts.items()}
        logits_out[start : start + len(xb)] = logits.cpu()
        for k, v in acts.items():
            stores[k][start : start + len(xb)] = v.cpu()
    assert logits_out is not None  # x is non-empty (checked above)
    return Features(logits_out, stores)


def _extract_sharded(classifier: Classifier, x: torch.Tensor, layers: Sequence[str] | None, pooling: Pooling,
                     batch_size: int, progress: bool, ranks: Ranks, memmap_dir: str | Path | None) -> Features:
    """`extract` of this rank's block of `x`, gathered over all ranks. A rank whose block is empty (fewer batches
    than ranks) extracts one image to learn the widths and sends none of it."""
    if memmap_dir is not None:
        raise ConfigError("memmap_dir= extracts in one process; under torchrun every rank gathers the activations "
                          "in memory: run without torchrun, or with fewer images")
    classifier.check_input(x)
    block = ranks.batches(len(x), batch_size)
    rows = x[block.start * batch_size : block.stop * batch_size]
    part = extract(classifier, rows if len(rows) else x[:1], layers, pooling, batch_size, progress=progress)
    check_fits_in_memory(len(x), part.logits.shape[1] + sum(v.shape[1] for v in part.values()))
    keep = len(rows)
    return Features(ranks.gather_rows(part.logits[:keep]), {k: ranks.gather_rows(v[:keep]) for k, v in part.items()})


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux `MemAvailable`), or None where unknown."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def check_fits_in_memory(n: int, width: int) -> None:
    """Raise `InputError` when `n` inputs x `width` float32 activations would not fit in the available memory,
    naming the ways out, rather than let the operating system kill the process half-way."""
    needed, available = 4 * n * width, available_memory()
    if available is not None and needed > available:
        raise InputError(f"the activations of {n} inputs x {width} neurons need {needed / 2**30:.1f} GiB, more than "
                         f"the {available / 2**30:.1f} GiB of memory available; extract with memmap_dir= (memory-"
                         "mapped on disk), use fewer layers or pooling='avg', or fit on fewer images")


def _allocate(n: int, d: int, name: str, memmap_dir: str | Path | None) -> torch.Tensor:
    if memmap_dir is None:
        return torch.empty(n, d)
    Path(memmap_dir).mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=f"{name.replace('/', '_')}-", suffix=".npy", dir=memmap_dir)
    with open(fd, "wb"):
        pass
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    return torch.from_numpy(arr)
