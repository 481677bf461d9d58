"""How the fingerprint bank's default was chosen: validation splits only, across several data draws.

For every draw (a model and the adversarial sets that `experiments.detection_mnist` or `neuroprint evaluate`
cached for it), the *validation* images are split `--splits` times at random, 70/30 by source image: the bank is
fit on 70% of the clean images and on the PGD examples of 70% of the attacked sources, and scored on the other 30%
(clean) against every other cached attack on the held-out sources ("unseen": fit on PGD only) and, fit on each of
`--per-attack` attacks in the same way, against that attack ("per attack"). The test splits are never read.
One JSON line per (spec, draw): the mean AUC over splits per cell, with versions and the git hash.

Run (the caches of the seed-0 and seed-1 runs in BENCHMARKS.md; a few minutes per spec on one core):
    OMP_NUM_THREADS=1 .venv/bin/python -m experiments.bank_selection \\
        --draw 0:runs/bench/bank4/cache --draw 1:runs/bench/bank-seed1/cache \\
        --specs bank "bank:pooling=avg,max_uses=100,z_cap=none"
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from experiments.common import emit, load_cached_attack, load_cached_model
from neuroprint.attacks.adversarial_set import AdversarialSet
from neuroprint.data import Split, load_dataset
from neuroprint.detectors import make_detector
from neuroprint.evaluation import metrics
from neuroprint.evaluation.splits import correct_clean, draw_sources
from neuroprint.models.classifier import Classifier


def parse_draw(text: str) -> tuple[int, Path]:
    """`SEED:CACHE_DIR` -> (seed, cache dir holding exactly one model under models/)."""
    seed, _, cache = text.partition(":")
    return int(seed), Path(cache)


def held_out_auc(spec: str, classifier: Classifier, clean: Split, fit_clean: np.ndarray,
                 adv_sets: dict[str, AdversarialSet], fit_attack: str, fit_sources: set[int],
                 tested: list[str]) -> dict[str, float]:
    """Fit `spec` on clean[fit_clean] + `fit_attack` examples of `fit_sources`; AUC on the rest for `tested`."""
    def on(adv: AdversarialSet, inside: bool) -> torch.Tensor:
        keep = torch.tensor([(int(s) in fit_sources) == inside for s in adv.source_index])
        return adv.x_adv[keep]

    mask = np.zeros(len(clean), dtype=bool)
    mask[fit_clean] = True
    detector = make_detector(spec)
    detector.fit(classifier, clean.x[mask], clean.y[mask], on(adv_sets[fit_attack], True))
    with torch.no_grad():
        clean_scores = detector.score(clean.x[~mask]).numpy()
        return {a: metrics.auc(clean_scores, detector.score(on(adv_sets[a], False)).numpy()) for a in tested}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.bank_selection", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draw", action="append", type=parse_draw, required=True, help="SEED:CACHE_DIR (repeat)")
    parser.add_argument("--specs", nargs="+", default=["bank"])
    parser.add_argument("--fit-attack", default="pgd")
    parser.add_argument("--per-attack", nargs="+", default=["cw", "deepfool", "jsma", "ead"])
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--n", type=int, default=2000, help="validation source images of the cached runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("mnist")
    for seed, cache in args.draw:
        classifier, model_name = load_cached_model(cache)
        clean_index, attacked_index = draw_sources(len(data.val), args.n, seed)
        clean = correct_clean(classifier, data.val, clean_index)
        cached = sorted({p.name.split("-val-")[0] for p in (cache / "adv" / model_name).glob("*-val-*.json")})
        adv_sets = {a: load_cached_attack(cache, model_name, a, "val").successful() for a in cached}
        for spec in args.specs:
            cells: dict[str, list[float]] = {}
            for split in range(args.splits):
                rng = np.random.default_rng(100 + split)
                fit_clean = rng.permutation(len(clean))[: int(0.7 * len(clean))]
                sources = rng.permutation(attacked_index.numpy())
                fit_sources = set(sources[: int(0.7 * len(sources))].tolist())
                unseen = [a for a in cached if a != args.fit_attack]
                for a, auc in held_out_auc(spec, classifier, clean, fit_clean, adv_sets, args.fit_attack,
                                           fit_sources, unseen).items():
                    cells.setdefault(f"{args.fit_attack}->{a}", []).append(auc)
                for a in [a for a in args.per_attack if a in cached]:
                    auc = held_out_auc(spec, classifier, clean, fit_clean, adv_sets, a, fit_sources, [a])[a]
                    cells.setdefault(f"{a}->{a}", []).append(auc)
            emit({"benchmark": "bank_selection", "spec": spec, "draw_seed": seed, "model": model_name,
                  "splits": args.splits, "auc": {k: round(float(np.mean(v)), 5) for k, v in cells.items()}})


if __name__ == "__main__":
    main()
