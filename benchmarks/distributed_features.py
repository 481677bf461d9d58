"""Feature extraction sharded over torchrun ranks against one process: seconds, speed-up and efficiency.

`features.extract` of the default bank's activations (every feature layer of the shipped mnist-net, "stats"
pooling, and the logits) of the first N MNIST test images runs as 1 process with 1 thread, 1 process with
`--cores` threads, and `torchrun --nproc-per-node P` with 1 thread per rank for P in 2..`--cores`. This is what
every rank of `torchrun ... -m neuroprint evaluate` does for each image set in the detector phase. Timed two ways,
the configurations alternating over `--rounds` rounds and the median kept: the extraction itself (from a barrier
to the activations gathered on every rank, as rank 0 measures it) and the whole run (a fresh interpreter, start-up
and data loading included). The configurations' activations are checked to be identical. One JSON line.

Run: .venv/bin/python benchmarks/distributed_features.py [--n 10000 --cores 2 --rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import alternating_runs, emit, launcher, process_thread_configs, speed_ups
from safetensors.torch import load_file, save_file

from neuroprint import distributed
from neuroprint.data import load_dataset
from neuroprint.features import extract
from neuroprint.models.checkpoint import load_checkpoint

CHECKPOINT = Path(__file__).resolve().parents[1] / "src/neuroprint/models/weights/mnist-net-mnist-4f4256786a"


def extract_once(n: int, batch_size: int, out: Path) -> None:
    """One run (every rank): extract, and on rank 0 write the activations to `out` and append the seconds to
    `out`.seconds.jsonl."""
    ranks = distributed.ranks()
    classifier, _ = load_checkpoint(CHECKPOINT)
    x = load_dataset("mnist").test.x[:n]
    ranks.barrier()
    start = time.perf_counter()
    features = extract(classifier, x, pooling="stats", batch_size=batch_size, ranks=ranks)
    seconds = time.perf_counter() - start
    if ranks.main:
        save_file({"logits": features.logits, **features}, str(out))
        with open(f"{out}.seconds.jsonl", "a") as log:
            log.write(json.dumps(seconds) + "\n")
    distributed.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", "--n", dest="n", type=int, default=10000, help="MNIST test images")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (the unit of sharding)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPU cores to use")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)  # set on the runs this script starts
    args = parser.parse_args()
    if args.out is not None:
        extract_once(args.n, args.batch_size, args.out)
        return
    configs = process_thread_configs(args.cores)
    with tempfile.TemporaryDirectory() as tmp:
        outs = {name: Path(tmp) / f"{name.replace(' ', '-')}.safetensors" for name in configs}

        def command(name: str, processes: int) -> list[str]:
            return [*launcher(processes), __file__, "--images", str(args.n), "--batch-size", str(args.batch_size),
                    "--out", str(outs[name])]

        wall = alternating_runs(configs, command, args.rounds)
        extraction = {name: statistics.median(json.loads(line) for line in
                                              Path(f"{out}.seconds.jsonl").read_text().splitlines())
                      for name, out in outs.items()}
        outputs = [load_file(str(out)) for out in outs.values()]
    if not all(a.keys() == outputs[0].keys() and all(torch.equal(a[k], outputs[0][k]) for k in a) for a in outputs):
        raise SystemExit("the configurations extracted different activations")
    emit({"benchmark": "distributed_features", "n": args.n, "batch_size": args.batch_size, "pooling": "stats",
          "neurons": sum(int(v.shape[1]) for v in outputs[0].values()), "cores": args.cores, "rounds": args.rounds,
          "extraction_seconds": extraction, "extraction": speed_ups(extraction, configs),
          "wall_seconds": wall, "wall": speed_ups(wall, configs), "identical_outputs": True})


if __name__ == "__main__":
    main()
