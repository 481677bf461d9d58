"""`lbfgs`: the box-constrained L-BFGS attack of Szegedy et al., batched over scipy's L-BFGS-B."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import fmin_l_bfgs_b

from neuroprint.attacks.base import Attack, register_attack
from neuroprint.checks import check_float, check_int, check_seed
from neuroprint.models.classifier import Classifier

_TINY = 1e-12  # inside the square root of ||eta||^2, so the objective is differentiable at eta = 0


@register_attack("lbfgs")
class LBFGS(Attack):
    """L-BFGS attack, Szegedy et al. 2014, "Intriguing properties of neural networks" (arXiv 1312.6199), in the
    form used by Carrara et al. 2018, "Adversarial examples detection in features distance spaces" (Eq. 1).

    Each image `x` gets a random target class `t != y` (seeded). For a weight `c`, scipy's L-BFGS-B minimises
    ``||eta||_2 + c * CE(f(x + eta), t)`` over the perturbation, with the pixel box ``low <= x + eta <= high``
    given as bounds (so every iterate is a valid image). The images of a batch are optimised jointly (the
    objective is a sum of independent terms), each with its own `c`. `c` is searched per image for
    `search_steps` rounds, starting at `initial_const`: multiplied by 10 while the target is not reached, then
    bisected between the largest failing and the smallest succeeding value. The result is the successful
    (target-reaching) image of smallest L2 norm over all rounds; an image that never reaches its target is
    returned unchanged (the base then reports it as a failure, unless it happens to be misclassified).
    L2 attack; inputs `[N, C, H, W]` in the classifier's bounds, outputs in bounds.

    Args:
        initial_const: first weight `c` of the loss (> 0), default 1.0.
        search_steps: rounds of the search over `c` (>= 1), default 5.
        max_iter: L-BFGS-B iterations per round (>= 1), default 100.
        random_state: seed for the target classes (int >= 0), default 0; None uses torch's global generator.

    Example:
        >>> result = LBFGS(search_steps=5)(classifier, x, y)
    """

    norm = "l2"

    def __init__(
        self, initial_const: float = 1.0, search_steps: int = 5, max_iter: int = 100, random_state: int | None = 0
    ) -> None:
        super().__init__(
            initial_const=check_float("initial_const", initial_const, 0.0, 1e10),
            search_steps=check_int("search_steps", search_steps),
            max_iter=check_int("max_iter", max_iter),
            random_state=check_seed(random_state),
        )

    def _perturb(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = len(x)
        offsets = torch.randint(1, classifier.num_classes, (n,))  # drawn on the CPU: same targets on any device
        target = (y + offsets.to(y.device)) % classifier.num_classes
        const = torch.full((n,), float(self.params["initial_const"]), dtype=torch.float64)
        lower = torch.zeros(n, dtype=torch.float64)  # largest c known to fail (0: none yet)
        upper = torch.full((n,), float("inf"), dtype=torch.float64)  # smallest c known to succeed
        best = x.clone()
        best_l2 = torch.full((n,), float("inf"), device=x.device)
        for _ in range(self.params["search_steps"]):
            adv = self._minimise(classifier, x, target, const.to(x.device, x.dtype))
            with torch.no_grad():
                hit = (classifier(adv).argmax(1) == target).cpu()
                l2 = (adv - x).flatten(1).norm(dim=1)
            better = hit.to(x.device) & (l2 < best_l2)
            best[better], best_l2[better] = adv[better], l2[better]
            upper = torch.where(hit, torch.minimum(upper, const), upper)
            lower = torch.where(hit, lower, torch.maximum(lower, const))
            const = torch.where(torch.isinf(upper), const * 10.0, (lower + upper) / 2.0)
        return best

    def _minimise(
        self, classifier: Classifier, x: torch.Tensor, target: torch.Tensor, const: torch.Tensor
    ) -> torch.Tensor:
        """One L-BFGS-B run from `x` (eta = 0) with per-image loss weights `const` `[B]`; returns `x + eta`."""
        low, high = classifier.bounds
        x0 = x.detach().cpu().double().flatten().numpy()
        bounds = np.stack([np.full_like(x0, low) - x0, np.full_like(x0, high) - x0], axis=1)  # box on eta

        def objective(eta_flat: np.ndarray) -> tuple[float, np.ndarray]:
            eta = torch.from_numpy(eta_flat).to(x.device, x.dtype).view_as(x).requires_grad_(True)
            norm = (eta.flatten(1).pow(2).sum(1) + _TINY).sqrt()
            loss = F.cross_entropy(classifier(x + eta), target, reduction="none")
            total = (norm + const * loss).sum()
            grad = torch.autograd.grad(total, eta)[0]
            return float(total.detach()), grad.detach().cpu().double().flatten().numpy()

        eta_opt, _, _ = fmin_l_bfgs_b(objective, np.zeros_like(x0), bounds=bounds, maxiter=self.params["max_iter"])
        return (x + torch.from_numpy(eta_opt).to(x.device, x.dtype).view_as(x)).clamp(low, high)
