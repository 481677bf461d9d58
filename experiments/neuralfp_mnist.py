"""NeuralFP on MNIST: probe training, detection of the nine attacks, the adaptive white-box attack, speed.

Phases (each appends JSON lines to `<out>/neuralfp.jsonl` and prints them; models and adversarial sets are cached
under `<out>/cache`, so re-runs only redo what is missing):
  accuracy  clean test accuracy and seconds per epoch of each NeuralFP model vs the same net and schedule
            trained without probes
  detect    `neuralfp` (min over classes) and `neuralfp:score_kind=predicted` on every attack: AUC, TPR at 5% FPR
            (threshold from clean validation images; the method never sees adversarial examples)
  protocol  where the AUC is lost, on the cached test attacks: our protocol (successful examples vs the disjoint
            clean half, with a 95% bootstrap interval over the test images) beside the reference code's (every
            attack output of a correctly classified source, failed ones included, vs those sources' clean
            images), the clean score's upper tail (and how many of its images the model is unsure of), and JSMA
            split by whether the attack spent its whole pixel budget
  adaptive  Adaptive-CW-L2 (eq. 29) aimed at the target class's probes: attack success, mean L2, and the
            share of successful attacks the defender still flags at its 5%-FPR threshold
  speed     one detection (a forward pass over (N + 1) x 256 inputs) vs N + 1 plain forward passes of 256 images

Training schedule: the reference code's MNIST run (2 epochs, batch 128, Adam 1e-3) with the lr divided by 10 for
the second epoch. `--per-step` directions per training step (default 2 of N, an unbiased estimate of L_fp) keeps a
CPU run affordable; pass --per-step 0 to evaluate all N per step as the reference code does.

Run: .venv/bin/python -m experiments.neuralfp_mnist --grid 10:0.006 --n 1000      (about 1.5 h on 2 CPU cores)
     .venv/bin/python -m experiments.neuralfp_mnist --grid 5:0.003 5:0.006 5:0.01 10:0.003 ... 30:0.01 --per-step 0
     (the reference grid; on 2 CPU cores a full-direction epoch takes ~15 min at N = 10 and ~45 min at N = 30)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.common import emit, interleaved_medians
from neuroprint.adaptive.neuralfp_cw import AdaptiveCWNeuralFP
from neuroprint.data import load_dataset
from neuroprint.detectors import make_detector
from neuroprint.evaluation import metrics
from neuroprint.evaluation.protocol import EvalConfig, cached_adversarial_set, run_evaluation
from neuroprint.evaluation.report import markdown_table
from neuroprint.evaluation.splits import correct_clean, draw_sources
from neuroprint.models.checkpoint import load_or_train
from neuroprint.models.probes import DIRECTIONS, ProbeConfig, perturbed_inputs
from neuroprint.models.training import TrainConfig

ATTACKS = ["fgsm", "bim-a", "bim-b", "pgd", "mifgsm", "cw", "deepfool", "jsma", "ead"]
PHASES = ("accuracy", "detect", "protocol", "adaptive", "speed")


def schedule(probes: ProbeConfig | None, seed: int) -> TrainConfig:
    return TrainConfig(epochs=2, batch_size=128, lr=1e-3, lr_drop_epoch=1, seed=seed, probes=probes)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.neuralfp_mnist", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", nargs="+", default=["10:0.006"], help="N:eps probe settings")
    parser.add_argument("--per-step", type=int, default=2, help="directions per training step (0 = all N)")
    parser.add_argument("--directions", default="symmetric", choices=DIRECTIONS,
                        help="dx pixels in [-eps, eps] (the paper) or [0, eps) (the reference code)")
    parser.add_argument("--n", type=int, default=1000, help="test source images (half clean, half attacked)")
    parser.add_argument("--n-val", type=int, default=1000, help="clean validation images (threshold)")
    parser.add_argument("--n-adaptive", type=int, default=100, help="test images for the adaptive attack")
    parser.add_argument("--adaptive-steps", type=int, default=50, help="Adam steps per bisection round")
    parser.add_argument("--adaptive-search", type=int, default=3, help="bisection rounds over gamma")
    parser.add_argument("--adaptive-lr", type=float, default=0.05)
    parser.add_argument("--attacks", nargs="+", default=ATTACKS)
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/neuralfp"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("mnist")
    cache = args.out / "cache"
    log = args.out / "neuralfp.jsonl"

    def record(row: dict[str, Any]) -> None:
        with log.open("a") as f:
            f.write(json.dumps(emit({**row, "seed": args.seed})) + "\n")

    for setting in args.grid:
        n, eps = setting.split(":")
        probes = ProbeConfig(n=int(n), eps=float(eps), seed=args.seed, per_step=args.per_step or None,
                             directions=args.directions)
        clf, meta, model_dir = load_or_train("mnist-net", data, schedule(probes, args.seed), cache / "models", True, args.device)
        tag = {"N": int(n), "eps": float(eps), "per_step": args.per_step or int(n), "directions": args.directions,
               "model": model_dir.name}
        if "accuracy" in args.phases:
            _, plain_meta, _ = load_or_train("mnist-net", data, schedule(None, args.seed), cache / "models", True, args.device)
            record({"benchmark": "neuralfp_accuracy", **tag, "clean_accuracy": meta["clean_accuracy"],
                    "plain_clean_accuracy": plain_meta["clean_accuracy"], "epoch_seconds": meta["epoch_seconds"],
                    "plain_epoch_seconds": plain_meta["epoch_seconds"], "probe_loss": meta["probe_loss"]})
        if "detect" in args.phases:
            config = EvalConfig(dataset="mnist", model=str(model_dir), attacks=args.attacks,
                                detectors=["neuralfp", "neuralfp:score_kind=predicted"], n_fit=args.n_val,
                                n_test=args.n, seed=args.seed, cache_dir=cache, device=args.device)
            report = run_evaluation(config, progress=False, log=lambda msg: print(msg, flush=True))
            table = markdown_table(report)
            (args.out / f"detect-{model_dir.name}.md").write_text(table + "\n")
            print(table, flush=True)
            for attack in report.attacks:
                record({"benchmark": "neuralfp_attack", **tag, "attack": attack.spec, "split": attack.split,
                        "success_rate": attack.success_rate, "n": attack.n_attacked, "mean_l2": attack.mean_l2})
            for result in report.results:
                record({"benchmark": "neuralfp_detect", **tag, "detector": result.detector, "attack": result.attack,
                        "auc": result.auc, "auc_ci95": result.auc_ci95,
                        "tpr_at_fpr05": result.tpr_at_fpr05, "fpr_at_tpr99": result.fpr_at_tpr99,
                        "n_clean": result.n_clean, "n_adv": result.n_adv})
        if "protocol" in args.phases:
            for row in protocols(clf, model_dir, data, args):
                record({"benchmark": "neuralfp_protocol", **tag, **row})
        if "adaptive" in args.phases:
            record({"benchmark": "neuralfp_adaptive", **tag, **adaptive(clf, data, args)})
        if "speed" in args.phases:
            record({"benchmark": "neuralfp_speed", **tag, **speed(clf)})


def protocols(clf: Any, model_dir: Path, data: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """AUC (%) of both scores on each cached test attack under our protocol and the reference code's protocol.

    The reference (the authors' mnist/eval_fingerprint.py) keeps every adversarial output whose clean source the
    model classifies correctly, failed attacks included, and scores it against those same clean sources. A JSMA
    example "spent its budget" when it changed floor(gamma * 784 / 2) * 2 pixels, the most it may: it reached
    its target class in its last iteration or never (it is then misclassified as another class). "Unsure" clean
    images: top softmax probability below 0.9.
    """
    val_idx, _ = draw_sources(len(data.val), args.n_val, args.seed)
    val = correct_clean(clf, data.val, val_idx)
    clean_idx, adv_idx = draw_sources(len(data.test), args.n, args.seed + 1)
    clean = correct_clean(clf, data.test, clean_idx)
    with torch.no_grad():
        unsure = (torch.softmax(clf(clean.x), dim=1).max(dim=1).values < 0.9).numpy()
    adv_sets = {attack: cached_adversarial_set(clf, model_dir.name, attack, data.test, "test", adv_idx,
                                               args.out / "cache", 256, progress=True)[0] for attack in args.attacks}
    rows = []
    for spec in ("neuralfp", "neuralfp:score_kind=predicted"):
        detector = make_detector(spec).fit(clf, val.x, val.y)
        with torch.no_grad():
            clean_scores = detector.score(clean.x).numpy()
        top = clean_scores >= np.percentile(clean_scores, 99)
        tail = {"clean_score_p50_p95_p99_max": [float(v) for v in np.percentile(clean_scores, [50, 95, 99, 100])],
                "clean_unsure_share": float(unsure.mean()), "clean_top1pct_unsure_share": float(unsure[top].mean())}
        for attack, adv in adv_sets.items():
            success = adv.success.numpy()
            sources = data.test.x[adv.source_index]
            with torch.no_grad():
                adv_scores = detector.score(adv.x_adv).numpy()
                source_scores = detector.score(sources).numpy()
            row = {"detector": spec, "attack": attack, "success_rate": adv.success_rate, "n_adv": int(success.sum()),
                   "auc_ours": 100 * metrics.auc(clean_scores, adv_scores[success]),
                   "auc_ours_ci95": [100 * v for v in metrics.auc_interval(clean_scores, adv_scores[success])],
                   "auc_reference": 100 * metrics.auc(source_scores, adv_scores), **tail}
            if adv.attack == "jsma":
                budget = 2 * int(adv.params["gamma"] * adv.x_adv[0].numel() / 2)
                changed = (adv.x_adv - sources).abs().flatten(1).gt(0).sum(1).numpy()
                spent = success & (changed >= budget)
                row |= {"jsma_spent_budget": int(spent.sum()),
                        "auc_jsma_reached_target": 100 * metrics.auc(clean_scores, adv_scores[success & ~spent]),
                        "auc_jsma_spent_budget": 100 * metrics.auc(clean_scores, adv_scores[spent])}
            rows.append(row)
    return rows


def adaptive(clf: Any, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Adaptive-CW-L2 against the min-over-classes detector with its clean-calibrated 5%-FPR threshold."""
    val_idx, _ = draw_sources(len(data.val), args.n_val, args.seed)
    val = correct_clean(clf, data.val, val_idx)
    _, test_idx = draw_sources(len(data.test), 2 * args.n_adaptive, args.seed + 1)
    test = correct_clean(clf, data.test, test_idx)
    detector = make_detector("neuralfp").fit(clf, val.x, val.y).calibrate(val.x, fpr=0.05)
    attack = AdaptiveCWNeuralFP(threshold=detector.threshold_, steps=args.adaptive_steps,
                                search_steps=args.adaptive_search, lr=args.adaptive_lr, random_state=args.seed)
    start = time.perf_counter()
    result = attack(clf, test.x, test.y, batch_size=50, progress=True)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        clean_scores = detector.score(test.x).numpy()
        adv_scores = detector.score(result.x_adv[result.success]).numpy()
        flagged = detector.predict(result.x_adv[result.success])
    return {
        "attack": "adaptive-cw-l2 (target-class probes)", "params": attack.params, "n": len(test),
        "success_rate": result.success_rate, "mean_l2": float(result.l2[result.success].mean()),
        "tpr_at_threshold": float(flagged.float().mean()), "threshold": detector.threshold_,
        "auc": metrics.auc(clean_scores, adv_scores), "tpr_at_fpr05": metrics.tpr_at_fpr(clean_scores, adv_scores, 0.05),
        "seconds": seconds,
    }


def speed(clf: Any, batch: int = 256) -> dict[str, Any]:
    """Median time of one detection of `batch` images vs N + 1 plain forward passes of `batch` images."""
    detector = make_detector("neuralfp", batch_size=batch)
    x = torch.rand(batch, 1, 28, 28)
    detector.fit(clf, x, torch.zeros(batch, dtype=torch.long))
    probes = clf.probes
    copies = perturbed_inputs(x, probes, clf.bounds).split(batch)  # the n + 1 batches one detection sees

    def plain() -> None:
        for part in copies:
            clf(part)

    with torch.no_grad():
        medians = interleaved_medians({"plain": plain, "detect": lambda: detector.score(x)}, repeats=10, warmup=2)
    return {"batch": batch, "plain_passes": probes.n + 1, "plain_ms": 1e3 * medians["plain"],
            "detect_ms": 1e3 * medians["detect"], "ratio": medians["detect"] / medians["plain"], "target": 1.1}


if __name__ == "__main__":
    main()
