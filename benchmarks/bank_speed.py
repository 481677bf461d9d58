"""Fingerprint-bank cost: scoring vs a plain forward pass, bank construction time, bank memory.

Targets (issue 3): scoring <= 1.10x a forward pass of mnist-net (batch 256, ratio in one run); building banks for
10 classes x 10,000 candidates in under 60 s on 2 cores. Weights and activations are random: cost does not
depend on their values.

Run: .venv/bin/python benchmarks/bank_speed.py
"""
from __future__ import annotations

import argparse
import time

import torch
from common import emit, interleaved_medians

from neuroprint.detectors.bank import BankDetector, authors_default_layers
from neuroprint.models import Classifier, build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=10000)
    parser.add_argument("--per-class", type=int, default=100, help="clean and adversarial examples per class")
    parser.add_argument("--authors-config", action="store_true",
                        help="the authors' fingerprints: d=50 neurons of the flattened, concatenated layers")
    args = parser.parse_args()
    torch.manual_seed(0)
    clf = Classifier(build_model("mnist-net"), mean=[0.1307], std=[0.3081])
    shape = {"pooling": "flatten", "subset": "concat", "d": 50} if args.authors_config else {}
    det = BankDetector(n_candidates=args.candidates, **shape)  # type: ignore[arg-type]
    det.classifier_, det.layers_ = clf, authors_default_layers(clf)
    x = torch.rand(args.batch, 1, 28, 28)
    widths = det._batched_features(x[:2])[2]
    det._check_widths(widths)
    total = sum(widths)

    # construction: synthetic activations where a tenth of the neurons shift under attack
    gen = torch.Generator().manual_seed(0)
    banks, start = [], time.perf_counter()
    for _ in range(clf.num_classes):
        clean = torch.randn(args.per_class, total, generator=gen)
        adv = torch.randn(args.per_class, total, generator=gen) + (torch.rand(total, generator=gen) < 0.1) * 2.0
        banks.append(det._build_bank(clean, adv, widths, gen))
    build_seconds = time.perf_counter() - start
    det._set_banks(banks)
    det.fit_report_ = {}

    with torch.no_grad():
        medians = interleaved_medians({"forward": lambda: clf(x), "score": lambda: det.score(x)}, repeats=args.repeats)
    emit(
        {
            "benchmark": "bank_speed",
            "batch": args.batch,
            "d": det.d,
            "pooling": det.pooling,
            "subset": det.subset,
            "k": det.k,
            "layers": det.layers_,
            "neurons": total,
            "forward_ms": 1e3 * medians["forward"],
            "score_ms": 1e3 * medians["score"],
            "score_over_forward": medians["score"] / medians["forward"],
            "target_ratio": 1.10,
            "build_seconds_10_classes": build_seconds,
            "candidates_per_class": args.candidates,
            "examples_per_class": 2 * args.per_class,
            "target_build_seconds": 60,
            "fingerprints_per_class": det.bank_sizes_.tolist(),
            "bank_bytes": det.memory_bytes,
        }
    )


if __name__ == "__main__":
    main()
