"""NNIF under the paper's white-box attack CW-Opt (Cohen et al. 2020, arXiv 1909.06872, Sec. 6, Table 4), MNIST.

The detector (default: NNIF on the embedding, as the paper attacks the penultimate layer) is fit exactly as in
experiments/detection_mnist.py on the CW validation set (same seeded splits, cached adversarial sets); then
`--n` correctly classified test images are attacked with CW-Opt once per weight in `--betas` of its helpful-point
term (1 = the paper's Eq. 2; 0 = plain CW with the same optimiser), and detection is reported as TPR at 5% FPR (the
threshold flags 5% of the clean test images) and AUC, for the cached plain-CW test attacks of the same images and for
every CW-Opt run that fooled the classifier at least once.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m experiments.nnif_cw_opt --n 200 --lr 0.05 --betas 0.0001 0.00001 0
(about 2 minutes per beta on one CPU core, plus the fit)
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from experiments.common import emit, load_cached_attack, load_cached_model
from neuroprint.adaptive.cw_opt import CWOpt
from neuroprint.data import load_dataset
from neuroprint.detectors import make_detector
from neuroprint.evaluation import metrics
from neuroprint.evaluation.splits import protocol_splits


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.nnif_cw_opt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("runs/bench/detection/cache"))
    parser.add_argument("--detector", default="nnif:embedding_only=true")
    parser.add_argument("--n", type=int, default=200, help="test images attacked with CW-Opt")
    parser.add_argument("--c", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.01, help="Adam step size")
    parser.add_argument("--betas", type=float, nargs="+", default=[1.0, 0.01, 0.001],
                        help="weights of the helpful-point term (1 = the paper's Eq. 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    classifier, model_name = load_cached_model(args.cache)
    data = load_dataset("mnist")
    cw_val = load_cached_attack(args.cache, model_name, "cw", "val")
    cw_test = load_cached_attack(args.cache, model_name, "cw", "test")

    sets = protocol_splits(classifier, data, 2000, 2000, args.seed)  # the splits of detection_mnist.py
    val_fit, test_clean = sets.val_clean, sets.test_clean

    detector = make_detector(args.detector).set_training_data(data.train.x, data.train.y)
    start = time.perf_counter()
    detector.fit(classifier, val_fit.x, val_fit.y, cw_val.x_adv[cw_val.success])
    fit_s = time.perf_counter() - start
    clean_scores = detector.score(test_clean.x).numpy()

    sources = cw_test.source_index[: args.n]
    x, y = data.test.x[sources], data.test.y[sources]
    cw_adv = cw_test.x_adv[: args.n][cw_test.success[: args.n]]
    cw_scores = detector.score(cw_adv).numpy()
    runs = []
    for beta in args.betas:
        start = time.perf_counter()
        result = CWOpt(detector, c=args.c, steps=args.steps, lr=args.lr, beta=beta)(classifier, x, y, batch_size=100)
        run = {"beta": beta, "seconds": time.perf_counter() - start, "success_rate": result.success_rate}
        if bool(result.success.any()):
            scores = detector.score(result.x_adv[result.success]).numpy()
            run |= {"mean_l2": float(result.l2[result.success].mean()),
                    "tpr_at_fpr05": metrics.tpr_at_fpr(clean_scores, scores, 0.05), "auc": metrics.auc(clean_scores, scores)}
        runs.append(run)
    emit({
        "benchmark": "nnif_cw_opt", "detector": args.detector, "m": detector.m_, "fit_seconds": fit_s,
        "n_attacked": len(x), "c": args.c, "steps": args.steps, "lr": args.lr,
        "cw": {"success_rate": float(cw_test.success[: args.n].float().mean()),
               "mean_l2": float(cw_test.l2[: args.n][cw_test.success[: args.n]].mean()),
               "tpr_at_fpr05": metrics.tpr_at_fpr(clean_scores, cw_scores, 0.05),
               "auc": metrics.auc(clean_scores, cw_scores)},
        "cw_opt": runs,
    })


if __name__ == "__main__":
    main()
