"""`jsma`: the Jacobian-based Saliency Map Attack, batched (torchattacks' JSMA loops over single images with one
backward pass per class, and always targets class ``(y + 1) % 10``)."""
from __future__ import annotations

import torch

from neuroprint.attacks.base import Attack, register_attack
from neuroprint.checks import check_choice, check_float, check_seed
from neuroprint.errors import ConfigError
from neuroprint.models.classifier import Classifier

# elements of the [B, F, F] pair scores computed at once: on CPU one 28x28 image (cache-sized, ~3x faster than
# large chunks); on GPUs large chunks keep the device busy
_PAIR_BUDGET = {"cpu": 2**20, "other": 2**26}
JACOBIANS = ("logits", "probabilities")


@register_attack("jsma")
class JSMA(Attack):
    """Jacobian-based Saliency Map Attack, Papernot et al. 2016, "The Limitations of Deep Learning in Adversarial
    Settings" (arXiv 1511.07528), in the form of cleverhans' `jsma_symbolic` used by the LID reference code.

    Each example gets a random target class different from its label. Per iteration, for every pair of pixels
    (p, q) still in the search domain, with alpha = d(Z_t)/dx and beta = d(sum_{j != t} Z_j)/dx summed over the
    pair, the pair with alpha > 0, beta < 0 maximising ``alpha * |beta|`` (signs flipped when theta < 0) is
    changed by `theta` and removed from the domain. Z are the logits (Carlini & Wagner's "JSMA-Z") or the
    softmax probabilities ("JSMA-F": the LID and NeuralFP reference code attack a model that ends in a softmax;
    the probabilities sum to 1, so beta = -alpha and the rule ranks pairs by alpha alone). When no pair meets
    the sign conditions, the pair maximising ``alpha - beta`` is taken. An example stops when it is classified
    as its target, after ``floor(gamma * F / 2)`` iterations (F = C*H*W), or when fewer than two pixels remain
    in its domain. L0 attack: success is reported as untargeted misclassification by the base. Inputs
    `[N, C, H, W]` in the classifier's bounds.

    Args:
        theta: change applied to a chosen pixel, in [-1, 1] and not 0, default 1.0 (pixels go to the upper bound).
        gamma: largest fraction of pixels that may change, in (0, 1], default 0.1.
        jacobian: "logits" (default) or "probabilities": the outputs Z whose input gradients rank the pixel pairs.
        random_state: seed for the target classes (int >= 0), default 0; None uses torch's global generator.

    Example:
        >>> result = JSMA(theta=1.0, gamma=0.1)(classifier, x, y)
    """

    norm = "l0"

    def __init__(self, theta: float = 1.0, gamma: float = 0.1, random_state: int | None = 0,
                 jacobian: str = "logits") -> None:
        theta = check_float("theta", theta, -1.0, 1.0, low_open=False)
        if theta == 0:
            raise ConfigError("theta must be in [-1, 1] and not 0, got 0")
        super().__init__(theta=theta, gamma=check_float("gamma", gamma, 0.0, 1.0), random_state=check_seed(random_state),
                         jacobian=check_choice("jacobian", jacobian, JACOBIANS))

    def _perturb(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        theta = self.params["theta"]
        low, high = classifier.bounds
        n, n_features = len(x), x[0].numel()
        offsets = torch.randint(1, classifier.num_classes, (n,))  # drawn on the CPU: same targets on any device
        target = (y + offsets.to(y.device)) % classifier.num_classes
        adv = x.clone().flatten(1)
        domain = adv < high if theta > 0 else adv > low
        active = torch.arange(n, device=x.device)
        for _ in range(int(self.params["gamma"] * n_features / 2)):
            x_active = adv[active].view(-1, *x.shape[1:]).requires_grad_(True)
            logits = classifier(x_active)
            keep = (logits.argmax(1) != target[active]) & (domain[active].sum(dim=1) >= 2)
            if not keep.any():
                break
            if self.params["jacobian"] == "probabilities":
                probs = logits.softmax(dim=1).gather(1, target[active, None]).sum()
                alpha = torch.autograd.grad(probs, x_active)[0].flatten(1)[keep]
                beta = -alpha
            else:
                grad_target = torch.autograd.grad(logits.gather(1, target[active, None]).sum(), x_active,
                                                  retain_graph=True)[0]
                grad_all = torch.autograd.grad(logits.sum(), x_active)[0]
                alpha, beta = grad_target.flatten(1)[keep], (grad_all - grad_target).flatten(1)[keep]
            active = active[keep]
            p, q = _best_pairs(alpha, beta, domain[active], increase=theta > 0)
            rows = torch.arange(len(active), device=x.device)
            changed = adv[active]
            changed[rows, p] += theta
            changed[rows, q] += theta
            adv[active] = changed.clamp(low, high)
            dom = domain[active]
            dom[rows, p] = False
            dom[rows, q] = False
            domain[active] = dom
        return adv.view_as(x)


def _best_pairs(
    alpha: torch.Tensor, beta: torch.Tensor, domain: torch.Tensor, increase: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices `p`, `q` `[B]` of the most salient pixel pair per row (pixel gradients `[B, F]`, domain `[B, F]`)."""
    n, f = alpha.shape
    if not increase:  # decreasing pixels: the same rule on negated gradients
        alpha, beta = -alpha, -beta
    chunk = max(1, _PAIR_BUDGET["cpu" if alpha.device.type == "cpu" else "other"] // (f * f))
    best = []
    for s in range(0, n, chunk):
        d = domain[s : s + chunk]
        valid = d[:, :, None] & d[:, None, :]
        valid.diagonal(dim1=1, dim2=2).fill_(False)
        a = alpha[s : s + chunk, :, None] + alpha[s : s + chunk, None, :]
        b = beta[s : s + chunk, :, None] + beta[s : s + chunk, None, :]
        meets = valid & (a > 0) & (b < 0)
        score = (a * b).neg_().masked_fill_(~meets, -torch.inf)  # alpha * |beta| where the signs are right
        lacking = ~meets.flatten(1).any(dim=1)
        if bool(lacking.any()):
            score[lacking] = (a[lacking] - b[lacking]).masked_fill_(~valid[lacking], -torch.inf)
        best.append(score.flatten(1).argmax(dim=1))
    flat = torch.cat(best)
    return flat // f, flat % f
