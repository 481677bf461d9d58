"""Are CEM's examples more conferrable than ordinary adversarial examples? (Lukas et al. 2021, arXiv 1912.00888,
figure 3a): the mean conferrability, on unseen surrogates and references, of the successful examples of CEM,
FGSM, PGD and CW (projected onto the same L-inf ball) per eps.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from neuroprint.attacks import make_attack
from neuroprint.data.base import Split
from neuroprint.errors import InputError
from neuroprint.models.classifier import Classifier
from neuroprint.ownership.cem import CEMConfig, run_cem
from neuroprint.ownership.conferrability import conferrability, predictions
from neuroprint.ownership.scoring import FROM_SCRATCH, SuspectResult

Models = list[Classifier]


def unseen_models(suspects: Sequence[SuspectResult], models: Sequence[Classifier]) -> tuple[Models, Models]:
    """The counted unseen surrogates trained from scratch (`retrain`, `ground-truth`, as in the paper's figure 3a)
    and the counted unseen references, out of the suspects and their models (same order)."""
    surrogates = [m for s, m in zip(suspects, models, strict=True) if s.counts and s.attack in FROM_SCRATCH]
    references = [m for s, m in zip(suspects, models, strict=True) if s.counts and s.kind == "reference"]
    if not surrogates or not references:
        raise InputError("conferrability needs an unseen surrogate trained from scratch and a reference that kept "
                         f"their accuracy; got {len(surrogates)} and {len(references)}")
    return surrogates, references


def compare_conferrability(source: Classifier, pool: Split, local: tuple[Models, Models], unseen: tuple[Models, Models],
                           eps_values: Sequence[float], cem: CEMConfig, progress: bool = False) -> list[dict[str, Any]]:
    """One row per eps and attack: success rate and mean conferrability (on the `unseen` surrogates and references)
    of the successful examples made from `pool`'s correctly classified images; CEM optimises over the `local`
    surrogates and references with `cem`'s settings at that eps."""
    correct = source.predict(pool.x) == pool.y
    x, y = pool.x[correct], pool.y[correct]
    rows = []
    for eps in eps_values:
        runs: dict[str, Callable[[], torch.Tensor]] = {
            "cem": lambda eps=eps: run_cem(source, *local, x, replace(cem, eps=eps), progress),
            "fgsm": lambda eps=eps: make_attack(f"fgsm:eps={eps}")(source, x, y).x_adv,
            "pgd": lambda eps=eps: make_attack(f"pgd:eps={eps},alpha={eps / 10},steps=40")(source, x, y).x_adv,
            "cw": lambda eps=eps: linf_projected(make_attack("cw")(source, x, y).x_adv, x, eps),
        }
        for attack, run in runs.items():
            x_adv = run()
            target = source.predict(x_adv)
            ok = target != y
            score = conferrability(predictions(unseen[0], x_adv[ok]), predictions(unseen[1], x_adv[ok]), target[ok]) \
                if bool(ok.any()) else torch.zeros(0)
            rows.append({"eps": eps, "attack": attack, "success_rate": float(ok.float().mean()), "n": int(ok.sum()),
                         "conferrability": float(score.mean()) if len(score) else float("nan"),
                         "surrogates": len(unseen[0]), "references": len(unseen[1])})
    return rows


def linf_projected(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """CW-L2 is unbounded in L-inf: clip its output to the eps ball, as for the other attacks."""
    return x + (x_adv - x).clamp(-eps, eps)
