"""Why the bank's secret per-input draw costs a full-knowledge attacker nothing: the drawn score, measured over many
draws on clean and on adaptively attacked images (Fisher, Shahar, Resheff, arXiv 2411.04533, for the thesis;
Bryniarski et al. 2022, arXiv 2106.15023, for SR@5%FPR).

With `sampling="secure"` the bank's score of an input is the mean over `k` fingerprints drawn from the predicted
class's bank (plus the output term): an unbiased estimate of the score over every fingerprint (`sampling="all"`).
The draw can only stop more attacked images than the whole bank if the draws disagree *more* on attacked inputs
than on clean ones, i.e. if the attack cannot lower every fingerprint at once. This experiment measures that:

- the default bank (`sampling=secure`) is fit and calibrated as in `experiments.bank_designs` (MNIST, 2,000
  validation sources, threshold at 5% FPR on held-out clean validation images); a second copy scores with
  `sampling=all`, calibrated on the same images;
- the joint attack (the suite's strongest on the bank), 500 steps, descends the expectation over draws on 100
  validation images no detector saw, at L-inf 0.2 and 0.3;
- on the calibration images (clean) and on the attacked images that fool the classifier, `DRAWS` secure draws per
  image give: the spread of the drawn score per image (std over draws), the correlation across images of two
  independent draws, the mean pairwise correlation of single fingerprints' scores (within the predicted class),
  and the expected share of attacked images that the whole bank stops but a draw lets through, and the reverse,
  with the paired difference of the two SR@5%FPR and its 95% bootstrap interval over images. Both detectors judge
  the same submissions, made against the secure draw (the whole bank attacked through its own exact check is
  `experiments.bank_designs`' `modes` run).

It also measures the spread of the secure bank's threshold over repeated calibrations on the same clean images,
with one draw per image and with the `CALIBRATION_DRAWS` pooled draws that `BankDetector.calibrate` uses.

Results land in `experiments/results/bank_designs/draws.md` and `draws.json`.

Run: OMP_NUM_THREADS=2 .venv/bin/python -m experiments.bank_draws      # about 6 minutes on 2 CPU cores
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from experiments.bank_designs import RESULTS
from experiments.robustness_table import train_config
from neuroprint.adaptive import make_adaptive_attack
from neuroprint.adaptive.cache import cached_attack
from neuroprint.adaptive.views import detector_view
from neuroprint.data import load_dataset
from neuroprint.detectors import make_detector
from neuroprint.detectors.bank import CALIBRATION_DRAWS, BankDetector
from neuroprint.evaluation.metrics import paired_difference_interval
from neuroprint.evaluation.protocol import cached_adversarial_set, load_model
from neuroprint.evaluation.splits import correct_clean, held_out_index, protocol_splits
from neuroprint.io import git_commit, versions, write_json

SEED, N_FIT, N_ATTACK, STEPS, FPR = 0, 2000, 100, 500, 0.05
BUDGETS = (0.2, 0.3)
DRAWS = 200  # secure draws per image
REPEATS = 20  # calibrations of the secure bank per way of calibrating
CACHE = Path("runs/cache")


@torch.no_grad()
def draw_matrix(bank: BankDetector, x: torch.Tensor, draws: int) -> torch.Tensor:
    """`[N, draws]` secure-draw scores of images `x` (one forward pass, `draws` draws of the fingerprints)."""
    logits, feats = bank.activations(x)
    return torch.stack([bank.score_activations(logits, feats) for _ in range(draws)], dim=1)


@torch.no_grad()
def fingerprint_correlation(bank: BankDetector, x: torch.Tensor, min_images: int = 5) -> float:
    """Mean pairwise Pearson correlation, across images `x` predicted as the same class, of single fingerprints'
    scores (every fingerprint of that class's bank), averaged over the classes with at least `min_images` images."""
    logits, feats = bank.activations(x)
    pred = logits.argmax(1)
    means = []
    for c in pred.unique():
        rows = pred == c
        size = int(bank.bank_sizes_[c])
        if int(rows.sum()) < min_images:
            continue
        scores, _ = bank.fingerprint_scores(pred[rows], feats[rows], torch.arange(size).expand(int(rows.sum()), size))
        scores = scores[:, scores.std(0) > 0]  # a fingerprint constant on these images has no correlation
        z = (scores - scores.mean(0)) / scores.std(0)
        corr = z.T @ z / (len(z) - 1)
        means.append(float((corr.sum() - corr.diagonal().sum()) / (len(corr) * (len(corr) - 1))))
    return sum(means) / len(means) if means else float("nan")


def two_draw_correlation(scores: torch.Tensor) -> float:
    """Mean Pearson correlation across images of two independent draws (columns of `scores` `[N, J]`, paired)."""
    a, b = scores[:, 0::2], scores[:, 1::2]
    a, b = (a - a.mean(0)) / a.std(0), (b - b.mean(0)) / b.std(0)
    return float((a * b).sum(0).div(len(scores) - 1).mean())


def main() -> None:
    data = load_dataset("mnist")
    classifier, model_dir = load_model("mnist-net", data, train_config(4, 0), CACHE, "cpu", True, print)
    splits = protocol_splits(classifier, data, N_FIT, 2 * N_ATTACK, SEED)
    sources = correct_clean(classifier, data.val, held_out_index(len(data.val), N_FIT, SEED))
    sources = sources.subset(torch.arange(N_ATTACK))
    fit_adv, _ = cached_adversarial_set(classifier, Path(model_dir).name, "pgd", data.val, "val", splits.val_adv_index,
                                        CACHE, 500, True)
    x_fit_adv = fit_adv.x_adv[fit_adv.success]
    secure = make_detector("bank:sampling=secure").fit(classifier, splits.val_clean.x, splits.val_clean.y, x_fit_adv)
    secure.calibrate(splits.val_calib.x, fpr=FPR)
    every = make_detector("bank:sampling=all").fit(classifier, splits.val_clean.x, splits.val_clean.y, x_fit_adv)
    every.calibrate(splits.val_calib.x, fpr=FPR)
    clean = splits.val_calib.x
    calibration = {"single draw": [], f"{CALIBRATION_DRAWS} draws": []}
    for _ in range(REPEATS):  # the threshold's spread over calibrations: one draw per image vs what calibrate pools
        with torch.no_grad():
            single, pooled = secure.score(clean), secure.calibration_scores(clean)
        for name, scores in zip(calibration, (single, pooled), strict=True):
            calibration[name].append(float(torch.quantile(scores.double(), 1 - FPR)))
    clean_draws = draw_matrix(secure, clean, DRAWS)
    record: dict = {"seed": SEED, "steps": STEPS, "draws": DRAWS, "versions": versions(), "git": git_commit(),
                    "thresholds": {"secure": secure.threshold_, "all": every.threshold_},
                    "calibration": {name: {"mean": float(torch.tensor(t).mean()), "std": float(torch.tensor(t).std())}
                                    for name, t in calibration.items()},
                    "clean": {"images": len(clean), "draw_std_median": float(clean_draws.std(1).median()),
                              "image_std": float(clean_draws.mean(1).std()),
                              "two_draw_correlation": two_draw_correlation(clean_draws),
                              "fingerprint_correlation": fingerprint_correlation(secure, clean)},
                    "fit_attack": {"fingerprint_correlation": fingerprint_correlation(secure, x_fit_adv)},
                    "budgets": {}}
    view = detector_view(secure)
    for eps in BUDGETS:
        attack = make_adaptive_attack("joint", norm="linf", eps=eps, steps=STEPS, random_state=SEED)
        key = hashlib.sha256(f"bank-draws {model_dir} {eps} {STEPS} {secure.threshold_:.9g}".encode()).hexdigest()[:16]
        result, _ = cached_attack(attack, classifier, view, sources, key, CACHE / "robustness", 100, True)
        x = result.x_adv[result.fooled]
        adv_draws = draw_matrix(secure, x, DRAWS)
        passes_draw = (adv_draws <= secure.threshold_).double().mean(1)  # per image, the share of draws passing
        passes_all = every.score(x) <= every.threshold_
        n = len(sources)
        per_image_draw, per_image_all = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        per_image_draw[result.fooled], per_image_all[result.fooled] = passes_draw, passes_all.double()
        gap, low, high = paired_difference_interval(per_image_draw.numpy(), per_image_all.numpy())
        record["budgets"][f"linf:{eps}"] = {
            "fooled": len(x), "sr_secure": float(passes_draw.sum()) / n, "sr_all": float(passes_all.sum()) / n,
            "draw_std_median": float(adv_draws.std(1).median()), "image_std": float(adv_draws.mean(1).std()),
            "two_draw_correlation": two_draw_correlation(adv_draws),
            "fingerprint_correlation": fingerprint_correlation(secure, x),
            "draw_decides": float(((passes_draw > 0) & (passes_draw < 1)).double().sum()) / n,
            "draw_lets_through": float(passes_draw[~passes_all].sum()) / n,
            "draw_stops": float((1 - passes_draw[passes_all]).sum()) / n, "gap": gap, "gap_interval": [low, high]}
        print(f"linf {eps}: {record['budgets'][f'linf:{eps}']}")
    write_json(RESULTS / "draws.json", record)
    (RESULTS / "draws.md").write_text(table(record) + "\n")
    print(table(record))


def table(record: dict) -> str:
    """The Markdown table of `record` (module docstring: what each row means)."""
    budgets = record["budgets"]
    head = "| | clean (calibration images) | " + " | ".join(f"attacked, {b}" for b in budgets) + " |"
    rows = [head, "|---|---|" + "---|" * len(budgets)]

    def row(label: str, key: str, clean: str, fmt: str = "{:.2f}") -> None:
        rows.append(f"| {label} | {clean} | " + " | ".join(fmt.format(v[key]) for v in budgets.values()) + " |")

    c = record["clean"]
    row("images", "fooled", str(c["images"]), "{}")
    row("std of the drawn score over draws (median over images)", "draw_std_median", f"{c['draw_std_median']:.2f}")
    row("std across images of the mean drawn score", "image_std", f"{c['image_std']:.2f}")
    row("correlation across images of two draws", "two_draw_correlation", f"{c['two_draw_correlation']:.2f}")
    row("mean pairwise correlation of fingerprints", "fingerprint_correlation",
        f"{c['fingerprint_correlation']:.2f} (fit attack: {record['fit_attack']['fingerprint_correlation']:.2f})")
    row("SR@5%FPR, secure draw (%)", "sr_secure", "–", "{:.1%}")
    row("SR@5%FPR, every fingerprint (%)", "sr_all", "–", "{:.1%}")
    row("draw decides (% of attacked images)", "draw_decides", "–", "{:.0%}")
    row("stopped by the whole bank, let through by a draw (%)", "draw_lets_through", "–", "{:.1%}")
    row("let through by the whole bank, stopped by a draw (%)", "draw_stops", "–", "{:.1%}")
    rows.append("| secure minus every fingerprint, points (95% paired bootstrap interval) | – | " + " | ".join(
        f"{100 * v['gap']:+.1f} [{100 * v['gap_interval'][0]:+.1f}, {100 * v['gap_interval'][1]:+.1f}]"
        for v in budgets.values()) + " |")
    rows += ["", f"Threshold of the secure bank over {REPEATS} calibrations on the same clean images:", "",
             "| calibration | mean | std |", "|---|---|---|"]
    rows += [f"| {name} | {v['mean']:.3f} | {v['std']:.3f} |" for name, v in record["calibration"].items()]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
