"""NNIF detection with the fast last-layer influence vs the LiSSA full-network influence (MNIST, mnist-net).

The target: per-input detection time and peak memory of the two paths "on the same 200 inputs with 50,000
training points: >= 100x faster, AUC within 1 point". Protocol, per attack in `--attacks`:
- NNIF (all layers, M chosen by nested cross-validation over the reference grid) is fit on the validation split with
  the fast influence: `--n-fit` cached clean and adversarial validation images of the attack (the cache of
  experiments/detection_mnist.py).
- Test inputs: `--n-inputs` test images, half clean (correctly classified, not among the attacked sources) and half
  successful adversarial images of the attack. The clean half is the same for every attack.
- Each input's M most helpful and M most harmful of all 50,000 training points come from either path; everything
  else (neighbour ranks and distances, the fitted logistic head) is shared. Reported: the AUC of the fitted
  detector with either path's sets ("fitted head"), and the 5-fold cross-validated AUC of a logistic regression fit
  on each path's own test features ("own head", so a head fit to the fast path's features cannot favour it).
- Agreement: Spearman correlation of the two influence vectors over all training points, top-M overlap.
- Time per input: fast path = the complete NNIF features (influence, top-M, ranks, distances); LiSSA path = its
  influence (inverse-HVP plus its share of the 50,000 full-network training gradients, which all inputs share)
  plus the same neighbour features. Peak memory: the largest resident set size above the level before each phase.
- LiSSA convergence: the relative residual ||(H_b + damping I) s - v|| / ||v|| on a fixed batch of 500 training
  points (H_b) for the first `--residual-inputs` inputs.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m experiments.nnif_lissa_detection   (about 35 minutes on one core)
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from experiments.common import PeakRSS, emit, load_cached_attack, load_cached_model
from neuroprint.data import load_dataset
from neuroprint.detectors.influence import forward_with_embedding
from neuroprint.detectors.lissa import (
    LissaConfig,
    hessian_vector_products,
    lissa_influence,
    lissa_inverse_hvp,
    per_example_gradients,
)
from neuroprint.detectors.nnif import NNIFDetector


def auc(scores: torch.Tensor | np.ndarray, is_adv: torch.Tensor) -> float:
    return float(roc_auc_score(is_adv.numpy(), np.asarray(scores)))


def own_head_auc(features: torch.Tensor, is_adv: torch.Tensor) -> float:
    """5-fold cross-validated AUC of a standardised logistic regression fit on `features` `[N, F]` themselves."""
    head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    proba = cross_val_predict(head, features.numpy(), is_adv.numpy(), cv=folds, method="predict_proba")[:, 1]
    return auc(proba, is_adv)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.nnif_lissa_detection", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("runs/bench/detection/cache"))
    parser.add_argument("--attacks", nargs="+", default=["cw", "pgd"])
    parser.add_argument("--n-inputs", type=int, default=200, help="test inputs per attack: half clean, half attacked")
    parser.add_argument("--n-fit", type=int, default=1000, help="clean and adversarial validation images, each")
    parser.add_argument("--n-train", type=int, default=50_000, help="training points (fewer for a dry run)")
    parser.add_argument("--damping", type=float, default=1.0)
    parser.add_argument("--scale", type=float, default=10.0, help="LiSSA scale (> half the largest eigenvalue)")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=20, help="LiSSA Hessian minibatch")
    parser.add_argument("--residual-inputs", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    classifier, model_name = load_cached_model(args.cache)
    data = load_dataset("mnist")
    x_train, y_train = data.train.x[: args.n_train], data.train.y[: args.n_train]
    half = args.n_inputs // 2
    tests = {attack: load_cached_attack(args.cache, model_name, attack, "test") for attack in args.attacks}
    attacked = torch.cat([t.source_index for t in tests.values()]).unique()
    correct = (classifier.predict(data.test.x) == data.test.y).nonzero().flatten()
    clean_index = correct[~torch.isin(correct, attacked)][:half]
    inputs = {"clean": data.test.x[clean_index]}
    inputs.update({attack: t.x_adv[t.success][:half] for attack, t in tests.items()})
    x_all = torch.cat(list(inputs.values()))
    offsets = dict(zip(inputs, np.cumsum([0, *[len(v) for v in inputs.values()]]), strict=False))
    logits, embedding, _ = forward_with_embedding(classifier, x_all)
    pred = logits.argmax(1)

    # -- LiSSA influence of all training points on every distinct input, once --------------------------------------
    config = LissaConfig(damping=args.damping, scale=args.scale, depth=args.depth, batch_size=args.batch_size)
    with PeakRSS() as lissa_mem:
        start = time.perf_counter()
        lissa = lissa_influence(classifier, x_all, pred, x_train, y_train, config, progress=True)
        lissa_s_per_input = (time.perf_counter() - start) / len(x_all)
    held_out = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(1))[:500]
    few = slice(0, args.residual_inputs)
    v = per_example_gradients(classifier, x_all[few], pred[few])
    s = lissa_inverse_hvp(classifier, v, x_train, y_train, config)
    r = hessian_vector_products(classifier, s, x_train[held_out], y_train[held_out]) + args.damping * s - v
    residual = (r.norm(dim=1) / v.norm(dim=1)).tolist()

    records = []
    for attack in args.attacks:
        val = load_cached_attack(args.cache, model_name, attack, "val")
        x_adv_fit = val.x_adv[val.success][: args.n_fit]
        val_correct = (classifier.predict(data.val.x) == data.val.y).nonzero().flatten()
        fit_index = val_correct[~torch.isin(val_correct, val.source_index)][: args.n_fit]
        detector = NNIFDetector().set_training_data(x_train, y_train)
        with PeakRSS() as fit_mem:
            start = time.perf_counter()
            detector.fit(classifier, data.val.x[fit_index], data.val.y[fit_index], x_adv_fit)
            fit_s = time.perf_counter() - start
        m = detector.m_
        pick = torch.cat([torch.arange(offsets["clean"], offsets["clean"] + half),
                          torch.arange(offsets[attack], offsets[attack] + len(inputs[attack]))])
        x, is_adv = x_all[pick], torch.cat([torch.zeros(half), torch.ones(len(inputs[attack]))]).long()
        with PeakRSS() as fast_mem:
            start = time.perf_counter()
            fast_features = detector.nnif_features(x)
            fast_s_per_input = (time.perf_counter() - start) / len(x)
        influence = lissa[pick]
        helpful, harmful = influence.topk(m, dim=1, largest=False).indices, influence.topk(m, dim=1).indices
        with PeakRSS() as features_mem:
            start = time.perf_counter()
            lissa_features = detector.nnif_features(x, helpful, harmful)
            lissa_features_s = (time.perf_counter() - start) / len(x)
        exact = detector.influence_.influence(embedding[pick], logits[pick], pred[pick])
        rho = [float(spearmanr(a.numpy(), b.numpy()).statistic) for a, b in zip(exact, influence, strict=True)]
        fast_helpful, fast_harmful = exact.topk(m, dim=1, largest=False).indices, exact.topk(m, dim=1).indices

        def overlap(a: torch.Tensor, b: torch.Tensor, size: int = m) -> float:
            return float(np.mean([len(set(p.tolist()) & set(q.tolist())) / size for p, q in zip(a, b, strict=True)]))

        lissa_per_input = lissa_s_per_input + lissa_features_s
        records.append({
            "attack": attack, "n_clean": half, "n_adv": len(inputs[attack]), "n_train": len(x_train),
            "m": m, "n_fit": [len(fit_index), len(x_adv_fit)], "fit_s": fit_s, "fit_peak_rss_mib": fit_mem.above_base,
            "auc_fitted_head": {"fast": auc(detector.head_(fast_features), is_adv),
                                "lissa": auc(detector.head_(lissa_features), is_adv)},
            "auc_own_head_cv5": {"fast": own_head_auc(fast_features, is_adv),
                                 "lissa": own_head_auc(lissa_features, is_adv)},
            "spearman_mean": float(np.mean(rho)), "spearman_min": float(np.min(rho)),
            "helpful_overlap": overlap(fast_helpful, helpful), "harmful_overlap": overlap(fast_harmful, harmful),
            "seconds_per_input": {"fast": fast_s_per_input, "lissa": lissa_per_input,
                                  "lissa_influence_only": lissa_s_per_input},
            "speedup": lissa_per_input / fast_s_per_input,
            "peak_rss_mib": {"fast": fast_mem.above_base, "lissa": max(lissa_mem.above_base, features_mem.above_base)},
        })
    emit({
        "benchmark": "nnif_lissa_detection",
        "lissa": {"damping": config.damping, "scale": config.scale, "depth": config.depth,
                  "batch_size": config.batch_size, "parameters": int(v.shape[1]), "residual": residual},
        "results": records,
    })


if __name__ == "__main__":
    main()
