"""Guard service soak: steady mixed load for minutes, the server's memory sampled throughout.

`neuroprint serve` runs as a subprocess on 127.0.0.1; `--clients` keep-alive clients (`guard_service.drive`) send,
at a fixed total `--rate` of requests/s, a mix of `/v1/predict` JSON and Open Inference
`/v2/models/guard/infer` binary requests of 1 and 16 real MNIST test images each (the four kinds in turn). The
server's VmRSS is read every `--sample-s` seconds. After `--warmup-s` of the same load, the sample then taken
is the start; growth is the largest sample after it over the start, in %. Targets: no error, growth <= 10%.
The run first waits (at most `--wait-minutes`) for a 1-minute load average below 1.0.

Run: .venv/bin/python benchmarks/guard_soak.py --guard runs/guard --minutes 10 [--clients 8 --rate 25]
     [--serve-args '--workers 2']
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import torch
from guard_service import (
    KINDS,
    RESULTS,
    Payload,
    Record,
    add_server_arguments,
    drive,
    payload_pool,
    proc_status_kib,
    rounded,
    served,
    summarize,
    wait_for_quiet,
)

from neuroprint.data import load_dataset
from neuroprint.guard import Guard
from neuroprint.io import git_commit, versions

SIZES = (1, 16)


def mixed_pool(images: torch.Tensor, count: int = 64) -> list[Payload]:
    """`count` requests of each kind and size, interleaved (JSON x1, JSON x16, v2 x1, v2 x16, JSON x1,
    ...)."""
    pools = [payload_pool(kind, images, size, count) for kind in KINDS for size in SIZES]
    return [pool[i] for i in range(count) for pool in pools]


async def soak(url: str, pid: int, pool: list[Payload], clients: int, rate: float, seconds: float,
               sample_s: float) -> tuple[list[Record], list[tuple[float, int]]]:
    """`seconds` of paced load; returns the requests and the (seconds since start, VmRSS KiB) samples."""
    samples: list[tuple[float, int]] = []
    begin = time.perf_counter()

    async def sample() -> None:
        while (elapsed := time.perf_counter() - begin) <= seconds:
            samples.append((elapsed, proc_status_kib(pid, "VmRSS")))
            await asyncio.sleep(sample_s - (time.perf_counter() - begin) % sample_s)

    records, _ = await asyncio.gather(drive(url, [pool], clients, seconds, rate), sample())
    samples.append((time.perf_counter() - begin, proc_status_kib(pid, "VmRSS")))
    return records, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="measured minutes after the warm-up")
    parser.add_argument("--warmup-s", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate", type=float, default=25.0, help="requests/s over all clients")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between RSS samples")
    add_server_arguments(parser, RESULTS / "soak.json")
    args = parser.parse_args()

    machine = wait_for_quiet(1.0, args.wait_minutes)
    guard = Guard.load(args.guard)
    pool = mixed_pool(load_dataset("mnist").test.x)
    seconds = args.warmup_s + 60 * args.minutes
    with served(args.guard, args.serve_args.split()) as (url, server):
        rest_kib = proc_status_kib(server.pid, "VmRSS")
        records, samples = asyncio.run(soak(url, server.pid, pool, args.clients, args.rate, seconds,
                                            args.sample_s))
        hwm_kib = proc_status_kib(server.pid, "VmHWM")
    begin = min(r.start for r in records)
    start_kib = next(kib for t, kib in samples if t >= args.warmup_s)
    after = [kib for t, kib in samples if t >= args.warmup_s]
    minutes = []
    for m in range(int(args.minutes)):
        window = (begin + args.warmup_s + 60 * m, begin + args.warmup_s + 60 * (m + 1))
        minutes.append({"minute": m + 1, **summarize(records, [window])})
    window = (begin + args.warmup_s, begin + seconds)
    total = summarize(records, [window])
    by_kind = {f"{kind} x{size}": summarize([r for r in records if (r.path, r.images) == (KINDS[kind], size)],
                                            [window])
               for kind in KINDS for size in SIZES}
    result = {"errors": total["errors"] + sum(r.status != 200 for r in records if r.start < window[0]),
              "requests": total["requests"], "requests_per_s": total["requests_per_s"],
              "images_per_s": total["images_per_s"], "p50_ms": total["p50_ms"], "p95_ms": total["p95_ms"],
              "p99_ms": total["p99_ms"], "rss_at_rest_mib": rest_kib / 1024,
              "rss_start_mib": start_kib / 1024,
              "rss_end_mib": after[-1] / 1024, "rss_max_mib": max(after) / 1024,
              "max_growth_percent": 100 * (max(after) - start_kib) / start_kib,
              "end_growth_percent": 100 * (after[-1] - start_kib) / start_kib, "vmhwm_mib": hwm_kib / 1024}
    result["meets_target"] = result["errors"] == 0 and result["max_growth_percent"] <= 10
    record = {"benchmark": "guard_soak", "guard": str(args.guard), "detectors": list(guard.detectors),
              "serve_args": args.serve_args, "minutes": args.minutes, "warmup_s": args.warmup_s, "clients": args.clients, "rate": args.rate,
              "mix": [f"{kind} x{size}" for kind in KINDS for size in SIZES], **result, "by_kind": by_kind,
              "per_minute": minutes,
              "rss_samples": [{"t_s": round(t, 1), "rss_mib": kib / 1024} for t, kib in samples],
              "machine": {**machine, "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
                          "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
              "versions": versions(), "git": git_commit()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(rounded({"benchmark": "guard_soak", **result, "out": str(args.out)})), flush=True)


if __name__ == "__main__":
    main()
