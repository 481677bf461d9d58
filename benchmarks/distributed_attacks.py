"""Attack generation sharded over torchrun ranks against one process: wall time, speed-up and efficiency.

`neuroprint attack` (PGD on the first N MNIST test images, the shipped mnist-net) runs as 1 process with 1 thread,
1 process with `--cores` threads, and `torchrun --nproc-per-node P` with 1 thread per rank for P in 2..`--cores`;
the configurations alternate over `--rounds` rounds so machine noise hits them alike, and the median wall time of
each is kept (a fresh interpreter each time: start-up and data loading are in it, as a user sees them). The
configurations' adversarial images are checked to be identical. One JSON line.

Run: .venv/bin/python benchmarks/distributed_attacks.py [--n 2000 --attack pgd --cores 2 --rounds 3]
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from common import alternating_runs, emit, launcher, process_thread_configs, speed_ups
from safetensors.torch import load_file

CHECKPOINT = Path(__file__).resolve().parents[1] / "src/neuroprint/models/weights/mnist-net-mnist-4f4256786a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="MNIST test images attacked")
    parser.add_argument("--attack", default="pgd", help="attack spec")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (the unit of sharding)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPU cores to use")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    configs = process_thread_configs(args.cores)
    with tempfile.TemporaryDirectory() as tmp:
        outs = {name: Path(tmp) / name.replace(" ", "-") for name in configs}

        def command(name: str, processes: int) -> list[str]:
            return [*launcher(processes), "-m", "neuroprint", "attack", "-c", str(CHECKPOINT), "-d", "mnist", "-a",
                    args.attack, "--n-images", str(args.n), "--batch-size", str(args.batch_size), "--out",
                    str(outs[name])]

        seconds = alternating_runs(configs, command, args.rounds)
        outputs = [load_file(f"{out}.safetensors")["x_adv"] for out in outs.values()]
    if not all(torch.equal(x_adv, outputs[0]) for x_adv in outputs):
        raise SystemExit("the configurations produced different adversarial images")
    emit({"benchmark": "distributed_attacks", "attack": args.attack, "n": args.n, "batch_size": args.batch_size,
          "cores": args.cores, "rounds": args.rounds, "seconds": seconds, **speed_ups(seconds, configs),
          "identical_outputs": True})


if __name__ == "__main__":
    main()
