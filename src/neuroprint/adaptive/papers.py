"""The papers' own adaptive attacks under the common interface, judged inside the common budget.

- `neuralfp-cw`: Adaptive-CW-L2 of the NeuralFP paper (Dathathri et al., arXiv 1803.03870, eq. 29;
  `neuroprint.adaptive.neuralfp_cw`), aimed at the defender's threshold from the view.
- `cw-opt`: CW-Opt of the NNIF paper (Cohen et al., arXiv 1909.06872, eq. 2-3; `neuroprint.adaptive.cw_opt`).

Both minimise the L2 perturbation with no budget of their own; their output is projected onto the attack's budget
(L-inf or L2 ball) before it is judged, so a figure at a budget counts only perturbations inside it. As that output
does not depend on the budget, `store_inner` lets one run of the paper's attack serve every budget.
"""
from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from neuroprint.adaptive.base import AdaptiveAttack, AdaptiveResult
from neuroprint.adaptive.cw_opt import CWOpt
from neuroprint.adaptive.neuralfp_cw import AdaptiveCWNeuralFP
from neuroprint.adaptive.views import DetectorView
from neuroprint.attacks.base import Attack
from neuroprint.checks import check_float, check_int
from neuroprint.detectors.nnif import NNIFDetector
from neuroprint.distributed import SINGLE, Ranks
from neuroprint.errors import ConfigError
from neuroprint.io import atomic_path
from neuroprint.models.classifier import Classifier
from neuroprint.registry import ADAPTIVE_ATTACKS


class PaperAttack(AdaptiveAttack):
    """Runs `inner(view)` (a plain `Attack` with its own optimiser, so `restarts` and `step_size` do not apply),
    projects onto the budget and judges the result with the view."""

    inner_path: Path | None = None  # where `store_inner` keeps the paper's attack's output; None: not kept

    @abstractmethod
    def inner(self, view: DetectorView) -> Attack:
        """The paper's attack, built for the detector behind `view`."""

    def direction(self, classifier: Classifier, view: DetectorView, adv: torch.Tensor, y: torch.Tensor,
                  state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Not used: the paper's own optimiser replaces the base's gradient steps (`__call__`)."""
        raise NotImplementedError

    def store_inner(self, path: Path) -> None:
        """Keep the paper's attack's output (before projection, so independent of the budget) in `path`
        (safetensors) and reuse it from there when present; the caller's path must name everything else that
        determines it (model, detector and threshold, images, the attack's other params)."""
        self.inner_path = Path(path)

    def __call__(self, classifier: Classifier, view: DetectorView, x: torch.Tensor, y: torch.Tensor,
                 batch_size: int = 100, progress: bool = False, ranks: Ranks = SINGLE) -> AdaptiveResult:
        self._check_applies(view)
        unprojected, image_steps = self._inner_output(classifier, view, x, y, batch_size, progress, ranks)
        adv = self._project(x, unprojected, classifier)
        with torch.no_grad():
            out = view(adv)
        fooled = out.logits.argmax(1).cpu() != y
        return AdaptiveResult(adv, fooled, fooled & view.evades(out.check).cpu(), [], image_steps)

    def _inner_output(self, classifier: Classifier, view: DetectorView, x: torch.Tensor, y: torch.Tensor,
                      batch_size: int, progress: bool, ranks: Ranks) -> tuple[torch.Tensor, int]:
        """The paper's attack's images `[N, C, H, W]` and the image-steps it took here (0 when stored)."""
        path = self.inner_path
        if path is not None and ranks.agree(path.is_file()):
            stored = load_file(str(path))["x_adv"]
            if stored.shape == x.shape:
                return stored, 0
        result = self.inner(view)(classifier, x, y, batch_size=batch_size, progress=progress, ranks=ranks)
        if path is not None and ranks.main:
            with atomic_path(path) as tmp:
                save_file({"x_adv": result.x_adv.contiguous()}, str(tmp))
        return result.x_adv, len(x) * self.params["steps"] * self.params.get("search_steps", 1)


@ADAPTIVE_ATTACKS.register("neuralfp-cw")
class NeuralFPCW(PaperAttack):
    """Adaptive-CW-L2 against NeuralFP: `steps` Adam steps per bisection round over `search_steps` rounds."""

    name = "neuralfp-cw"
    applies_to = ("neuralfp",)

    def __init__(self, search_steps: int = 4, **base: Any) -> None:
        super().__init__(**{"steps": 100, **base})
        self.params["search_steps"] = check_int("search_steps", search_steps)

    def inner(self, view: DetectorView) -> Attack:
        return AdaptiveCWNeuralFP(threshold=view.threshold, steps=self.params["steps"],
                                  search_steps=self.params["search_steps"], random_state=self.params["random_state"])


@ADAPTIVE_ATTACKS.register("cw-opt")
class CWOptAttack(PaperAttack):
    """CW-Opt against NNIF: `steps` Adam steps of size `lr` (default 0.05) with weight `c` (default 1) and
    helpful-point weight `beta` (default 1e-4: with the paper's beta = 1 the distance term dominates and the attack
    never fools mnist-net)."""

    name = "cw-opt"
    applies_to = ("nnif",)

    def __init__(self, c: float = 1.0, beta: float = 1e-4, lr: float = 0.05, **base: Any) -> None:
        super().__init__(**base)
        self.params.update(c=check_float("c", c, 0.0, 1e6), beta=check_float("beta", beta, 0.0, 1e6, low_open=False),
                           lr=check_float("lr", lr, 0.0, 10.0))

    def inner(self, view: DetectorView) -> Attack:
        if not isinstance(view.detector, NNIFDetector):
            raise ConfigError(f"cw-opt needs an NNIF detector, got {type(view.detector).__name__}")
        return CWOpt(view.detector, c=self.params["c"], steps=self.params["steps"], lr=self.params["lr"],
                     beta=self.params["beta"])
