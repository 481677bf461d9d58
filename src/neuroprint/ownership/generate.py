"""Query-set generation with CEM (Lukas et al. 2021, arXiv 1912.00888, section 4 "Fingerprinting Algorithms").

CEM runs on correctly classified benign images; an output x' is kept when it is adversarial for the source model
(its label changed) and its conferrability on the defender's local surrogates and references is >= tau. Its target
label is the source model's prediction on x'. The kept examples are then balanced across target classes.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from neuroprint.checks import check_float, check_int
from neuroprint.errors import InputError
from neuroprint.models.classifier import Classifier
from neuroprint.ownership import settings
from neuroprint.ownership.cem import CEMConfig, run_cem
from neuroprint.ownership.conferrability import conferrability, predictions
from neuroprint.ownership.queries import QuerySet, select_balanced


def generate_cem_queries(
    source: Classifier,
    surrogates: Sequence[Classifier],
    references: Sequence[Classifier],
    x: torch.Tensor,
    y: torch.Tensor,
    size: int = settings.SIZE,
    tau: float = settings.TAU,
    config: CEMConfig | None = None,
    progress: bool = True,
) -> QuerySet:
    """A CEM query set of at most `size` inputs from candidate images `x` `[N, C, H, W]` with labels `y` `[N]`.

    Args:
        tau: minimum conferrability on the local models, in [0, 1] (the paper uses 0.85-0.95).
    Raises:
        InputError: no candidate survives the filter (the message gives the counts at each stage).
    """
    config = config or CEMConfig()
    size = check_int("size", size)
    tau = check_float("tau", tau, 0.0, 1.0, low_open=False)
    if y.shape != (len(x),):
        raise InputError(f"y must have shape [{len(x)}] to match x, got {list(y.shape)}")
    correct = source.predict(x) == y
    if not bool(correct.any()):
        raise InputError("the source model misclassifies every candidate image; CEM needs correctly classified ones")
    x0 = x[correct]
    x_adv = run_cem(source, surrogates, references, x0, config, progress)
    target = source.predict(x_adv)
    adversarial = target != y[correct]
    score = conferrability(predictions(surrogates, x_adv), predictions(references, x_adv), target)
    keep = torch.nonzero(adversarial & (score >= tau)).flatten()
    stats: dict[str, Any] = {
        "n_candidates": len(x), "n_correct": len(x0), "n_adversarial": int(adversarial.sum()), "n_passed": len(keep),
        "tau": tau, "cem": config.to_dict(), "eps": config.eps,
        "local_models": {"surrogates": len(surrogates), "references": len(references)},
    }
    if len(keep) == 0:
        raise InputError(f"no CEM example reached conferrability >= {tau} ({stats['n_adversarial']} of {len(x0)} were "
                         f"adversarial); lower tau, raise eps or the number of candidates")
    chosen = keep[select_balanced(target[keep], score[keep], size, source.num_classes)]
    stats["local_conferrability_mean"] = float(score[chosen].mean())
    return QuerySet(x_adv[chosen], target[chosen], "cem", stats)
