"""Guard service throughput, latency and memory, against batched inference with no HTTP.

Reference: `Guard.load(dir).score(x)` in this process on batches of 64 real MNIST test images (the service's
micro-batch limit), the same model and detectors with no HTTP. Then the real service (`neuroprint serve`,
default settings) runs as a subprocess on 127.0.0.1 and a load generator in this process (asyncio streams, one
keep-alive connection per client, pre-encoded requests, closed loop; see `drive`) drives it with 1, 8 and 64
concurrent clients, for each request kind (`/v1/predict` JSON; Open Inference `/v2/models/guard/infer` with
the binary tensor extension) and request size (1 and 16 images): images/s, requests/s, latency percentiles and
errors over `--seconds`, split into `--rounds` rounds (each after a warm-up). The raw rate is measured (with the
server idle) before, between and after those rounds and its mean is that configuration's reference, so each
ratio service / raw is taken under the same machine load, which on a shared machine drifts by 10-20% within a
minute; `raw_spread` ((max - min) / mean of those raw runs) shows how much. Per configuration the CPU cores used
by the server and by the load generator, the mean micro-batch and the share of the time the model was busy (from
the service's `/metrics`) are recorded. The server's resident memory (VmRSS) is read at rest after startup and
sampled every 100 ms under load. The run first waits (at most `--wait-minutes`) for a 1-minute load average below
1.0.

Run: .venv/bin/python benchmarks/guard_service.py --guard runs/guard [--seconds 15] [--out FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from prometheus_client.parser import text_string_to_metric_families

from neuroprint.data import load_dataset
from neuroprint.guard import Guard
from neuroprint.guard.service import ServiceSettings
from neuroprint.io import git_commit, versions

RESULTS = Path(__file__).resolve().parent / "results" / "guard"
KINDS = {"json": "/v1/predict", "v2-binary": "/v2/models/guard/infer"}
SETTINGS = ServiceSettings()  # what `neuroprint serve` runs with by default
MAX_BATCH = SETTINGS.max_batch


@dataclass(frozen=True)
class Payload:
    """One ready-to-send request: route, body bytes, headers and how many images it carries."""

    path: str
    body: bytes
    headers: dict[str, str]
    images: int

    @property
    def http(self) -> bytes:
        """The whole HTTP/1.1 request (keep-alive), as the load generator writes it."""
        lines = [f"POST {self.path} HTTP/1.1", "host: 127.0.0.1", f"content-length: {len(self.body)}",
                 *(f"{name}: {value}" for name, value in self.headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass(frozen=True)
class Record:
    """One request as the client saw it: start and end (perf_counter seconds), HTTP status (0 = no answer),
    route and images sent."""

    start: float
    end: float
    status: int
    path: str
    images: int


def make_payload(kind: str, x: torch.Tensor) -> Payload:
    """A request of `kind` ("json": `/v1/predict` nested lists; "v2-binary": FP32 little-endian bytes after a
    JSON header) carrying images `x` `[n, C, H, W]`."""
    if kind == "json":
        body = json.dumps({"inputs": x.tolist()}).encode()
        return Payload(KINDS[kind], body, {"content-type": "application/json"}, len(x))
    raw = x.numpy().astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    headers = {"content-type": "application/octet-stream",
               "inference-header-content-length": str(len(header))}
    return Payload(KINDS[kind], header + raw, headers, len(x))


def payload_pool(kind: str, images: torch.Tensor, size: int, count: int = 64) -> list[Payload]:
    """`count` requests of `size` consecutive distinct images each."""
    return [make_payload(kind, images[(i * size) % (len(images) - size):][:size]) for i in range(count)]


def raw_images_per_second(guard: Guard, images: torch.Tensor, batch: int, seconds: float) -> float:
    """Images/s of `guard.score` on consecutive batches of `batch` images for about `seconds` (after one
    warm-up batch)."""
    guard.score(images[:batch])
    done, i, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        guard.score(images[i: i + batch])
        done += batch
        i = (i + batch) % (len(images) - batch)
    return done / (time.perf_counter() - start)


def wait_for_quiet(threshold: float, max_minutes: float, poll_s: float = 30.0) -> dict[str, Any]:
    """Wait until the 1-minute load average is below `threshold` (at most `max_minutes`); returns what was
    seen."""
    start = time.monotonic()
    while os.getloadavg()[0] >= threshold and time.monotonic() - start < 60 * max_minutes:
        print(f"load {os.getloadavg()[0]:.2f} >= {threshold}; waiting", file=sys.stderr, flush=True)
        time.sleep(poll_s)
    load = os.getloadavg()[0]
    return {"loadavg_1min_at_start": round(load, 2), "waited_s": round(time.monotonic() - start, 1),
            "quiet": load < threshold}


def proc_status_kib(pid: int, field: str) -> int:
    """A `/proc/PID/status` field in KiB (VmRSS: resident now, VmHWM: peak resident)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RSSSampler:
    """Samples a process's VmRSS (KiB) every `interval` seconds in a thread while `active` is set."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval, self.peak_kib = pid, interval, 0
        self.active, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.active.is_set():
                self.peak_kib = max(self.peak_kib, proc_status_kib(self.pid, "VmRSS"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def served(guard_dir: Path, extra: Sequence[str] = ()) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`neuroprint serve` (default settings) on a free port of 127.0.0.1, ready (`/readyz` answered); yields
    its base URL and process, and always stops it. Its log goes to a temporary file (shown if it fails to
    start)."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("neuroprint")), "serve", "--guard", str(guard_dir),
               "--host", "127.0.0.1", "--port", str(port), *extra]
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"the server did not become ready:\n{log.read().decode()[-2000:]}")
                try:
                    if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            yield url, server
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """Send one pre-encoded HTTP/1.1 request on a keep-alive connection and read its whole answer; returns the
    status. (The server answers with a Content-Length, never chunked.)"""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return int(head[9:12])


async def drive(url: str, pools: list[list[Payload]], clients: int, seconds: float,
                rate: float | None = None) -> list[Record]:
    """`clients` concurrent clients, each with one keep-alive connection, send requests for `seconds`; client i
    cycles through `pools[i % len(pools)]`. With `rate` (requests/s over all clients) each client paces itself
    to `rate/clients` (without bursting to catch up), else it sends its next request as soon as the previous
    is answered. The client is a few lines on asyncio streams writing pre-encoded requests: the load generator
    shares the machine's cores with the server, and a full HTTP client (httpx) costs several milliseconds of
    CPU per request, taken from the server."""
    records: list[Record] = []
    end = time.perf_counter() + seconds
    host, port = url.removeprefix("http://").split(":")

    async def one(i: int) -> None:
        pool, k = pools[i % len(pools)], i
        requests = [payload.http for payload in pool]
        interval = clients / rate if rate else 0.0
        next_at = time.perf_counter() + (i / rate if rate else 0.0)
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while (now := time.perf_counter()) < end:
            if now < next_at:
                await asyncio.sleep(next_at - now)
            next_at = max(next_at + interval, time.perf_counter())
            payload, request = pool[k % len(pool)], requests[k % len(pool)]
            k += 1
            start = time.perf_counter()
            try:
                connection = connection or await asyncio.open_connection(host, int(port))
                status = await asyncio.wait_for(exchange(*connection, request), 60)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, StopIteration, ValueError,
                    TimeoutError):
                status, connection = 0, None
            records.append(Record(start, time.perf_counter(), status, payload.path, payload.images))
        if connection is not None:
            connection[1].close()

    await asyncio.gather(*(one(i) for i in range(clients)))
    return records


def check_answer(url: str, payload: Payload) -> None:
    """One request, and a check that its answer holds one label per image sent."""
    body = httpx.post(url + payload.path, content=payload.body, headers=payload.headers, timeout=60).json()
    if "labels" in body:
        labels = body["labels"]
    else:
        labels = next(o["data"] for o in body["outputs"] if o["name"] == "label")
    if len(labels) != payload.images:
        raise RuntimeError(f"{payload.path} answered {len(labels)} labels for {payload.images} images")


def summarize(records: list[Record], windows: list[tuple[float, float]]) -> dict[str, Any]:
    """Throughput and latency of the requests answered within the measured `windows` (perf_counter start, end);
    errors are non-200 answers or failed requests in them."""
    inside = [r for r in records if any(start <= r.start and r.end <= end for start, end in windows)]
    ok = [r for r in inside if r.status == 200]
    seconds = sum(end - start for start, end in windows)
    latency = np.array([r.end - r.start for r in ok]) * 1000
    p50, p95, p99 = (np.percentile(latency, [50, 95, 99]) if len(ok) else [float("nan")] * 3)
    return {"requests": len(inside), "errors": len(inside) - len(ok),
            "images_per_s": sum(r.images for r in ok) / seconds,
            "requests_per_s": len(ok) / seconds, "p50_ms": float(p50), "p95_ms": float(p95),
            "p99_ms": float(p99)}


def batch_metrics(url: str) -> dict[str, float]:
    """The service's micro-batch counters from `/metrics`: batches run, images in them, model seconds."""
    wanted = {"neuroprint_batch_images_count": "batches", "neuroprint_batch_images_sum": "images",
              "neuroprint_batch_seconds_sum": "seconds"}
    out = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name in wanted:
                out[wanted[sample.name]] = sample.value
    return out


