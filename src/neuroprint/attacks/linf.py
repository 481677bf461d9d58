"""L-inf gradient-sign attacks backed by torchattacks: `fgsm`, `bim-b`, `pgd`, `mifgsm`.

Defaults follow the MNIST settings of the LID and KD+BU reference code (Ma et al. 2018, arXiv 1801.02613;
Feinman et al. 2017, arXiv 1703.00410): eps 0.3 and step 0.01, in pixel units of images in [0, 1].
Inputs `[N, C, H, W]` in [0, 1]; outputs stay within `eps` of the input (the base projects) and inside [0, 1].
"""
from __future__ import annotations

import torch

from neuroprint.attacks.base import Attack, register_attack
from neuroprint.attacks.torchattacks_adapter import check_unit_bounds, run_torchattacks
from neuroprint.checks import check_bool, check_eps, check_float, check_int, check_seed
from neuroprint.models.classifier import Classifier


class _TorchattacksLinf(Attack):
    """Shared plumbing: the torchattacks class named `_class` is called with every param but `random_state`."""

    _class = ""

    def _check_classifier(self, classifier: Classifier) -> None:
        check_unit_bounds(classifier, self.name)

    def _perturb(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torchattacks

        kwargs = {k: v for k, v in self.params.items() if k != "random_state"}
        return run_torchattacks(getattr(torchattacks, self._class), classifier, x, y, **kwargs)


@register_attack("fgsm")
class FGSM(_TorchattacksLinf):
    """Fast Gradient Sign Method, Goodfellow et al. 2015, "Explaining and Harnessing Adversarial Examples"
    (arXiv 1412.6572): one step ``x + eps * sign(grad_x CE(f(x), y))``.

    Args:
        eps: L-inf budget in (0, 1], default 0.3.

    Example:
        >>> result = FGSM(eps=0.3)(classifier, x, y)
    """

    _class = "FGSM"

    def __init__(self, eps: float = 0.3) -> None:
        super().__init__(eps=check_eps(eps))


@register_attack("bim-b")
class BIMB(_TorchattacksLinf):
    """Basic Iterative Method, variant B (fixed iterations), Kurakin et al. 2017, "Adversarial examples in the
    physical world" (arXiv 1607.02533): `steps` FGSM steps of size `alpha`, each projected onto the eps ball.

    Args:
        eps: L-inf budget in (0, 1], default 0.3.
        alpha: step size in (0, 1], default 0.01.
        steps: number of iterations (>= 1), default 50; all are run (see `bim-a` for the early-stopping variant).
    """

    _class = "BIM"

    def __init__(self, eps: float = 0.3, alpha: float = 0.01, steps: int = 50) -> None:
        super().__init__(eps=check_eps(eps), alpha=check_float("alpha", alpha, 0.0, 1.0), steps=check_int("steps", steps))


@register_attack("pgd")
class PGD(_TorchattacksLinf):
    """Projected Gradient Descent, Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
    Attacks" (arXiv 1706.06083): BIM from a uniformly random start inside the eps ball.

    Args:
        eps: L-inf budget in (0, 1], default 0.3.
        alpha: step size in (0, 1], default 0.01.
        steps: number of iterations (>= 1), default 40.
        random_start: start from a random point of the ball, default True.
        random_state: seed of the random start (int >= 0), default 0; None uses torch's global generator.
    """

    _class = "PGD"

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


@register_attack("mifgsm")
class MIFGSM(_TorchattacksLinf):
    """Momentum Iterative FGSM, Dong et al. 2018, "Boosting Adversarial Attacks with Momentum"
    (arXiv 1710.06081): BIM whose step follows an accumulated, L1-normalised gradient.

    Args:
        eps: L-inf budget in (0, 1], default 0.3.
        alpha: step size in (0, 1], default 0.01.
        steps: number of iterations (>= 1), default 40.
        decay: momentum factor in [0, 10], default 1.0.
    """

    _class = "MIFGSM"

    def __init__(self, eps: float = 0.3, alpha: float = 0.01, steps: int = 40, decay: float = 1.0) -> None:
        super().__init__(
            eps=check_eps(eps),
            alpha=check_float("alpha", alpha, 0.0, 1.0),
            steps=check_int("steps", steps),
            decay=check_float("decay", decay, 0.0, 10.0, low_open=False),
        )
