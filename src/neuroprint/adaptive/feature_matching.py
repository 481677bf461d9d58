"""Feature matching: make the layers a detector reads look like those of a natural image of another class.

Sabour, Cao, Faghri & Fleet, "Adversarial Manipulation of Deep Representations" (ICLR 2016, arXiv 1511.05122), as
Tramer, Carlini, Brendel & Madry use it against detectors ("On Adaptive Attacks to Adversarial Example Defenses",
NeurIPS 2020, arXiv 2002.08347): for each image x of class y pick a guide g, the clean image of the runner-up class
(the classifier's second choice on x) nearest to x in pixel space among the guides the classifier labels correctly
and the detector lets through (all guides of that class when none does), and descend

    sum_l ||f_l(x') - f_l(g)||^2 / ||f_l(g)||^2

over the classifier's named feature layers f_l (raw outputs) and its logits, inside the budget. A detector that
reads those layers then sees the guide's natural activations. No detector gradient is needed; the detector
enters through the choice of iterate. The guides are clean images the attacker holds (`set_guides`; the
robustness runner gives clean validation images, never test images).

Example:
    >>> attack = FeatureMatching(norm="linf", eps=0.3).set_guides(x_val, y_val)
    >>> result = attack(classifier, detector_view(detector), x, y)
"""
from __future__ import annotations

from typing import Any

import torch

from neuroprint.adaptive.base import AdaptiveAttack
from neuroprint.adaptive.views import DetectorView
from neuroprint.errors import ConfigError, InputError
from neuroprint.models.classifier import Classifier
from neuroprint.registry import ADAPTIVE_ATTACKS


def representation(classifier: Classifier, x: torch.Tensor) -> list[torch.Tensor]:
    """The classifier's named feature layers (raw outputs, flattened `[N, D_l]`) and its logits `[N, K]`."""
    logits, raw = classifier.layer_outputs(x)
    return [*(t.flatten(1) for t in raw.values()), logits]


@ADAPTIVE_ATTACKS.register("feature-matching")
class FeatureMatching(AdaptiveAttack):
    """Feature matching toward a runner-up-class guide (module docstring); base args as `AdaptiveAttack`."""

    name = "feature-matching"
    guides: tuple[torch.Tensor, torch.Tensor] | None = None
    _usable: tuple[DetectorView, torch.Tensor, torch.Tensor] | None = None  # guides filtered for one view

    def set_guides(self, x: torch.Tensor, y: torch.Tensor) -> FeatureMatching:
        """Clean images `x` `[M, C, H, W]` with labels `y` `[M]` to draw guides from (every class should appear)."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or len(x) == 0 or not isinstance(y, torch.Tensor) \
                or y.shape != (len(x),):
            raise InputError("guides must be a non-empty [M, C, H, W] image tensor and [M] labels")
        self.guides = (x.detach().cpu(), y.detach().cpu())
        self._usable = None
        return self

    def _usable_guides(self, classifier: Classifier, view: DetectorView) -> tuple[torch.Tensor, torch.Tensor]:
        """The guides labelled correctly and passed by the view's check; a class with none keeps all of its own."""
        assert self.guides is not None
        if self._usable is None or self._usable[0] is not view:
            x, y = self.guides
            with torch.no_grad():
                outs = [view(x[i : i + 500].to(classifier.device)) for i in range(0, len(x), 500)]
            pred = torch.cat([o.logits.argmax(1).cpu() for o in outs])
            passed = view.evades(torch.cat([o.check.cpu() for o in outs]))
            keep = (pred == y) & passed
            keep |= ~torch.isin(y, y[keep])  # classes without a usable guide keep all theirs
            self._usable = (view, x[keep], y[keep])
        return self._usable[1], self._usable[2]

    def prepare(self, classifier: Classifier, view: DetectorView, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        if self.guides is None:
            raise ConfigError("feature-matching needs guide images: call set_guides(x_clean, y_clean) first")
        guide_x, guide_y = self._usable_guides(classifier, view)
        with torch.no_grad():
            logits = classifier(x)
            runner_up = logits.scatter(1, y[:, None], -torch.inf).argmax(1).cpu()
            chosen = torch.empty(len(x), dtype=torch.long)
            for c in runner_up.unique().tolist():
                rows, pool = (runner_up == c).nonzero().flatten(), (guide_y == c).nonzero().flatten()
                if len(pool) == 0:
                    raise InputError(f"no guide image of class {c}: give guides of every class")
                dist = torch.cdist(x[rows].flatten(1).cpu(), guide_x[pool].flatten(1))
                chosen[rows] = pool[dist.argmin(1)]
            target = [t.detach() for t in representation(classifier, guide_x[chosen].to(x.device))]
        return {f"target{i}": t for i, t in enumerate(target)}

    def direction(self, classifier: Classifier, view: DetectorView, adv: torch.Tensor, y: torch.Tensor,
                  state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            check = view(adv.detach()).check
        adv = adv.clone().requires_grad_(True)
        layers = representation(classifier, adv)
        loss = sum(((f - state[f"target{i}"]).pow(2).sum(1) / state[f"target{i}"].pow(2).sum(1).clamp_min(1e-12))
                   for i, f in enumerate(layers))
        (grad,) = torch.autograd.grad(loss.sum(), adv)  # type: ignore[union-attr]
        return grad, layers[-1].detach(), check.to(adv.device)
