"""Cost of the adaptive attacks: milliseconds per image per gradient step, for every attack and detector.

Each detector is fit as `neuroprint robustness` fits it (MNIST, mnist-net, validation clean + PGD, threshold at 5%
FPR). Every attack then runs `--steps` steps on `--n` correctly classified test images against a view whose
threshold no image can pass, so no image stops early and every step is paid for; the record is the wall time over
(images x steps). One JSON line per (detector, attack); the wall time of a real run is this cost times the
image-steps it takes (early stopping makes it smaller).

Run: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/adaptive_cost.py [--n 100 --steps 10 --detector bank ...]
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from common import emit

from neuroprint.adaptive import detector_view, make_adaptive_attack
from neuroprint.adaptive.robustness import RobustnessConfig
from neuroprint.data import load_dataset
from neuroprint.evaluation.protocol import cached_adversarial_set, load_model
from neuroprint.evaluation.splits import correct_clean, protocol_splits

DETECTORS = ["bank:sampling=secure", "mahalanobis", "lid", "kdbu", "distance-space", "binary-activation", "dknn", "nnif"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="attacked test images")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--n-fit", type=int, default=2000)
    parser.add_argument("--detector", nargs="+", default=DETECTORS)
    args = parser.parse_args()

    config = RobustnessConfig(detectors=args.detector, n_fit=args.n_fit, n_attack=args.n)
    data = load_dataset("mnist")
    classifier, model_dir = load_model(config.model, data, config.train, config.cache_dir, "cpu", False, print)
    splits = protocol_splits(classifier, data, args.n_fit, 1000, config.seed)
    sources = correct_clean(classifier, data.test, splits.test_adv_index)
    x, y = sources.x[: args.n], sources.y[: args.n]
    fit_adv, _ = cached_adversarial_set(classifier, Path(model_dir).name, "pgd", data.val, "val",
                                        splits.val_adv_index, config.cache_dir, 256, False)
    for spec in args.detector:
        detector = config.evaluation.detector(spec)
        if detector.needs_training_data:
            detector.set_training_data(data.train.x, data.train.y)
        start = time.perf_counter()
        detector.fit(classifier, splits.val_clean.x, splits.val_clean.y, fit_adv.x_adv[fit_adv.success])
        fit_seconds = time.perf_counter() - start
        view = detector_view(detector, threshold=-math.inf)  # no image ever evades: every step is taken
        for name in config.suite(detector.name):
            attack = make_adaptive_attack(name, steps=args.steps)
            if name == "feature-matching":
                attack.set_guides(splits.val_clean.x, splits.val_clean.y)
            start = time.perf_counter()
            result = attack(classifier, view, x, y)
            seconds = time.perf_counter() - start
            emit({"benchmark": "adaptive_cost", "detector": spec, "attack": name, "n": len(x), "steps": args.steps,
                  "ms_per_image_step": 1000 * seconds / max(result.image_steps, 1), "seconds": seconds,
                  "detector_fit_seconds": fit_seconds, "gradient": view.gradient})


if __name__ == "__main__":
    main()
