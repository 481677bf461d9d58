"""Micro-batching: concurrent requests are scored together, so a service keeps near batched-inference throughput.

Requests wait at most `max_wait_ms` for company and a batch holds at most `max_batch` images (a request larger than
that is scored alone). The model runs in `workers` threads, never on the event loop: up to `workers` batches at a
time, the next batch formed only when a worker is free, so requests gather while all are busy. A batch formed while
another worker is idle too holds at most `max_batch / workers` images, so a burst is shared between the idle
workers instead of filling one of them while the other waits (many clients sending one image each arrive in such
bursts: BENCHMARKS.md, guard service).

Everything that touches tensors happens in the model thread: joining the requests' images, scoring, cutting the
verdict into each request's rows and each request's `finish` (e.g. rendering its response). A torch call releases
and re-takes the GIL, so one made on the event loop while model threads run waits for them; with none there the
event loop only moves bytes (BENCHMARKS.md, guard service).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from neuroprint.checks import check_float, check_int
from neuroprint.guard.guard import GuardScores

Scorer = Callable[[torch.Tensor], GuardScores]
BatchObserver = Callable[[int, float], None]
T = TypeVar("T")
Pending = tuple[torch.Tensor, Callable[[GuardScores], Any], "asyncio.Future[Any]"]


class MicroBatcher:
    """Collects `submit`ted image tensors `[n, C, H, W]` into batches for `scorer`; `on_batch(images, seconds)` is
    told of every batch run. Use inside a running event loop: `start()` once, `await submit(x, finish)`,
    `await stop()`."""

    def __init__(self, scorer: Scorer, max_batch: int = 64, max_wait_ms: float = 5.0,
                 on_batch: BatchObserver | None = None, workers: int = 1) -> None:
        self.scorer = scorer
        self.max_batch = check_int("max_batch", max_batch)
        self.max_wait = check_float("max_wait_ms", max_wait_ms, 0.0, 10_000.0, low_open=False) / 1000.0
        self.on_batch = on_batch
        self.workers = check_int("workers", workers)
        self.executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="neuroprint-model")
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
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

    async def submit(self, x: torch.Tensor, finish: Callable[[GuardScores], T]) -> T:
        """Score `x` `[n, C, H, W]` as part of the next batch; returns `finish(this request's rows)`, run in the
        model thread (an exception it raises fails this request only)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put((x, finish, future))
        return await future

    async def _run(self) -> None:
        free = asyncio.Semaphore(self.workers)
        carry: Pending | None = None
        while True:
            await free.acquire()
            first, carry = carry or await self._queue.get(), None
            batch = [first]
            size = len(first[0])
            cap = self.max_batch if free.locked() else -(-self.max_batch // self.workers)
            deadline = time.monotonic() + self.max_wait
            while size < cap:
                try:
                    item = await asyncio.wait_for(self._queue.get(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    break
                if size + len(item[0]) > cap:
                    carry = item  # the first of the next batch
                    break
                batch.append(item)
                size += len(item[0])
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._running.add(task)
            task.add_done_callback(lambda done: (self._running.discard(done), free.release()))

    def _score_and_finish(self, batch: list[Pending]) -> list[tuple[bool, Any]]:
        """In a model thread: score the batch, then `(True, finish(rows))` or `(False, exception)` per request."""
        start = time.perf_counter()
        scores = self.scorer(torch.cat([x for x, _, _ in batch]))
        if self.on_batch is not None:
            self.on_batch(len(scores), time.perf_counter() - start)
        outcomes: list[tuple[bool, Any]] = []
        offset = 0
        for x, finish, _ in batch:
            try:
                outcomes.append((True, finish(scores.slice(offset, offset + len(x)))))
            except Exception as exc:  # noqa: BLE001  (reported by the request it belongs to)
                outcomes.append((False, exc))
            offset += len(x)
        return outcomes

    async def _run_batch(self, batch: list[Pending]) -> None:
        live = [item for item in batch if not item[2].cancelled()]
        if not live:
            return
        try:
            outcomes = await self.run_in_worker(self._score_and_finish, live)
        except Exception as exc:  # noqa: BLE001  (handed to every waiting request, which reports it)
            outcomes = [(False, exc)] * len(live)
        for (_, _, future), (ok, value) in zip(live, outcomes):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
