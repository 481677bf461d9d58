"""`AdaptiveAttack`: what every detector-aware attack shares, so that each attack writes only its step direction.

One interface for all of them: ``attack(classifier, view, x, y) -> AdaptiveResult``, with the norm (`"linf"` or
`"l2"`) and budget `eps` (pixel units of [0, 1] images) as constructor parameters and the detector and its
threshold inside the `DetectorView` (`neuroprint.adaptive.views`). The base runs projected gradient steps
(sign steps for L-inf, normalised gradient steps for L2, Madry et al., arXiv 1706.06083) with a cosine-decayed
step size from `step_size * eps`, `restarts` random restarts (the first starts at the clean image), and keeps for
each image the best iterate: the first one the classifier misclassifies *and* the view's check passes (then the
image stops: later steps and restarts skip it), else the misclassified iterate with the lowest check, else the
last iterate. It records the share of images evading after every step (`curve`), so a reader can see whether the
attack had converged.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from neuroprint.adaptive.views import DetectorView
from neuroprint.attacks.base import check_labels
from neuroprint.checks import check_choice, check_float, check_int, check_seed
from neuroprint.distributed import SINGLE, Ranks, batch_seed
from neuroprint.errors import ConfigError, InputError
from neuroprint.models.classifier import Classifier, input_gradients_only

NORMS = ("linf", "l2")


@dataclass
class AdaptiveResult:
    """The outcome of an adaptive attack on `N` images (CPU tensors).

    Attributes:
        x_adv: `[N, C, H, W]` the best iterate per image, inside the budget and the classifier's bounds.
        fooled: `[N]` bool, the classifier misclassifies `x_adv`.
        evades: `[N]` bool, fooled and the attacker's check of the detector passed (judge the defender separately).
        curve: share of images evading after each step (restarts appended), for convergence plots.
        image_steps: gradient evaluations summed over images (an image that evades stops taking steps), the
            unit of the attack's cost.
    """

    x_adv: torch.Tensor
    fooled: torch.Tensor
    evades: torch.Tensor
    curve: list[float] = field(default_factory=list)
    image_steps: int = 0


def clean_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`[N]` z_y - max_{j != y} z_j of logits `[N, K]`: positive while the classifier is right (Carlini & Wagner)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -math.inf).amax(1)
    return true - other


class AdaptiveAttack(ABC):
    """Base of the detector-aware attacks (module docstring). Subclasses implement `direction` (and may `prepare`).

    Args:
        norm: "linf" or "l2". eps: the budget in pixel units of [0, 1] images, in (0, 1] for L-inf; for L2 at most
            the distance between an all-black and an all-white image (28 for MNIST).
        steps: gradient steps per restart (>= 1). restarts: >= 1. step_size: first step as a share of eps, in
        (0, 1]. random_state: seeds the random restarts.
    """

    name: ClassVar[str] = "adaptive"
    #: detectors this attack applies to (registered names); empty: every detector
    applies_to: ClassVar[tuple[str, ...]] = ()

    def __init__(self, norm: str = "linf", eps: float = 0.3, steps: int = 200, restarts: int = 1,
                 step_size: float = 0.25, random_state: int | None = 0) -> None:
        norm = check_choice("norm", norm, NORMS)
        eps = check_float("eps", eps, 0.0, 1.0 if norm == "linf" else math.inf)
        self.params: dict[str, Any] = {
            "norm": norm, "eps": eps, "steps": check_int("steps", steps), "restarts": check_int("restarts", restarts),
            "step_size": check_float("step_size", step_size, 0.0, 1.0), "random_state": check_seed(random_state),
        }

    def prepare(self, classifier: Classifier, view: DetectorView, x: torch.Tensor, y: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """Per-image state `{name: [B, ...]}` for `direction` (e.g. guide activations), made at the start of every
        restart; default none."""
        return {}

    @abstractmethod
    def direction(self, classifier: Classifier, view: DetectorView, adv: torch.Tensor, y: torch.Tensor,
                  state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """At iterates `adv` `[B, C, H, W]` (labels `y` `[B]`): the gradient `[B, C, H, W]` of the loss the attack
        minimises, the logits `[B, K]` and the view's check `[B]`, all without graph. Per-image tensors in `state`
        arrive sliced to the `B` active images; a direction that updates them in place keeps the update."""

    def __call__(self, classifier: Classifier, view: DetectorView, x: torch.Tensor, y: torch.Tensor,
                 batch_size: int = 100, progress: bool = False, ranks: Ranks = SINGLE) -> AdaptiveResult:
        """Attack images `x` `[N, C, H, W]` (in the classifier's bounds) with true labels `y` `[N]`. Every batch's
        restarts are seeded by its position in the set, so with `ranks` of a torchrun job (every rank attacks its
        block of batches, every rank gets the gathered whole) the result is the single-process one."""
        self._check_applies(view)
        classifier.check_input(x)
        low, high = classifier.bounds
        largest = math.sqrt(x[0].numel()) * (high - low)  # L2 distance between an all-low and an all-high image
        if self.params["norm"] == "l2" and self.params["eps"] > largest:
            raise ConfigError(f"l2 eps {self.params['eps']} exceeds the largest L2 distance between two images of "
                              f"this shape ({largest:.1f}); valid: (0, {largest:.1f}]")
        y = check_labels(y, len(x), classifier.num_classes)
        was_training = classifier.training
        classifier.eval()
        parts: list[AdaptiveResult] = []
        seed = self.params["random_state"]
        try:
            with input_gradients_only(classifier), torch.enable_grad():
                for number in tqdm(ranks.batches(len(x), batch_size), desc=self.name, unit="batch",
                                   disable=not progress or not ranks.main):
                    start = number * batch_size
                    generator = torch.Generator()
                    if seed is None:
                        generator.seed()
                    else:
                        generator.manual_seed(batch_seed(seed, start))
                    xb = x[start : start + batch_size].to(classifier.device)
                    yb = y[start : start + batch_size].to(classifier.device)
                    parts.append(self._batch(classifier, view, xb, yb, generator))
        finally:
            classifier.train(was_training)
        length = self.params["steps"] * self.params["restarts"]  # every batch records one value per step
        sizes = ranks.gather_rows(torch.tensor([len(p.fooled) for p in parts], dtype=torch.float64))
        curves = ranks.gather_rows(torch.tensor([p.curve for p in parts], dtype=torch.float64).reshape(-1, length))
        image_steps = ranks.gather_rows(torch.tensor([p.image_steps for p in parts], dtype=torch.long))
        curve = (sizes[:, None] / len(x) * curves).sum(0).tolist()
        x_adv, fooled, evades = (ranks.gather_rows(torch.cat([getattr(p, name) for p in parts] or [empty]))
                                 for name, empty in (("x_adv", x[:0]), ("fooled", y[:0].bool()), ("evades", y[:0].bool())))
        return AdaptiveResult(x_adv, fooled, evades, curve, int(image_steps.sum()))

    def _batch(self, classifier: Classifier, view: DetectorView, x: torch.Tensor, y: torch.Tensor,
               generator: torch.Generator) -> AdaptiveResult:
        steps, eps = self.params["steps"], self.params["eps"]
        best = x.clone()
        best_check = torch.full((len(x),), math.inf, device=x.device)
        done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        fooled = torch.zeros_like(done)
        curve: list[float] = []
        image_steps = 0
        for restart in range(self.params["restarts"]):
            state = self.prepare(classifier, view, x, y)  # fresh per restart (e.g. the joint attack's c search)
            adv = x.clone() if restart == 0 else self._project(x, x + self._random_delta(x, generator), classifier)
            for step in range(steps + 1):
                active = (~done).nonzero().flatten()
                if len(active) == 0:
                    curve += [float(done.float().mean())] * (steps - max(step - 1, 0))
                    break
                sub = {k: v[active] for k, v in state.items()}
                grad, logits, check = self.direction(classifier, view, adv[active], y[active], sub)
                for k, v in sub.items():  # directions may update per-image state in place
                    state[k][active] = v
                wrong = logits.argmax(1) != y[active]
                evading = wrong & view.evades(check)
                better = wrong & (check < best_check[active])
                rows = active[better | evading]
                best[rows] = adv[rows]
                best_check[active[better]] = check[better]
                fooled[active[wrong]] = True
                done[active[evading]] = True
                if step > 0:
                    curve.append(float(done.float().mean()))
                if step == steps:
                    break
                image_steps += len(active)
                rate = self.params["step_size"] * eps * 0.5 * (1 + math.cos(math.pi * step / steps))
                moved = adv[active] - rate * self._normalise(grad)
                adv[active] = self._project(x[active], moved, classifier)
        never = ~fooled  # never misclassified: keep the last iterate (as far as the attack got)
        best[never] = adv[never]
        with torch.no_grad():
            final_wrong = classifier(best).argmax(1) != y
        return AdaptiveResult(best.cpu(), final_wrong.cpu(), (done & final_wrong).cpu(), curve, image_steps)

    def _check_applies(self, view: DetectorView) -> None:
        if not isinstance(view, DetectorView):
            raise InputError(f"view must be a DetectorView (neuroprint.adaptive.detector_view), got {type(view).__name__}")
        if self.applies_to and view.detector.name not in self.applies_to:
            raise ConfigError(f"attack {self.name!r} applies to {', '.join(self.applies_to)} only, not {view.detector.name!r}")

    def _normalise(self, grad: torch.Tensor) -> torch.Tensor:
        if self.params["norm"] == "linf":
            return grad.sign()
        norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        return grad / norms.view(-1, *[1] * (grad.dim() - 1))

    def _random_delta(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        eps, ones = self.params["eps"], [1] * (x.dim() - 1)
        if self.params["norm"] == "linf":
            return eps * (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device)
        direction = torch.randn(x.shape, generator=generator)
        radius = eps * torch.rand(len(x), generator=generator).view(-1, *ones)
        return (radius * direction / direction.flatten(1).norm(dim=1).view(-1, *ones)).to(x.device)

    def _project(self, x: torch.Tensor, adv: torch.Tensor, classifier: Classifier) -> torch.Tensor:
        eps, delta = self.params["eps"], adv - x
        if self.params["norm"] == "linf":
            delta = delta.clamp(-eps, eps)
        else:
            norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta = delta * (eps / norms).clamp(max=1.0).view(-1, *[1] * (x.dim() - 1))
        return (x + delta).clamp(*classifier.bounds).detach()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params.items())})"