def measure(url: str, server_pid: int, pool: list[Payload], clients: int, warmup: float, seconds: float,
            rounds: int = 1, between: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """One configuration: `rounds` times `warmup` + `seconds` of closed-loop load, `between()` run between
    them with the server idle; statistics over the measured seconds of every round. Over the load: the CPU
    cores used by the server and by this (load-generating) process, the mean micro-batch and the share of the
    time the model workers were busy."""
    before = batch_metrics(url)
    records: list[Record] = []
    windows: list[tuple[float, float]] = []
    wall = server_cpu = client_cpu = 0.0
    for round_ in range(rounds):
        if round_:
            between()
        begin, server_start, client_start = time.perf_counter(), proc_cpu_seconds(server_pid), time.process_time()
        windows.append((begin + warmup, begin + warmup + seconds))
        records += asyncio.run(drive(url, [pool], clients, warmup + seconds))
        wall += time.perf_counter() - begin
        server_cpu += proc_cpu_seconds(server_pid) - server_start
        client_cpu += time.process_time() - client_start
    after = batch_metrics(url)
    summary = summarize(records, windows)
    summary["warmup_errors"] = sum(r.status != 200 for r in records
                                   if not any(start <= r.start for start, _ in windows))
    batches = max(after["batches"] - before["batches"], 1)
    summary.update(server_cpu_cores=server_cpu / wall, client_cpu_cores=client_cpu / wall,
                   mean_batch_images=(after["images"] - before["images"]) / batches,
                   model_busy_share=(after["seconds"] - before["seconds"]) / wall)
    return summary


def rounded(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with its float values rounded to 3 decimals (for printing)."""
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in record.items()}


def add_server_arguments(parser: argparse.ArgumentParser, out: Path) -> None:
    """The options every guard-service benchmark takes: the guard, the quiet wait, extra `serve` options, the
    record's path (default `out`)."""
    parser.add_argument("--guard", type=Path, required=True, help="guard directory (neuroprint fit)")
    parser.add_argument("--wait-minutes", type=float, default=25.0,
                        help="wait at most this long for a 1-minute load average below 1.0 (0 = start now)")
    parser.add_argument("--serve-args", default="", help="extra `neuroprint serve` options, e.g. '--workers 1'")
    parser.add_argument("--out", type=Path, default=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per configuration")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds the measured seconds are split into, raw scoring measured between them")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per round")
    parser.add_argument("--raw-seconds", type=float, default=2.0,
                        help="raw scoring seconds before, between and after the rounds of each configuration")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16], help="images per request")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    add_server_arguments(parser, RESULTS / "service.json")
    args = parser.parse_args()

    machine = wait_for_quiet(1.0, args.wait_minutes)
    guard = Guard.load(args.guard)
    images = load_dataset("mnist").test.x
    raw = {f"batch_{b}": raw_images_per_second(guard, images, b, 2 * args.raw_seconds)
           for b in (1, 16, MAX_BATCH)}
    configs = []
    with served(args.guard, args.serve_args.split()) as (url, server):
        time.sleep(1.0)
        rest_kib = proc_status_kib(server.pid, "VmRSS")
        sampler = RSSSampler(server.pid)
        raws: list[float] = []

        def raw_between() -> None:
            sampler.active.clear()
            raws.append(raw_images_per_second(guard, images, MAX_BATCH, args.raw_seconds))
            sampler.active.set()

        try:
            for kind in args.kinds:
                for size in args.sizes:
                    pool = payload_pool(kind, images, size)
                    check_answer(url, pool[0])
                    for clients in args.clients:
                        raws[:] = [raw_images_per_second(guard, images, MAX_BATCH, args.raw_seconds)]
                        sampler.active.set()
                        result = measure(url, server.pid, pool, clients, args.warmup, args.seconds / args.rounds,
                                         args.rounds, raw_between)
                        sampler.active.clear()
                        raws.append(raw_images_per_second(guard, images, MAX_BATCH, args.raw_seconds))
                        reference = float(np.mean(raws))
                        config = {"kind": kind, "images_per_request": size, "clients": clients,
                                  "request_bytes": len(pool[0].body), **result, "raw_images_per_s": reference,
                                  "raw_runs": list(raws), "raw_spread": (max(raws) - min(raws)) / reference,
                                  "ratio_to_raw": result["images_per_s"] / reference}
                        configs.append(config)
                        print(json.dumps(rounded(config)), file=sys.stderr, flush=True)
        finally:
            sampler.close()
        memory = {"rss_at_rest_mib": rest_kib / 1024, "rss_peak_under_load_mib": sampler.peak_kib / 1024,
                  "rss_after_load_mib": proc_status_kib(server.pid, "VmRSS") / 1024,
                  "vmhwm_mib": proc_status_kib(server.pid, "VmHWM") / 1024}
    meeting = [f"{c['kind']} x{c['images_per_request']} c{c['clients']}"
               for c in configs if c["ratio_to_raw"] >= 0.8]
    record = {"benchmark": "guard_service", "guard": str(args.guard), "detectors": list(guard.detectors),
              "model": guard.meta.get("model", {}).get("architecture"),
              "image_shape": list(guard.image_shape),
              "server": {"max_batch": MAX_BATCH, "max_wait_ms": SETTINGS.max_wait_ms, "draws": guard.draws},
              "seconds": args.seconds, "rounds": args.rounds, "warmup_s": args.warmup, "raw_images_per_s": raw,
              "configs": configs, "memory": memory, "meets_80_percent_of_raw": meeting,
              "machine": {**machine, "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
                          "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
              "load_generator": "this process: asyncio streams, one keep-alive connection per client, "
                                "pre-encoded HTTP/1.1 requests, closed loop",
              "versions": versions(), "git": git_commit()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    summary = {"benchmark": "guard_service", "raw_images_per_s_batch64": raw[f"batch_{MAX_BATCH}"],
               "best_ratio": max(c["ratio_to_raw"] for c in configs), "meets_80_percent_of_raw": meeting,
               "errors": sum(c["errors"] for c in configs), "rss_at_rest_mib": memory["rss_at_rest_mib"],
               "rss_peak_under_load_mib": memory["rss_peak_under_load_mib"], "out": str(args.out)}
    print(json.dumps(rounded(summary)), flush=True)


if __name__ == "__main__":
    main()
