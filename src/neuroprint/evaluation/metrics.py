"""Detection metrics: pure functions of clean and adversarial scores (higher score = more adversarial)."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
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
