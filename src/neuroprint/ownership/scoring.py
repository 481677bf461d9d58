"""Scoring an ownership experiment's suspects (Lukas et al. 2021, arXiv 1912.00888, section 6): ROC AUC of CAEAcc,
counted surrogates (positives) against counted references (negatives), overall and per removal family."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

FROM_SCRATCH = ("retrain", "ground-truth")  # removals whose surrogates are trained from scratch on source labels
FAMILIES = {"modification": ("ftll", "ftal", "rtll", "rtal", "prune"), "extraction": FROM_SCRATCH,
            "adversarial training": ("adv-train",)}


@dataclass
class SuspectResult:
    """One unseen suspect: surrogate (a removal attack's output) or reference, with accuracy and CAEAcc per method."""

    name: str
    kind: str  # "surrogate" or "reference"
    attack: str  # the removal attack's registry name ("" for references)
    test_accuracy: float
    counts: bool  # within max_accuracy_drop of the source's accuracy (a model that lost it removes nothing)
    cae_acc: dict[str, float]
    seconds: float


def counted(suspects: list[SuspectResult]) -> list[SuspectResult]:
    """The suspects that kept the accuracy bar (the only ones that enter AUCs and verdicts)."""
    return [s for s in suspects if s.counts]


def family_auc(suspects: list[SuspectResult], method: str) -> dict[str, float]:
    """ROC AUC of CAEAcc per removal family (`FAMILIES`): that family's counted surrogates against the references."""
    return {family: suspects_auc([s for s in suspects if s.kind == "reference" or s.attack in attacks], method)
            for family, attacks in FAMILIES.items()}


def suspects_auc(suspects: list[SuspectResult], method: str) -> float:
    """ROC AUC of CAEAcc for counted surrogates (positive) against counted references (negative)."""
    kept = counted(suspects)
    labels = [s.kind == "surrogate" for s in kept]
    if all(labels) or not any(labels):
        return float("nan")
    return float(roc_auc_score(labels, [s.cae_acc[method] for s in kept]))


def auc_against_references(suspect: SuspectResult, suspects: list[SuspectResult], method: str) -> float:
    """AUC of one surrogate against the counted references: the share with lower CAEAcc (ties count half)."""
    refs = np.array([s.cae_acc[method] for s in counted(suspects) if s.kind == "reference"])
    value = suspect.cae_acc[method]
    return float(((refs < value).sum() + 0.5 * (refs == value).sum()) / max(len(refs), 1))
