"""L-inf gradient-sign attacks in plain torch: `fgsm`, `bim-b`, `pgd`, `mifgsm`.

Defaults follow the MNIST settings of the LID and KD+BU reference code (Ma et al. 2018, arXiv 1801.02613;
Feinman et al. 2017, arXiv 1703.00410): eps 0.3 and step 0.01, in pixel units of images in [0, 1].
The steps are those of torchattacks (Kim 2020, arXiv 2010.01950), which backed these attacks before: the
gradient of the batch-mean cross-entropy, sign steps, projection onto the eps ball around the clean image and
clipping to the classifier's pixel bounds after every step, and for PGD a start drawn uniformly from the ball
with ``torch.empty_like(x).uniform_(-eps, eps)``; with the same seed they give torchattacks' results.
Inputs `[N, C, H, W]` in the classifier's bounds; outputs stay within `eps` of the input and inside the
bounds.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from neuroprint.attacks.base import Attack, register_attack
from neuroprint.checks import check_bool, check_eps, check_float, check_int, check_seed
from neuroprint.models.classifier import Classifier


def loss_gradient(classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient `[B, C, H, W]` of the batch-mean cross-entropy ``CE(f(x), y)`` with respect to images `x`."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(classifier(x), y)
    return torch.autograd.grad(loss, x)[0]


def sign_steps(
    classifier: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    start: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    decay: float | None = None,
) -> torch.Tensor:
    """`steps` iterations ``adv <- clip(x + clamp(adv + alpha * sign(g) - x, -eps, eps))`` from `start`.

    `g` is the loss gradient, or with `decay` the momentum of Dong et al.:
    ``g <- grad / mean|grad| + decay * g`` (the mean per image; an all-zero gradient stays zero).
    `clip` is the classifier's pixel bounds.
    """
    low, high = classifier.bounds
    adv = start.detach()
    momentum = torch.zeros_like(x)
    for _ in range(steps):
        grad = loss_gradient(classifier, adv, y)
        if decay is not None:
            scale = grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny)
            momentum = grad / scale + momentum * decay
            grad = momentum
        adv = adv + alpha * grad.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(low, high)
    return adv


@register_attack("fgsm")
class FGSM(Attack):
    """Fast Gradient Sign Method, Goodfellow et al. 2015, "Explaining and Harnessing Adversarial Examples"
    (arXiv 1412.6572): one step ``clip(x + eps * sign(grad_x CE(f(x), y)))``.

    Args:
        eps: L-inf budget in (0, 1], default 0.3.

    Example:
        >>> result = FGSM(eps=0.3)(classifier, x, y)
    """

    def __init__(self, eps: float = 0.3) -> None:
        super().__init__(eps=check_eps(eps))

    def _perturb(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x + self.params["eps"] * loss_gradient(classifier, x, y).sign()).clamp(*classifier.bounds)


@register_attack("bim-b")
class BIMB(Attack):
    """Basic Iterative Method, variant B (fixed iterations), Kurakin et al. 2017, "Adversarial examples in the
    physical world" (arXiv 1607.02533): `steps` FGSM steps of size `alpha` from the clean image, each
    projected onto the eps ball.

    Args:
        eps: L-inf budget in (0, 1], default 0.3.
        alpha: step size in (0, 1], default 0.01.
        steps: number of iterations (>= 1), default 50; all are run (`bim-a` is the early-stopping variant).
    """

    def __init__(self, eps: float = 0.3, alpha: float = 0.01, steps: int = 50) -> None:
        super().__init__(
            eps=check_eps(eps), alpha=check_float("alpha", alpha, 0.0, 1.0), steps=check_int("steps", steps)
        )

    def _perturb(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sign_steps(classifier, x, y, x, self.params["eps"], self.params["alpha"], self.params["steps"])


@register_attack("pgd")
class PGD(Attack):
    """Projected Gradient Descent, Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
    Attacks" (arXiv 1706.06083): BIM from a start drawn uniformly from the eps ball (clipped to the bounds).

    Args:
        eps: L-inf budget in (0, 1], default 0.3.
        alpha: step size in (0, 1], default 0.01.
        steps: number of iterations (>= 1), default 40.
        random_start: start from a random point of the ball, default True.
        random_state: seed of the random start (int >= 0), default 0; None uses torch's global generator.
    """

    def __init__(
        self,
        eps: float = 0.3,
        alpha: float = 0.01,
        steps: int = 40,
        random_start: bool = True,
        random_state: int | None = 0,
    ) -> None:
        super().__init__(
            eps=check_eps(eps),
            alpha=check_float("alpha", alpha, 0.0, 1.0),
            steps=check_int("steps", steps),
            random_start=check_bool("random_start", random_start),
            random_state=check_seed(random_state),
        )

    def _perturb(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps = self.params["eps"]
        start = x
        if self.params["random_start"]:
            start = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(*classifier.bounds)
        return sign_steps(classifier, x, y, start, eps, self.params["alpha"], self.params["steps"])


@register_attack("mifgsm")
class MIFGSM(Attack):
    """Momentum Iterative FGSM, Dong et al. 2018, "Boosting Adversarial Attacks with Momentum"
    (arXiv 1710.06081): BIM whose step follows an accumulated, L1-normalised gradient.

    Args:
        eps: L-inf budget in (0, 1], default 0.3.
        alpha: step size in (0, 1], default 0.01.
        steps: number of iterations (>= 1), default 40.
        decay: momentum factor in [0, 10], default 1.0.
    """

    def __init__(self, eps: float = 0.3, alpha: float = 0.01, steps: int = 40, decay: float = 1.0) -> None:
        super().__init__(
            eps=check_eps(eps),
            alpha=check_float("alpha", alpha, 0.0, 1.0),
            steps=check_int("steps", steps),
            decay=check_float("decay", decay, 0.0, 10.0, low_open=False),
        )

    def _perturb(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sign_steps(classifier, x, y, x, self.params["eps"], self.params["alpha"], self.params["steps"],
                          decay=self.params["decay"])
