"""Time each attack on N correctly classified MNIST test images (mnist-net); one JSON line per attack.

Each line holds the attack name, resolved params, n, seconds, images/s, success rate and mean L2 / L-inf over
successful examples, plus threads, device, versions and git hash. The model is `--checkpoint DIR` if given, else
the cached (or freshly trained, ~2 min on 2 cores) default mnist-net from `runs/cache/models`.

Run: .venv/bin/python benchmarks/attack_speed.py [--n 1000 --attacks all --checkpoint DIR --threads 2]
"""
from __future__ import annotations

import argparse
import time

import torch
from common import emit

from neuroprint.attacks import ATTACKS, make_attack
from neuroprint.data import load_dataset
from neuroprint.models.checkpoint import load_checkpoint, load_or_train
from neuroprint.models.training import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="correctly classified test images per attack")
    parser.add_argument("--attacks", default="all", help="'all' or specs separated by ';', e.g. 'fgsm;pgd:steps=20'")
    parser.add_argument("--checkpoint", default=None, help="model directory (default: cached default mnist-net)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = load_dataset("mnist")
    if args.checkpoint:
        clf, meta = load_checkpoint(args.checkpoint)
        model = str(args.checkpoint)
    else:
        clf, meta, directory = load_or_train("mnist-net", data, TrainConfig())
        model = str(directory)
    clf = clf.to(args.device)
    correct = torch.nonzero(clf.predict(data.test.x) == data.test.y).squeeze(1)[: args.n]
    x, y = data.test.x[correct], data.test.y[correct]
    specs = ATTACKS.available() if args.attacks == "all" else [s for s in args.attacks.split(";") if s.strip()]
    for spec in specs:
        attack = make_attack(spec)
        start = time.perf_counter()
        result = attack(clf, x, y, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        ok = result.success
        emit(
            {
                "benchmark": "attack_speed",
                "attack": attack.name,
                "params": attack.params,
                "n": len(x),
                "seconds": round(seconds, 3),
                "images_per_s": round(len(x) / seconds, 2),
                "success_rate": result.success_rate,
                "mean_l2": float(result.l2[ok].mean()) if bool(ok.any()) else None,
                "mean_linf": float(result.linf[ok].mean()) if bool(ok.any()) else None,
                "dataset": "mnist",
                "model": model,
                "clean_accuracy": meta.get("clean_accuracy"),
                "device": str(clf.device),
            }
        )


if __name__ == "__main__":
    main()
