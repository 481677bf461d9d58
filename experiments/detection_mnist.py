"""Detection quality on MNIST: every detector on all nine attacks, unseen-attack generalisation, bank sensitivity.

Phases (each writes `<out>/<phase>.json` and `<out>/<phase>.md` as soon as it finishes; the adversarial sets are
cached under `<out>/cache`, so later phases and re-runs only fit detectors):
  main      every detector fit and tested per attack (the Table-1 layout)
  fit-pgd   fit on PGD only, tested on every attack; fit-fgsm likewise with FGSM
  bank-grid fingerprint-bank variants around the default (d, k, bank size, layers, whitening, score, neuron
            reuse, randomisation, the output term's cap; the previous defaults and the authors' setting last), fit
            on PGD, tested on all

Run: .venv/bin/python -m experiments.detection_mnist --n 2000 --device cpu   (about an hour on 2 CPU cores;
minutes on a GPU with --device cuda)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from neuroprint.evaluation.protocol import EvalConfig, run_evaluation
from neuroprint.evaluation.report import markdown_table, write_outputs

ATTACKS = ["fgsm", "bim-a", "bim-b", "pgd", "mifgsm", "cw", "deepfool", "jsma", "ead"]
DETECTORS = ["lid", "lid:n_batches=5", "mahalanobis", "bank"]
BANK_GRID = [  # the default, then one change at a time (its parameters: bank.py)
    "bank",
    "bank:d=1",
    "bank:d=2",
    "bank:d=5",
    "bank:d=10",
    "bank:k=30",
    "bank:k=300",
    "bank:bank_size=500",
    "bank:bank_size=5000",
    "bank:layers=authors",
    "bank:layers=conv1+conv2+conv3+conv4",
    "bank:layers=fc1+fc2+logits",
    "bank:pooling=avg",
    "bank:pooling=flatten",
    "bank:whiten=false",
    "bank:score_kind=lr",
    "bank:score_kind=vote",
    "bank:score_kind=anomaly",
    "bank:back_weight=0",
    "bank:back_weight=1",
    "bank:z_cap=none",
    "bank:max_uses=100",
    "bank:max_uses=none",
    "bank:sampling=all",
    "bank:sampling=fixed",
    "bank:output_cap=3",
    "bank:output_cap=10",
    "bank:output_cap=none",
    "bank:pooling=avg,max_uses=100,z_cap=none,output_cap=none",
    "bank:layers=authors,pooling=avg,whiten=false,score_kind=lr,k=30,max_uses=none,output_cap=none",
    "bank:layers=authors,pooling=flatten,subset=concat,d=50,whiten=false,score_kind=lr,k=30,max_uses=none,output_cap=none",
]
PHASES = ("main", "fit-pgd", "fit-fgsm", "bank-grid")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.detection_mnist", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="source images per split (half clean, half attacked)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/detection"))
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    parser.add_argument("--attacks", nargs="+", default=ATTACKS)
    parser.add_argument("--detectors", nargs="+", default=DETECTORS)
    parser.add_argument("--dataset", default="mnist", help="for quick dry runs: digits with --model small-cnn")
    parser.add_argument("--model", default="mnist-net")
    parser.add_argument("--grid", nargs="+", default=BANK_GRID, help="bank variants of the bank-grid phase")
    args = parser.parse_args()

    for phase in args.phases:
        detectors, fit = args.detectors, None
        if phase == "fit-pgd":
            fit = ["pgd"]
        elif phase == "fit-fgsm":
            fit = ["fgsm"]
        elif phase == "bank-grid":
            detectors, fit = args.grid, ["pgd"]
        config = EvalConfig(
            dataset=args.dataset, model=args.model, attacks=args.attacks, detectors=detectors, fit_attacks=fit,
            n_fit=args.n, n_test=args.n, seed=args.seed, cache_dir=args.out / "cache", device=args.device,
        )
        start = time.perf_counter()
        report = run_evaluation(config, progress=False, log=lambda msg: print(msg, flush=True))
        write_outputs(report, args.out / phase, args.out / f"{phase}.json")
        table = markdown_table(report)
        (args.out / f"{phase}.md").write_text(table + "\n")
        print(table, flush=True)
        print(json.dumps({"phase": phase, "seconds": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    main()
