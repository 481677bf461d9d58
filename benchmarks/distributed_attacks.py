"""Attack generation sharded over torchrun ranks against one process: wall time, speed-up and efficiency.

`neuroprint attack` (PGD on the first N MNIST test images, the shipped mnist-net) runs as 1 process with 1 thread,
1 process with `--cores` threads, and `torchrun --nproc-per-node P` with 1 thread per rank for P in 2..`--cores`;
the configurations alternate over `--rounds` rounds so machine noise hits them alike, and the median wall time of
each is kept (a fresh interpreter each time: start-up and data loading are in it, as a user sees them). Every run's
adversarial images are checked to be identical to the single process's. One JSON line.

Run: .venv/bin/python benchmarks/distributed_attacks.py [--n 2000 --attack pgd --cores 2 --rounds 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import emit
from safetensors.torch import load_file

CHECKPOINT = Path(__file__).resolve().parents[1] / "src/neuroprint/models/weights/mnist-net-mnist-4f4256786a"


def attack_command(processes: int, args: argparse.Namespace, out: Path) -> list[str]:
    """`neuroprint attack` in one process, or under torchrun with `processes` ranks."""
    launcher = [sys.executable, "-m", "neuroprint"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
        "-m", "neuroprint"]
    return [*launcher, "attack", "-c", str(CHECKPOINT), "-d", "mnist", "-a", args.attack, "--n-images", str(args.n),
            "--batch-size", str(args.batch_size), "--out", str(out)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="MNIST test images attacked")
    parser.add_argument("--attack", default="pgd", help="attack spec")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (the unit of sharding)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPU cores to use")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    configs = {"1 process x 1 thread": (1, 1), f"1 process x {args.cores} threads": (1, args.cores),
               **{f"{p} processes x 1 thread": (p, 1) for p in range(2, args.cores + 1)}}
    times: dict[str, list[float]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        reference: torch.Tensor | None = None
        for _ in range(args.rounds):
            for name, (processes, threads) in configs.items():
                out = Path(tmp) / name.replace(" ", "-")
                start = time.perf_counter()
                subprocess.run(attack_command(processes, args, out), check=True, capture_output=True,
                               env={**os.environ, "OMP_NUM_THREADS": str(threads)})
                times[name].append(time.perf_counter() - start)
                x_adv = load_file(f"{out}.safetensors")["x_adv"]
                reference = x_adv if reference is None else reference
                if not torch.equal(x_adv, reference):
                    raise SystemExit(f"{name} produced other adversarial images than the first run")
    seconds = {name: statistics.median(t) for name, t in times.items()}
    single = seconds["1 process x 1 thread"]
    emit({"benchmark": "distributed_attacks", "attack": args.attack, "n": args.n, "batch_size": args.batch_size,
          "cores": args.cores, "rounds": args.rounds, "seconds": seconds,
          "speed_up": {name: single / s for name, s in seconds.items()},
          "efficiency": {name: single / s / (configs[name][0] * configs[name][1]) for name, s in seconds.items()},
          "identical_outputs": True})


if __name__ == "__main__":
    main()
