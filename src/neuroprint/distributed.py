"""Data-parallel sharding over `torchrun` (torch.distributed), as OpenOOD's launcher and the AutoAttack/ART
answers to "how do I parallelise attacks" do it: every rank runs the same job, attacks its own contiguous block of
batches, and the blocks are gathered in rank order, so the gathered result is the one a single process computes
(each batch is seeded by its position in the whole set, not by the rank that runs it).

Started under `torchrun --nproc-per-node N -m neuroprint evaluate ...`, `ranks()` joins the process group that
torchrun's environment describes (gloo on CPU, NCCL on CUDA; multi-node through torchrun's rendezvous flags);
started plainly, it is the single rank `SINGLE` and nothing here touches torch.distributed.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from neuroprint.errors import ConfigError


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel job: `rank` in `[0, world)`; rank 0 is the main rank, which logs,
    fits the detectors and writes every output."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """The torch device this rank computes on: a bare ``cuda`` becomes this rank's GPU on its node."""
        return f"cuda:{self.local_rank}" if device == "cuda" and self.world > 1 else device

    def batches(self, n_items: int, batch_size: int) -> range:
        """The batch numbers this rank runs: a contiguous block of the `ceil(n_items / batch_size)` batches, the
        blocks as even as possible and in rank order (so gathering in rank order restores the original order)."""
        n_batches = -(-n_items // batch_size)
        return range(self.rank * n_batches // self.world, (self.rank + 1) * n_batches // self.world)

    def gather_rows(self, part: torch.Tensor) -> torch.Tensor:
        """Every rank's `part` `[n_r, ...]` (CPU; same trailing shape and dtype on every rank) concatenated in rank
        order, on every rank. Parts may differ in length; bool tensors travel as uint8."""
        if self.world == 1:
            return part
        wire = part.to(torch.uint8) if part.dtype == torch.bool else part
        lengths = [torch.zeros(1, dtype=torch.long) for _ in range(self.world)]
        dist.all_gather(lengths, torch.tensor([len(wire)]))
        longest = int(max(lengths))
        padded = torch.zeros((longest, *wire.shape[1:]), dtype=wire.dtype)
        padded[: len(wire)] = wire
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded.contiguous())
        gathered = torch.cat([p[: int(n)] for p, n in zip(parts, lengths, strict=True)])
        return gathered.bool() if part.dtype == torch.bool else gathered

    def gather_text(self, text: str) -> str:
        """Every rank's `text` joined in rank order, on every rank (UTF-8 bytes through `gather_rows`)."""
        if self.world == 1:
            return text
        wire = torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8) if text else torch.empty(0, dtype=torch.uint8)
        return bytes(self.gather_rows(wire).numpy()).decode()

    def agree(self, flag: bool) -> bool:
        """The main rank's `flag`, on every rank (one rank's view of a shared cache must decide for all)."""
        return self.share(float(flag)) == 1.0

    def share(self, value: float) -> float:
        """The main rank's `value`, on every rank (e.g. a threshold set from a random draw)."""
        if self.world == 1:
            return value
        wire = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(wire, src=0)
        return float(wire.item())

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on the main rank first, then on the others (so one rank trains or downloads into a
        shared cache and the others read it)."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


SINGLE = Ranks()


def ranks(device: str = "cpu") -> Ranks:
    """The job this process belongs to: from torchrun's `RANK`, `WORLD_SIZE` and `LOCAL_RANK` (joining the process
    group on first call), or `SINGLE` when they are not set. The gathers here move CPU tensors, so they always go
    through gloo; a CUDA `device` adds NCCL for CUDA tensors and pins this rank to its node's GPU `LOCAL_RANK`."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return SINGLE
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ConfigError(f"device {device!r} needs CUDA, which this machine lacks; use --device cpu")
            torch.cuda.set_device(local_rank)
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank)


def muted(message: str) -> None:
    """The log of every rank but the main one: it drops `message`."""


def close() -> None:
    """Leave the process group, if this process joined one (at the end of a command)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def batch_seed(seed: int, first_index: int) -> int:
    """The seed of the batch whose first image is `first_index` in the whole set: a hash of both (numpy's
    SeedSequence), so batches get independent streams and a batch's stream does not depend on which rank runs it."""
    return int(np.random.SeedSequence([seed, first_index]).generate_state(1, dtype=np.uint64)[0] >> 1)
