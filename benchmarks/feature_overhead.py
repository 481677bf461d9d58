"""Feature extraction cost vs plain inference (mnist-net, batch 256). Target: ratio <= 1.15.

Run: .venv/bin/python benchmarks/feature_overhead.py [--batch 256 --repeats 30]
"""
from __future__ import annotations

import argparse

import torch
from common import emit, interleaved_medians

from neuroprint.features import activations
from neuroprint.models import Classifier, build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    clf = Classifier(build_model("mnist-net"), mean=[0.1307], std=[0.3081])
    x = torch.rand(args.batch, 1, 28, 28)
    with torch.no_grad():
        medians = interleaved_medians(
            {
                "forward": lambda: clf(x),
                "features_avg": lambda: activations(clf, x, pooling="avg"),
                "features_flatten": lambda: activations(clf, x, pooling="flatten"),
            },
            repeats=args.repeats,
        )
    emit(
        {
            "benchmark": "feature_overhead",
            "batch": args.batch,
            "layers": list(clf.layers),
            "forward_ms": 1e3 * medians["forward"],
            "features_avg_ms": 1e3 * medians["features_avg"],
            "features_flatten_ms": 1e3 * medians["features_flatten"],
            "ratio_avg": medians["features_avg"] / medians["forward"],
            "ratio_flatten": medians["features_flatten"] / medians["forward"],
            "target_ratio": 1.15,
        }
    )


if __name__ == "__main__":
    main()
