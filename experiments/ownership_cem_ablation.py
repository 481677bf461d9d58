"""CEM loss ablation on MNIST (Lukas et al. 2021, arXiv 1912.00888): which loss weights and which max over classes
turn benign images into adversarial examples that are conferrable on the defender's local models.

Uses the source and local models that `neuroprint ownership evaluate` cached (seed 0, lenet5, 3 + 3 local models;
it trains them in about a minute if the cache is empty) and runs CEM on the first `--n` validation images at
`--eps` with the paper's weights (alpha = beta = gamma = 1) and the sensitivity-study weights (1, 0.1, 0.1), each
with the plain max over classes and with the source's original class excluded. Per setting: the share of outputs
that are adversarial for the source, the share that also reach conferrability >= tau on the local models, their
mean local conferrability, and the seconds taken. One JSON line per setting.

Run: .venv/bin/python -m experiments.ownership_cem_ablation   (about 4 minutes on 2 cores)
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from experiments.common import emit
from neuroprint.data import load_dataset
from neuroprint.ownership.cem import CEMConfig, run_cem
from neuroprint.ownership.conferrability import conferrability, predictions
from neuroprint.ownership.experiment import ModelCache, local_models, source_model, split_owner_data


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.ownership_cem_ablation",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--eps", type=float, default=0.25)
    parser.add_argument("--tau", type=float, default=0.9)
    parser.add_argument("--cache-dir", default="runs/cache/ownership")
    args = parser.parse_args()
    data = load_dataset("mnist")
    defender, _ = split_owner_data(data, 0)
    cache = ModelCache(Path(args.cache_dir), print)
    source, recipe = source_model(defender, "lenet5", 4, 0, cache)
    surrogates, references = local_models(source, recipe, "lenet5", defender, 3, 3, 4, cache)
    x, y = data.val.x[: args.n], data.val.y[: args.n]
    for weights, base in (("paper", CEMConfig(eps=args.eps)), ("sensitivity", CEMConfig.sensitivity_weights(eps=args.eps))):
        for exclude in (False, True):
            started = time.perf_counter()
            x_adv = run_cem(source, surrogates, references, x, replace(base, exclude_source_class=exclude), progress=False)
            seconds = time.perf_counter() - started
            target = source.predict(x_adv)
            adversarial = target != y
            score = conferrability(predictions(surrogates, x_adv), predictions(references, x_adv), target)
            passed = adversarial & (score >= args.tau)
            emit({"benchmark": "ownership_cem_ablation", "weights": weights, "exclude_source_class": exclude,
                  "eps": args.eps, "tau": args.tau, "n": args.n, "adversarial": float(adversarial.float().mean()),
                  "passed_tau": float(passed.float().mean()),
                  "local_conferrability_adversarial": float(score[adversarial].mean()) if bool(adversarial.any()) else None,
                  "seconds": round(seconds, 1)})


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
