"""Detection metrics: pure functions of clean and adversarial scores (higher score = more adversarial)."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import bootstrap, mannwhitneyu
from sklearn.metrics import roc_auc_score, roc_curve

from neuroprint.errors import InputError


def _as_scores(clean: ArrayLike, adv: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    c, a = np.asarray(clean, dtype=np.float64).ravel(), np.asarray(adv, dtype=np.float64).ravel()
    if c.size == 0 or a.size == 0:
        raise InputError(f"metrics need clean and adversarial scores, got {c.size} clean and {a.size} adversarial")
    if not (np.isfinite(c).all() and np.isfinite(a).all()):
        raise InputError("scores contain NaN or infinite values")
    return c, a


def auc(clean: ArrayLike, adv: ArrayLike) -> float:
    """Area under the ROC curve of adversarial (positive) vs clean (negative) scores, in [0, 1]."""
    c, a = _as_scores(clean, adv)
    labels = np.r_[np.zeros(c.size), np.ones(a.size)]
    return float(roc_auc_score(labels, np.r_[c, a]))


def auc_interval(clean: ArrayLike, adv: ArrayLike, level: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval (low, high) of `auc`, resampling the clean and the adversarial
    scores independently; it tells whether two detectors' AUCs (or ours and a paper's) differ beyond sampling noise.
    """
    c, a = _as_scores(clean, adv)
    if not 0.0 < level < 1.0:
        raise InputError(f"confidence level must lie in (0, 1), got {level}")
    if n_resamples < 1:
        raise InputError(f"n_resamples must be >= 1, got {n_resamples}")

    def statistic(clean_draw: np.ndarray, adv_draw: np.ndarray, axis: int) -> np.ndarray:
        u = mannwhitneyu(adv_draw, clean_draw, axis=axis, method="asymptotic").statistic
        return u / (clean_draw.shape[axis] * adv_draw.shape[axis])

    result = bootstrap((c, a), statistic, vectorized=True, paired=False, confidence_level=level,
                       n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def tpr_at_fpr(clean: ArrayLike, adv: ArrayLike, fpr: float = 0.05) -> float:
    """Share of adversarial scores above the threshold that flags a share `fpr` of the clean scores."""
    c, a = _as_scores(clean, adv)
    threshold = np.quantile(c, 1.0 - fpr)
    return float((a > threshold).mean())


def fpr_at_tpr(clean: ArrayLike, adv: ArrayLike, tpr: float = 0.95) -> float:
    """Share of clean scores flagged at the highest threshold that still flags a share `tpr` of adversarial ones."""
    c, a = _as_scores(clean, adv)
    threshold = np.quantile(a, 1.0 - tpr)
    return float((c >= threshold).mean())


def detection_accuracy(clean: ArrayLike, adv: ArrayLike, threshold: float) -> float:
    """Balanced accuracy ((TNR + TPR) / 2) at a threshold chosen beforehand (on clean validation data)."""
    c, a = _as_scores(clean, adv)
    return float(((c <= threshold).mean() + (a > threshold).mean()) / 2.0)


def roc(clean: ArrayLike, adv: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) of the ROC curve."""
    c, a = _as_scores(clean, adv)
    fprs, tprs, _ = roc_curve(np.r_[np.zeros(c.size), np.ones(a.size)], np.r_[c, a])
    return fprs, tprs


def success_rate_at_threshold(fooled: ArrayLike, flagged: ArrayLike) -> float:
    """SR@FPR (Bryniarski et al., ICLR 2022, arXiv 2106.15023): the share of attacked images `[N]` that the
    classifier misclassifies (`fooled`) and the detector does not flag at its threshold (`flagged`, the threshold
    set at the chosen FPR on clean validation images), in [0, 1]; lower = a stronger defence."""
    f, d = np.asarray(fooled, dtype=bool).ravel(), np.asarray(flagged, dtype=bool).ravel()
    if f.size == 0 or f.shape != d.shape:
        raise InputError(f"fooled and flagged must be non-empty and of equal length, got {f.size} and {d.size}")
    return float((f & ~d).mean())



def paired_difference_interval(a: ArrayLike, b: ArrayLike, level: float = 0.95, n_resamples: int = 5000,
                               seed: int = 0) -> tuple[float, float, float]:
    """Mean of `a - b` over paired per-image values `[N]` (e.g. two designs' probabilities that the same attacked
    image gets through) and its percentile-bootstrap confidence interval at `level`, resampling images (scipy's
    `bootstrap` with `paired=True`). Returns (difference, low, high); an interval that excludes 0 says the two
    differ on this sample."""
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.size < 2 or x.shape != y.shape:
        raise InputError(f"paired values need at least 2 images each and equal lengths, got {x.size} and {y.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InputError("paired values contain NaN or infinite values")
    if not 0.0 < level < 1.0:
        raise InputError(f"confidence level must lie in (0, 1), got {level}")
    if np.array_equal(x - y, np.full_like(x, x[0] - y[0])):  # every image differs alike: no spread to resample
        return float(x[0] - y[0]), float(x[0] - y[0]), float(x[0] - y[0])
    ci = bootstrap((x, y), lambda u, v, axis=-1: (u - v).mean(axis=axis), paired=True, vectorized=True,
                   confidence_level=level, n_resamples=n_resamples, method="percentile",
                   rng=np.random.default_rng(seed)).confidence_interval
    return float((x - y).mean()), float(ci.low), float(ci.high)
