"""Fingerprint-bank cost: scoring vs a plain forward pass, bank construction time, bank memory.

Targets: scoring <= 1.10x a forward pass of mnist-net (batch 256, ratio in one run); building banks for
10 classes x 10,000 candidates in under 60 s on 2 cores. Weights and activations are random: cost does not
depend on their values. The default `bank` (every layer, "stats" pooling, whitened, shift score, k = 100) is timed
with its whitening matrices and output term (their fit is part of the build time); `--authors-config` times the
authors' setting
(`bank:layers=authors,pooling=flatten,subset=concat,d=50,whiten=false,score_kind=lr,k=30,max_uses=none,output_cap=none`).

Run: .venv/bin/python benchmarks/bank_speed.py [--authors-config]
"""
from __future__ import annotations

import argparse
import time

import torch
from common import emit, interleaved_medians

from neuroprint.detectors.bank import BankDetector
from neuroprint.detectors.fingerprint_selection import check_subset_width
from neuroprint.features import extract
from neuroprint.models import Classifier, build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=10000)
    parser.add_argument("--per-class", type=int, default=100, help="clean and adversarial examples per class")
    parser.add_argument("--authors-config", action="store_true",
                        help="the authors' setting: d=50 neurons of the flattened, concatenated layers, lr, k=30")
    args = parser.parse_args()
    torch.manual_seed(0)
    clf = Classifier(build_model("mnist-net"), mean=[0.1307], std=[0.3081])
    authors = {"layers": ["authors"], "pooling": "flatten", "subset": "concat", "d": 50, "whiten": False,
               "score_kind": "lr", "k": 30, "max_uses": None, "output_cap": None}
    det = BankDetector(n_candidates=args.candidates, **(authors if args.authors_config else {}))  # type: ignore[arg-type]
    det.classifier_, det.layers_ = clf, det.feature_layers(clf)
    x = torch.rand(args.batch, 1, 28, 28)
    probe = extract(clf, x[:2], det.layers_, det.pooling)
    widths = [int(probe[n].shape[1]) for n in det.layers_]
    check_subset_width(det.d, det.subset, widths)
    total = sum(widths)

    # construction: synthetic activations where a tenth of the neurons shift under attack
    gen = torch.Generator().manual_seed(0)
    n_classes = clf.num_classes
    clean = torch.randn(n_classes * args.per_class, total, generator=gen)
    labels = torch.arange(n_classes).repeat_interleave(args.per_class)
    adv = torch.randn(n_classes * args.per_class, total, generator=gen) + (torch.rand(total, generator=gen) < 0.1) * 2.0
    logits = torch.randn(len(labels), n_classes, generator=gen) + 5.0 * torch.nn.functional.one_hot(labels)
    start = time.perf_counter()
    det.fit_banks(clean, labels, adv, labels, widths, n_classes)
    if det.output_cap is not None:
        det.fit_output_term(logits, clean, labels)
    build_seconds = time.perf_counter() - start

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
            "whiten": det.whiten,
            "score_kind": det.score_kind,
            "max_uses": det.max_uses,
            "output_cap": det.output_cap,
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
