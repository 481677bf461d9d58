"""Scoring an ownership experiment's suspects (Lukas et al. 2021, arXiv 1912.00888, section 6): ROC AUC of CAEAcc,
counted surrogates (positives) against counted references (negatives), overall and per removal family."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

FROM_SCRATCH = ("retrain", "ground-truth")  # removals whose surrogates are trained from scratch on source labels
#: removal family -> the attacks in it (registry names), and what the attacker sees of the source
FAMILIES = {"modification": ("ftll", "ftal", "rtll", "rtal", "prune"), "extraction": FROM_SCRATCH,
            "adversarial training": ("adv-train",), "distillation": ("distill",), "Jacobian augmentation": ("jacobian",),
            "Knockoff Nets": ("knockoff",), "transfer learning": ("transfer",)}


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
    agreement: float | None = None  # share of clean test images it labels as the source does
    queries: int | None = None  # images its removal attack sent to the source's API (None: held the weights)


def counted(suspects: list[SuspectResult]) -> list[SuspectResult]:
    """The suspects that kept the accuracy bar (the only ones that enter AUCs and verdicts)."""
    return [s for s in suspects if s.counts]


def family_auc(suspects: list[SuspectResult], method: str) -> dict[str, float]:
    """ROC AUC of CAEAcc per removal family (`FAMILIES`) that has surrogates: that family's counted surrogates
    against the references."""
    return {family: suspects_auc([s for s in suspects if s.kind == "reference" or s.attack in attacks], method)
            for family, attacks in FAMILIES.items() if any(s.attack in attacks for s in suspects)}


def family_summary(suspects: list[SuspectResult], method: str) -> list[dict[str, object]]:
    """Per family with surrogates, and for the references: how many suspects (counted), their mean CAEAcc and mean
    agreement with the source on clean data, and the family's AUC; so a reader sees why a family is, or is not,
    separable (a family that agrees with the source no more than the references do leaves CAEAcc nothing to see)."""
    groups = {family: [s for s in suspects if s.attack in attacks] for family, attacks in FAMILIES.items()}
    groups = {"references": [s for s in suspects if s.kind == "reference"],
              **{family: members for family, members in groups.items() if members}}
    aucs = family_auc(suspects, method)
    rows: list[dict[str, object]] = []
    for family, members in groups.items():
        kept = counted(members)
        agreements = [s.agreement for s in kept if s.agreement is not None]
        rows.append({"family": family, "n": len(members), "counted": len(kept),
                     "cae_acc": float(np.mean([s.cae_acc[method] for s in kept])) if kept else float("nan"),
                     "agreement": float(np.mean(agreements)) if agreements else float("nan"),
                     "auc": aucs.get(family, float("nan"))})
    return rows


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
