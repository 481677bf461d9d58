"""NNIF influence: the fast exact last-layer path against the LiSSA full-network reference path (MNIST, mnist-net).

Inputs: `--n-inputs` MNIST test images, half clean (correctly classified) and half PGD adversarial from the cached
sets of experiments.detection_mnist; the influence of all 50,000 training points on each, every input labelled with
the model's prediction (NNIF, Cohen et al. 2020, arXiv 1909.06872).

- fast path (`LastLayerInfluence`): fit (training forward pass, Hessian, Cholesky), then per input the influence of
  all 50,000 training points and the top-M helpful/harmful sets, and the complete NNIF features (all 7 layers).
- LiSSA path (`lissa_influence`, all 834,890 parameters): on `--lissa-inputs` of the inputs and `--lissa-train`
  training points only (it is about 4 orders of magnitude slower on CPU). Its per-input time at 50,000 training
  points is **extrapolated**: measured inverse-HVP seconds per input + measured seconds per training-point gradient
  x 50,000 / n_inputs (training gradients shared by all inputs, the favourable case for LiSSA).
- agreement on the LiSSA inputs and training subset: Spearman correlation of the influence scores, overlap of the
  top-M helpful and harmful sets, and the AUC (clean vs adversarial) of D+ (mean embedding distance to the M most
  helpful training points, the paper's strongest single feature) with helpful sets from either path.
Peak memory: the largest resident set size seen (sampled every 20 ms) above the level before each phase.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/nnif_speed.py   (about 15 minutes on one CPU core)
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import PeakRSS, emit, load_cached_attack, load_cached_model
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from neuroprint.data import load_dataset
from neuroprint.detectors.influence import LastLayerInfluence, forward_with_embedding
from neuroprint.detectors.lissa import LissaConfig, lissa_influence
from neuroprint.detectors.nnif import NNIFDetector
from neuroprint.detectors.ranks import ranks_and_distances


def d_plus(embedding: torch.Tensor, train_embedding: torch.Tensor, helpful: torch.Tensor) -> torch.Tensor:
    """D+ `[B]`: mean L2 distance from each input's embedding to its helpful training points `[B, M]`."""
    return (embedding[:, None, :] - train_embedding[helpful]).norm(dim=2).mean(1)


