"""`bim-a`: the Basic Iterative Method that stops each example at its first misclassification."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from neuroprint.attacks.base import Attack, register_attack
from neuroprint.checks import check_eps, check_float, check_int
from neuroprint.models.classifier import Classifier


@register_attack("bim-a")
class BIMA(Attack):
    """Basic Iterative Method, variant A, Kurakin et al. 2017, "Adversarial examples in the physical world"
    (arXiv 1607.02533), as used by the LID and KD+BU detectors (arXiv 1801.02613, 1703.00410).

    Iterative FGSM ``x <- clip_eps(x + alpha * sign(grad_x CE(f(x), y)))``; each example stops at the first
    iteration at which it is misclassified, so its perturbation is the smallest the iteration reaches
    (torchattacks' BIM has no early stop: that is `bim-b`). Examples still correct after `steps` keep the last
    iterate. Inputs `[N, C, H, W]` in the classifier's bounds; outputs within `eps` (L-inf) and in bounds.

    Args:
        eps: L-inf budget in (0, 1], default 0.3.
        alpha: step size in (0, 1], default 0.01.
        steps: maximum number of iterations (>= 1), default 50.

    Example:
        >>> result = BIMA(eps=0.3, alpha=0.01, steps=50)(classifier, x, y)
    """

    def __init__(self, eps: float = 0.3, alpha: float = 0.01, steps: int = 50) -> None:
        super().__init__(eps=check_eps(eps), alpha=check_float("alpha", alpha, 0.0, 1.0), steps=check_int("steps", steps))

    def _perturb(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps, alpha = self.params["eps"], self.params["alpha"]
        low, high = classifier.bounds
        adv = x.clone()
        active = torch.arange(len(x), device=x.device)
        for _ in range(self.params["steps"]):
            x_active = adv[active].requires_grad_(True)
            logits = classifier(x_active)
            still_correct = logits.argmax(1) == y[active]
            if not still_correct.any():
                break
            # per-example gradients: eval mode makes every row's loss depend on its own input only
            loss = F.cross_entropy(logits, y[active], reduction="sum")
            grad = torch.autograd.grad(loss, x_active)[0]
            active, grad, x_active = active[still_correct], grad[still_correct], x_active.detach()[still_correct]
            stepped = x_active + alpha * grad.sign()
            stepped = torch.minimum(torch.maximum(stepped, x[active] - eps), x[active] + eps).clamp(low, high)
            adv[active] = stepped
        return adv
