"""The ImageNet-sized path on this machine: ResNet-50 (random weights) on generated 224 x 224 images, and the
fingerprint bank at 1,000 classes. One JSON line.

- Throughput (images/s, batch `--batch-size`, medians of interleaved calls): a plain forward pass, feature
  extraction of every bank layer (the named layers with weights: `stem`, `stage1`..`stage4`, `logits`; "stats"
  pooling: 12,712 neurons at 1,000 classes),
  and bank scoring (forward pass included).
- Bank fit at `--classes` classes on synthetic activations of those neurons (`--per-class` clean and as
  many adversarial per class; the adversarial ones shifted by 1.5 standard deviations, so every class has its own
  bank): wall time and peak memory above the start.
- A projection for the 50,000-image ImageNet validation set and nine attacks, from the measured forward-pass rate
  and the stated assumptions (`project`).

Run: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/imagenet_scale.py [--classes 1000 --per-class 10]
"""
from __future__ import annotations

import argparse
import time

import torch
from common import PeakRSS, emit, interleaved_medians

from neuroprint.detectors.bank import BankDetector
from neuroprint.features import Features, extract
from neuroprint.models import Classifier, build_model

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
#: Assumptions of the projection: images per attack and split (the validation set, half fit and half test), the
#: attack cost in forward-pass equivalents per image (PGD-10 with a backward pass costing two forwards: 30;
#: the nine attacks of the evaluation average more, CW and DeepFool iterate longer), and a GPU's speed-up over
#: this machine's 2 CPU cores for ResNet-50 (an H100-class GPU at batch 256 in fp32 runs ~2,000 images/s).
PROJECTION = {"images": 50_000, "attacks": 9, "forward_equivalents_per_attack": 30, "gpu_images_per_s": 2000}


def synthetic_features(classifier: Classifier, layers: list[str], classes: int, per_class: int,
                       shift: float) -> tuple[Features, torch.Tensor, Features]:
    """Clean activations (standard normal) with labels, and adversarial ones shifted by `shift`, with logits that
    predict each image's class, shaped as `extract` returns them for `layers`."""
    probe = extract(classifier, torch.rand(1, 3, 64, 64), layers, "stats")
    widths = {name: probe[name].shape[1] for name in layers}
    y = torch.arange(classes).repeat_interleave(per_class)
    generator = torch.Generator().manual_seed(0)

    def features(offset: float) -> Features:
        logits = torch.randn(len(y), classes, generator=generator)
        logits[torch.arange(len(y)), y] += 10.0
        return Features(logits, {n: torch.randn(len(y), w, generator=generator) + offset for n, w in widths.items()})

    return features(0.0), y, features(shift)


def project(images_per_s: float) -> dict[str, float]:
    """Hours for the `PROJECTION` workload on this machine, and on 1, 8 and 64 GPUs (sharded by torchrun)."""
    work = PROJECTION["images"] * PROJECTION["attacks"] * PROJECTION["forward_equivalents_per_attack"]
    hours = {"this_machine": work / images_per_s / 3600}
    for gpus in (1, 8, 64):
        hours[f"{gpus}_gpus"] = work / (PROJECTION["gpu_images_per_s"] * gpus * 0.9 ** (gpus > 1)) / 3600
    return hours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=10, help="clean (and adversarial) fit images per class")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    classifier = Classifier(build_model("resnet50", num_classes=args.classes), mean=IMAGENET_MEAN,
                            std=IMAGENET_STD).eval()
    layers = list(classifier.layers)
    bank = BankDetector(layers=layers, pooling="stats")
    clean, y, adv = synthetic_features(classifier, layers, args.classes, args.per_class, shift=1.5)
    with PeakRSS() as memory:
        start = time.perf_counter()
        bank.fit_features(classifier, clean, y, adv)
        fit_seconds = time.perf_counter() - start
    del clean, adv
    x = torch.rand(args.batch_size, 3, 224, 224)
    with torch.no_grad():
        seconds = interleaved_medians({
            "forward": lambda: classifier.logits(x),
            "features": lambda: extract(classifier, x, layers, "stats", batch_size=args.batch_size),
            "bank_score": lambda: bank.score(x),
        }, repeats=args.repeats, warmup=1)
    rates = {name: args.batch_size / s for name, s in seconds.items()}
    emit({"benchmark": "imagenet_scale", "model": "resnet50 (random weights)", "image": [3, 224, 224],
          "batch_size": args.batch_size, "neurons": int(sum(bank.whiteners_[i].shape[0]
                                                             for i in range(len(bank.whiteners_)))),
          "images_per_s": rates, "features_over_forward": seconds["features"] / seconds["forward"],
          "bank_score_over_forward": seconds["bank_score"] / seconds["forward"],
          "bank_fit": {"classes": args.classes, "per_class": args.per_class, "seconds": fit_seconds,
                       "peak_mib_above_start": memory.above_base, "bank_mib": bank.memory_bytes / 2**20,
                       "fallback_classes": len(bank.fit_report_["fallback_classes"])},
          "projection_assumptions": PROJECTION, "projected_hours": project(rates["forward"])})


if __name__ == "__main__":
    main()