def auc(clean: torch.Tensor, adv: torch.Tensor) -> float:
    labels = np.r_[np.zeros(len(clean)), np.ones(len(adv))]
    return float(roc_auc_score(labels, torch.cat([clean, adv]).numpy()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("runs/bench/detection/cache"))
    parser.add_argument("--n-inputs", type=int, default=200)
    parser.add_argument("--n-train", type=int, default=50_000, help="training points (fewer for a dry run)")
    parser.add_argument("--m", type=int, default=50, help="helpful / harmful set size")
    parser.add_argument("--lissa-inputs", type=int, default=40)
    parser.add_argument("--lissa-train", type=int, default=2000)
    parser.add_argument("--depth", type=int, default=20, help="LiSSA recursion depth")
    parser.add_argument("--batch-size", type=int, default=20, help="LiSSA Hessian minibatch")
    parser.add_argument("--damping", type=float, default=0.01)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    classifier, model_name = load_cached_model(args.cache)
    data = load_dataset("mnist")
    pgd = load_cached_attack(args.cache, model_name, "pgd", "test")
    half = args.n_inputs // 2
    correct = (classifier.predict(data.test.x) == data.test.y).nonzero().flatten()
    clean = data.test.x[correct[:half]]
    adv = pgd.x_adv[pgd.success][:half]
    x = torch.cat([clean, adv])
    is_adv = torch.cat([torch.zeros(len(clean)), torch.ones(len(adv))]).bool()
    x_train, y_train = data.train.x[: args.n_train], data.train.y[: args.n_train]

    # -- fast path ------------------------------------------------------------------------------------------------
    with PeakRSS() as fit_mem:
        start = time.perf_counter()
        train_logits, train_h, _ = forward_with_embedding(classifier, x_train)
        forward_s = time.perf_counter() - start
        start = time.perf_counter()
        fast = LastLayerInfluence(args.damping).fit(train_h, train_logits, y_train)
        hessian_s = time.perf_counter() - start
    logits, h, _ = forward_with_embedding(classifier, x)
    pred = logits.argmax(1)
    with PeakRSS() as fast_mem:
        start = time.perf_counter()
        helpful, _ = fast.top(h, logits, pred, args.m)
        fast_per_input = (time.perf_counter() - start) / len(x)

    nnif = NNIFDetector(m_grid=[args.m]).set_training_data(x_train, y_train)
    nnif.layers_ = classifier.layers
    start = time.perf_counter()
    nnif.influence_, nnif.train_acts_ = nnif._fit_training_side(classifier, x_train, y_train)
    nnif_fit_s = time.perf_counter() - start
    with PeakRSS() as features_mem:
        start = time.perf_counter()
        nnif._raw_features(classifier, x, args.m)
        features_per_input = (time.perf_counter() - start) / len(x)

    # -- LiSSA path on a subset -------------------------------------------------------------------------------------
    generator = torch.Generator().manual_seed(0)
    pick = torch.cat([torch.arange(args.lissa_inputs // 2), half + torch.arange(args.lissa_inputs - args.lissa_inputs // 2)])
    subset = torch.randperm(len(x_train), generator=generator)[: args.lissa_train].sort().values
    with PeakRSS() as lissa_mem:
        start = time.perf_counter()
        config = LissaConfig(damping=args.damping, depth=args.depth, batch_size=args.batch_size)
        lissa = lissa_influence(classifier, x[pick], pred[pick], x_train[subset], y_train[subset], config, progress=True)
        lissa_total_s = time.perf_counter() - start
    # split the measured total into per-input inverse-HVP time and per-training-point gradient time
    start = time.perf_counter()
    lissa_influence(classifier, x[pick[:1]], pred[pick[:1]], x_train[subset[:256]], y_train[subset[:256]],
                    LissaConfig(damping=args.damping, scale=1.0, depth=0))
    grad_s_per_train = (time.perf_counter() - start) / 256
    ihvp_s_per_input = (lissa_total_s - grad_s_per_train * len(subset)) / len(pick)
    lissa_per_input_50k = ihvp_s_per_input + grad_s_per_train * len(x_train) / args.n_inputs

    # -- agreement on the subset ------------------------------------------------------------------------------------
    fast_sub = fast.influence(h[pick], logits[pick], pred[pick])[:, subset]
    rho = [float(spearmanr(a.numpy(), b.numpy()).statistic) for a, b in zip(fast_sub, lissa)]
    m = min(args.m, len(subset) // 4)

    def overlap(a: torch.Tensor, b: torch.Tensor, largest: bool) -> float:
        ia, ib = a.topk(m, dim=1, largest=largest).indices, b.topk(m, dim=1, largest=largest).indices
        return float(np.mean([len(set(p.tolist()) & set(q.tolist())) / m for p, q in zip(ia, ib)]))

    sub_h = train_h[subset]
    dplus = {
        name: d_plus(h[pick], sub_h, inf.topk(m, dim=1, largest=False).indices) for name, inf in
        (("fast", fast_sub), ("lissa", lissa))
    }
    sub_adv = is_adv[pick]
    full_dplus = d_plus(h, train_h, helpful)
    _, dists = ranks_and_distances(h, train_h, helpful)
    emit({
        "benchmark": "nnif_speed",
        "n_inputs": len(x), "n_train": len(x_train), "m": args.m,
        "fast": {
            "training_forward_s": forward_s, "hessian_and_cholesky_s": hessian_s, "fit_peak_rss_mib": fit_mem.above_base,
            "influence_top_m_per_input_s": fast_per_input, "influence_peak_rss_mib": fast_mem.above_base,
            "nnif_training_side_fit_s": nnif_fit_s,
            "nnif_features_all_layers_per_input_s": features_per_input, "features_peak_rss_mib": features_mem.above_base,
        },
        "lissa": {
            "inputs": len(pick), "train_subset": len(subset), "depth": args.depth, "batch_size": args.batch_size,
            "measured_total_s": lissa_total_s, "peak_rss_mib": lissa_mem.above_base,
            "ihvp_per_input_s": ihvp_s_per_input, "gradient_per_training_point_s": grad_s_per_train,
            "extrapolated_per_input_s_at_50k": lissa_per_input_50k,
        },
        "speedup_influence_extrapolated": lissa_per_input_50k / fast_per_input,
        "agreement_on_subset": {
            "spearman_mean": float(np.mean(rho)), "spearman_min": float(np.min(rho)),
            "top_m": m,
            "helpful_overlap": overlap(fast_sub, lissa, largest=False),
            "harmful_overlap": overlap(fast_sub, lissa, largest=True),
            "dplus_auc_fast": auc(dplus["fast"][~sub_adv], dplus["fast"][sub_adv]),
            "dplus_auc_lissa": auc(dplus["lissa"][~sub_adv], dplus["lissa"][sub_adv]),
        },
        "dplus_auc_fast_all_inputs_50k": auc(full_dplus[~is_adv], full_dplus[is_adv]),
        "dplus_check_vs_ranks_module": float((dists.mean(1) - full_dplus).abs().max()),
    })


if __name__ == "__main__":
    main()
