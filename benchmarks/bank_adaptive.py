"""Does per-input randomisation protect the fingerprint bank against an attacker who holds a copy of it?

A bank is fit on PGD (validation split). Two defenders use that same bank: `fixed` checks every input against the
same k fingerprints, `random` draws k fingerprints per input from the OS CSPRNG. The white-box attacker runs
detector-aware PGD (`neuroprint.attacks.adaptive.DetectorAwarePGD`) through its copy of the detector: against
`fixed` it knows exactly which fingerprints are checked; against `random` it can only aim at the whole bank.
Thresholds: 5% FPR on held-out clean validation images. Reported per (attack, defender): attack success
(misclassified), detection rate among successful examples, evasion (misclassified and not flagged).

Run: .venv/bin/python benchmarks/bank_adaptive.py [--n-test 600 --steps 100 --c 1 0.01 0.0001 --bank SPEC]
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from common import emit

from neuroprint.attacks import make_attack
from neuroprint.attacks.adaptive import DetectorAwarePGD
from neuroprint.data import load_dataset
from neuroprint.detectors import make_detector
from neuroprint.evaluation import metrics
from neuroprint.evaluation.protocol import cached_adversarial_set, correct_clean, draw_sources
from neuroprint.models.checkpoint import load_or_train
from neuroprint.models.training import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-fit", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=600, help="test sources (half clean, half attacked)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--c", type=float, nargs="+", default=[1.0, 1e-2, 1e-4, 1e-6],
                        help="weights of the detector score in the attack loss (one attack each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"))
    parser.add_argument("--bank", default="bank", help="the bank's spec (default: the default bank)")
    args = parser.parse_args()

    data = load_dataset("mnist")
    clf, _, model_dir = load_or_train("mnist-net", data, TrainConfig(), args.cache / "models", progress=False)
    clean_idx, adv_idx = draw_sources(len(data.val), args.n_fit, args.seed)
    clean = correct_clean(clf, data.val, clean_idx)
    holdout = torch.rand(len(clean), generator=torch.Generator().manual_seed(args.seed + 2)) < 0.25
    calib, fit = clean.subset(holdout), clean.subset(~holdout)
    pgd_val, _ = cached_adversarial_set(clf, model_dir.name, "pgd", data.val, "val", adv_idx, args.cache, 256, False)
    start = time.perf_counter()
    bank = make_detector(args.bank, random_state=args.seed).fit(clf, fit.x, fit.y, pgd_val.x_adv[pgd_val.success])
    emit({"benchmark": "bank_adaptive", "bank": args.bank, "params": bank.get_params(), "layers": bank.layers_,
          "fit_seconds": time.perf_counter() - start, "n_fit_clean": len(fit.x),
          "n_fit_adv": int(pgd_val.success.sum()), "fingerprints_per_class": bank.bank_sizes_.tolist(),
          "bank_bytes": bank.memory_bytes})

    defenders = {}
    for sampling in ("fixed", "secure"):
        defender = copy.copy(bank)
        defender.sampling = sampling
        defenders[sampling] = defender.calibrate(calib.x)
    attacker_views = {"fixed": defenders["fixed"], "whole bank": copy.copy(bank)}
    attacker_views["whole bank"].sampling = "all"

    test_clean_idx, test_adv_idx = draw_sources(len(data.test), args.n_test, args.seed + 1)
    test_clean = correct_clean(clf, data.test, test_clean_idx)
    sources = correct_clean(clf, data.test, test_adv_idx)
    attacks = {("pgd (not adaptive)", 0.0): make_attack("pgd")}
    for c in args.c:
        for view, detector in attacker_views.items():
            attacks[f"adaptive, gradient through {view}", c] = DetectorAwarePGD(detector, steps=args.steps, c=c)

    for (attack_name, c), attack in attacks.items():
        result = attack(clf, sources.x, sources.y, batch_size=128)
        x_ok = result.x_adv[result.success]
        for sampling, defender in defenders.items():
            with torch.no_grad():
                clean_scores = defender.score(test_clean.x)
                adv_scores = defender.score(x_ok) if len(x_ok) else torch.empty(0)
            flagged = adv_scores > defender.threshold_
            emit({  # detection figures are None when the attack fooled the model on no image
                "benchmark": "bank_adaptive", "bank": args.bank, "attack": attack_name, "defender": sampling, "c": c,
                "steps": args.steps, "n_attacked": len(sources), "success_rate": result.success_rate,
                "detected_among_successful": float(flagged.float().mean()) if len(x_ok) else None,
                "evasion_rate": float((~flagged).sum()) / len(sources),
                "auc": metrics.auc(clean_scores.numpy(), adv_scores.numpy()) if len(x_ok) else None,
                "clean_flagged": float((clean_scores > defender.threshold_).float().mean()),
                "mean_linf": float(result.linf[result.success].mean()) if len(x_ok) else None,
            })


if __name__ == "__main__":
    main()
