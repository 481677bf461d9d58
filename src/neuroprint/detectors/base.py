"""`Detector`: the interface every adversarial-input detector implements, with calibration and save/load.

Contract (scikit-learn style): the constructor only stores hyperparameters; `fit` learns attributes ending in `_`;
`score(x)` returns `[N]` floats, **higher = more adversarial**; `calibrate` picks `threshold_` from clean data only.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file

from neuroprint.errors import ConfigError, InputError, NotFittedError
from neuroprint.io import atomic_path, read_json, versions, write_json
from neuroprint.models.classifier import Classifier
from neuroprint.registry import DETECTORS

FORMAT_VERSION = 1


class Detector:
    """Base class. Subclasses set `name`, implement `fit`/`score`, and `state_dict_`/`load_state_` for saving."""

    name: ClassVar[str] = ""

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments, read back from the attributes of the same name."""
        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters if p != "self"}

    # -- learning ---------------------------------------------------------------------------------------------
    def fit(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None = None) -> "Detector":
        """Learn from clean images `x` `[N, C, H, W]` with labels `y` `[N]` and adversarial images `x_adv`."""
        raise NotImplementedError

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Adversarial score `[N]` of images `x` (higher = more adversarial)."""
        raise NotImplementedError

    def calibrate(self, x_clean: torch.Tensor, fpr: float = 0.05) -> "Detector":
        """Set `threshold_` so that a share `fpr` of the clean images `x_clean` is flagged."""
        if not 0.0 < fpr < 1.0:
            raise ConfigError(f"fpr must be in (0, 1), got {fpr}")
        scores = self.score(x_clean).detach().double()
        self.threshold_ = float(torch.quantile(scores, 1.0 - fpr))
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Bool `[N]`: True where `x` is flagged as adversarial (score above `threshold_`)."""
        if getattr(self, "threshold_", None) is None:
            raise NotFittedError(f"{self.name} has no threshold: call calibrate(x_clean) first")
        return self.score(x).detach() > self.threshold_

    # -- helpers for subclasses ----------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if getattr(self, "classifier_", None) is None:
            raise NotFittedError(f"{self.name} detector is not fitted: call fit(...) first")

    def _check_fit_inputs(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None) -> None:
        classifier.check_input(x, "x")
        if y.shape != (len(x),):
            raise InputError(f"y must have shape [{len(x)}] to match x, got {list(y.shape)}")
        if x_adv is None:
            raise InputError(f"{self.name} needs adversarial examples: pass x_adv")
        classifier.check_input(x_adv, "x_adv")
        if x_adv.shape[1:] != x.shape[1:]:
            raise InputError(f"x_adv images have shape {list(x_adv.shape[1:])}, x has {list(x.shape[1:])}")

    # -- persistence -------------------------------------------------------------------------------------------
    def state_dict_(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Fitted state: (tensors, JSON-serialisable extras). Subclasses extend."""
        return {}, {}

    def load_state_(self, tensors: dict[str, torch.Tensor], extras: dict[str, Any]) -> None:
        """Inverse of `state_dict_`."""

    def save(self, directory: str | Path) -> None:
        """Write `config.json` + `state.safetensors` into `directory`, atomically (never a pickle)."""
        self._check_fitted()
        tensors, extras = self.state_dict_()
        config = {
            "name": self.name,
            "params": self.get_params(),
            "threshold": getattr(self, "threshold_", None),
            "extras": extras,
            "format_version": FORMAT_VERSION,
            "versions": versions(),
        }
        with atomic_path(directory, directory=True) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
            write_json(tmp / "config.json", config)

    @staticmethod
    def load(directory: str | Path, classifier: Classifier) -> "Detector":
        """Rebuild a saved detector for `classifier` (the model it was fitted on)."""
        directory = Path(directory)
        config = read_json(directory / "config.json")
        if config.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{directory}: unsupported detector format {config.get('format_version')!r}")
        state = directory / "state.safetensors"
        if not state.is_file():
            raise InputError(f"expected detector weights at {state}, but the file does not exist")
        try:
            tensors = load_file(str(state))
        except Exception as exc:  # safetensors raises several types on corrupt files
            raise InputError(f"{state} is corrupt ({exc})") from None
        detector: Detector = DETECTORS.create(config["name"], **config["params"])
        detector.classifier_ = classifier
        detector.load_state_(tensors, config["extras"])
        detector.threshold_ = config.get("threshold")
        return detector
