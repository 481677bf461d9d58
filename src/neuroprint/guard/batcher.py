"""Micro-batching: concurrent requests are scored together, so a service keeps near batched-inference throughput.

Requests wait at most `max_wait_ms` for company and a batch holds at most `max_batch` images (a request larger than
that is scored alone). The model runs in `workers` threads, never on the event loop: up to `workers` batches at a
time, the next batch formed only when a worker is free, so requests gather while all are busy.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from neuroprint.checks import check_float, check_int
from neuroprint.guard.guard import GuardScores

Scorer = Callable[[torch.Tensor], GuardScores]
BatchObserver = Callable[[int, float], None]


class MicroBatcher:
    """Collects `submit`ted image tensors `[n, C, H, W]` into batches for `scorer`; `on_batch(images, seconds)` is
    told of every batch run. Use inside a running event loop: `start()` once, `await submit(x)`, `await stop()`."""

    def __init__(self, scorer: Scorer, max_batch: int = 64, max_wait_ms: float = 5.0,
                 on_batch: BatchObserver | None = None, workers: int = 1) -> None:
        self.scorer = scorer
        self.max_batch = check_int("max_batch", max_batch)
        self.max_wait = check_float("max_wait_ms", max_wait_ms, 0.0, 10_000.0, low_open=False) / 1000.0
        self.on_batch = on_batch
        self.workers = check_int("workers", workers)
        self.executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="neuroprint-model")
        self._queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future[GuardScores]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def run_in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` in a model worker thread, e.g. an attack for the web page."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def submit(self, x: torch.Tensor) -> GuardScores:
        """Score `x` `[n, C, H, W]` as part of the next batch; returns this request's rows."""
        future: asyncio.Future[GuardScores] = asyncio.get_running_loop().create_future()
        await self._queue.put((x, future))
        return await future

    async def _run(self) -> None:
        free = asyncio.Semaphore(self.workers)
        carry: tuple[torch.Tensor, asyncio.Future[GuardScores]] | None = None
        while True:
            await free.acquire()
            first, carry = carry or await self._queue.get(), None
            batch = [first]
            size = len(first[0])
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch:
                try:
                    item = await asyncio.wait_for(self._queue.get(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    break
                if size + len(item[0]) > self.max_batch:
                    carry = item  # the first of the next batch
                    break
                batch.append(item)
                size += len(item[0])
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._running.add(task)
            task.add_done_callback(lambda done: (self._running.discard(done), free.release()))

    async def _run_batch(self, batch: list[tuple[torch.Tensor, asyncio.Future[GuardScores]]]) -> None:
        live = [(x, f) for x, f in batch if not f.cancelled()]
        if not live:
            return
        start = time.perf_counter()
        try:
            scores = await self.run_in_worker(self.scorer, torch.cat([x for x, _ in live]))
        except Exception as exc:  # noqa: BLE001  (handed to every waiting request, which reports it)
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(len(scores), time.perf_counter() - start)
        offset = 0
        for x, future in live:
            if not future.done():
                future.set_result(scores.slice(offset, offset + len(x)))
            offset += len(x)
