"""Joint attack: fool the classifier and the detector with one loss and a per-image weight search.

Carlini & Wagner, "Adversarial Examples Are Not Easily Detected: Bypassing Ten Detection Methods" (AISec 2017,
arXiv 1705.07263): descend

    L(x') = max(z_y(x') - max_{j != y} z_j(x'), -kappa) + c * loss(x')

where z are the logits and `loss` is the view's differentiable stand-in for the detector's score (higher = more
adversarial). The weight c is searched per image inside one run instead of by restarting: every
`steps / search_rounds` steps an image that was misclassified during the round but never evaded gets c x 10 (the
detector term was too weak), one that was never misclassified gets c / 10. The base keeps the first iterate that
is misclassified *and* below the defender's threshold (as the attacker's view estimates it).

Example:
    >>> result = JointAttack(norm="linf", eps=0.3, steps=200)(classifier, detector_view(detector), x, y)
"""
from __future__ import annotations

from typing import Any

import torch

from neuroprint.adaptive.base import AdaptiveAttack, clean_margin
from neuroprint.adaptive.views import DetectorView
from neuroprint.checks import check_float, check_int
from neuroprint.models.classifier import Classifier
from neuroprint.registry import ADAPTIVE_ATTACKS

C_RANGE = (1e-4, 1e4)


@ADAPTIVE_ATTACKS.register("joint")
class JointAttack(AdaptiveAttack):
    """Joint margin + c * detector loss (module docstring). Extra args: `c` first weight (default 1), `kappa` >= 0
    margin cap in logits (default 0), `search_rounds` >= 1 (default 4); base args: norm, eps, steps, restarts,
    step_size, random_state."""

    name = "joint"

    def __init__(self, c: float = 1.0, kappa: float = 0.0, search_rounds: int = 4, **base: Any) -> None:
        super().__init__(**base)
        self.params.update(c=check_float("c", c, *C_RANGE, low_open=False),
                           kappa=check_float("kappa", kappa, 0.0, 1e3, low_open=False),
                           search_rounds=check_int("search_rounds", search_rounds))

    def prepare(self, classifier: Classifier, view: DetectorView, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        n = len(x)
        return {"c": torch.full((n,), self.params["c"], device=x.device),
                "was_wrong": torch.zeros(n, dtype=torch.bool, device=x.device),
                "step": torch.zeros(n, dtype=torch.long, device=x.device)}

    def direction(self, classifier: Classifier, view: DetectorView, adv: torch.Tensor, y: torch.Tensor,
                  state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        adv = adv.clone().requires_grad_(True)
        out = view(adv)
        margin = clean_margin(out.logits, y).clamp_min(-self.params["kappa"])
        total = margin + state["c"] * out.loss.to(margin.device)
        (grad,) = torch.autograd.grad(total.sum(), adv)
        wrong = out.logits.detach().argmax(1) != y
        round_length = max(self.params["steps"] // self.params["search_rounds"], 1)
        state["step"] += 1
        state["was_wrong"] |= wrong
        end = state["step"] % round_length == 0
        factor = torch.where(state["was_wrong"], 10.0, 0.1)
        state["c"][:] = torch.where(end, state["c"] * factor, state["c"]).clamp(*C_RANGE)
        state["was_wrong"][end] = False
        return grad, out.logits.detach(), out.check.to(margin.device)
