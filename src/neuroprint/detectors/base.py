"""`Detector`: the interface every adversarial-input detector implements, with calibration and save/load.

Contract (scikit-learn style): the constructor only stores hyperparameters; `fit` learns attributes ending in `_`;
`score(x)` returns `[N]` floats, **higher = more adversarial**; `calibrate` picks `threshold_` from clean data only.

Sharing a forward pass: a detector whose `feature_spec` is not None reads nothing of an image but the activations
that spec describes, so an evaluation harness may run `neuroprint.features.extract(classifier, x, spec.layers,
spec.pooling)` once per split and per distinct spec, and call `fit_features` / `score_features` instead of
`fit` / `score` (same results). A detector whose `feature_spec` is None needs the images themselves.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file

from neuroprint.errors import ConfigError, InputError, NotFittedError
from neuroprint.features import Features, Pooling
from neuroprint.io import atomic_path, read_json, versions, write_json
from neuroprint.models.classifier import Classifier
from neuroprint.registry import DETECTORS

FORMAT_VERSION = 1


@dataclass(frozen=True)
class FeatureSpec:
    """The activations a detector reads: `layers` (None = the classifier's `layers`) pooled with `pooling`."""

    layers: tuple[str, ...] | None
    pooling: Pooling


def resolve_layers(layers: list[str] | None, classifier: Classifier) -> tuple[str, ...]:
    """The feature layers a detector reads: its `layers` hyperparameter, or the classifier's own when None."""
    return tuple(layers) if layers is not None else classifier.layers


class Detector:
    """Base class. Subclasses set `name`, implement `fit`/`score`, and `state_dict_`/`load_state_` for saving."""

    name: ClassVar[str] = ""
    #: True for detectors that model the classifier's training distribution (nearest neighbours, densities,
    #: influence): they must be given it with `set_training_data` before `fit`.
    needs_training_data: ClassVar[bool] = False
    #: False for attack-agnostic detectors (NeuralFP) that fit on clean images alone; `x_adv` is then optional.
    needs_adversarial_examples: ClassVar[bool] = True

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments, read back from the attributes of the same name."""
        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters if p != "self"}

    # -- learning ---------------------------------------------------------------------------------------------
    def fit(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None = None) -> Detector:
        """Learn from clean images `x` `[N, C, H, W]` with labels `y` `[N]` and adversarial images `x_adv`."""
        raise NotImplementedError

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Adversarial score `[N]` of images `x` (higher = more adversarial)."""
        raise NotImplementedError

    def set_training_data(self, x: torch.Tensor, y: torch.Tensor) -> Detector:
        """Hand the classifier's training images `x` `[N, C, H, W]` and labels `y` `[N]` to a detector that
        `needs_training_data`; call it before `fit`. The tensors are kept by reference, not copied."""
        if not self.needs_training_data:
            raise ConfigError(f"{self.name} does not use training data (needs_training_data is False)")
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or len(x) == 0:
            raise InputError(f"training images must be a non-empty [N, C, H, W] tensor, got {getattr(x, 'shape', x)}")
        if not isinstance(y, torch.Tensor) or y.shape != (len(x),) or y.is_floating_point():
            raise InputError(f"training labels must be an integer tensor of shape [{len(x)}], got {getattr(y, 'shape', y)}")
        self.training_data = (x, y)
        return self

    def _training_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The tensors given to `set_training_data`, or an `InputError` that says to call it."""
        data = getattr(self, "training_data", None)
        if data is None:
            raise InputError(f"{self.name} needs the classifier's training data: call set_training_data(x, y) first")
        return data

    @property
    def feature_spec(self) -> FeatureSpec | None:
        """What `fit_features` / `score_features` expect, or None when the detector needs the images."""
        return None

    def fit_features(
        self, classifier: Classifier, features: Features, y: torch.Tensor, features_adv: Features
    ) -> Detector:
        """`fit` on precomputed activations (as described by `feature_spec`) of the clean and adversarial images."""
        raise ConfigError(f"{self.name} cannot be fitted on precomputed features (feature_spec is None)")

    def score_features(self, features: Features) -> torch.Tensor:
        """`score` from precomputed activations (as described by `feature_spec`) of the images."""
        raise ConfigError(f"{self.name} cannot score precomputed features (feature_spec is None)")

    def calibrate(self, x_clean: torch.Tensor, fpr: float = 0.05) -> Detector:
        """Set `threshold_` so that a share `fpr` of the clean images `x_clean` is flagged."""
        _check_fpr(fpr)
        with torch.no_grad():
            return self._set_threshold(self.calibration_scores(x_clean), fpr)

    def calibrate_features(self, features: Features, fpr: float = 0.05) -> Detector:
        """`calibrate` from precomputed activations (as described by `feature_spec`) of clean images."""
        _check_fpr(fpr)
        with torch.no_grad():
            return self._set_threshold(self.calibration_scores_features(features), fpr)

    def calibration_scores(self, x_clean: torch.Tensor) -> torch.Tensor:
        """The clean scores whose (1 - fpr) quantile `calibrate` takes: `score(x_clean)` `[N]`. A detector whose
        score is random per query returns several draws per image instead (`[N * draws]`)."""
        return self.score(x_clean)

    def calibration_scores_features(self, features: Features) -> torch.Tensor:
        """`calibration_scores` from precomputed activations (`feature_spec`) of clean images."""
        return self.score_features(features)

    def _set_threshold(self, clean_scores: torch.Tensor, fpr: float) -> Detector:
        self.threshold_ = float(torch.quantile(clean_scores.double(), 1.0 - fpr))
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Bool `[N]`: True where `x` is flagged as adversarial (score above `threshold_`)."""
        if getattr(self, "threshold_", None) is None:
            raise NotFittedError(f"{self.name} has no threshold: call calibrate(x_clean) first")
        with torch.no_grad():
            return self.score(x) > self.threshold_

    # -- helpers for subclasses ----------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if getattr(self, "classifier_", None) is None:
            raise NotFittedError(f"{self.name} detector is not fitted: call fit(...) first")

    def _check_fit_inputs(
        self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None
    ) -> torch.Tensor:
        """Validate `fit`'s arguments (one-line `InputError`s); returns `x_adv`, now known to be a tensor."""
        self._check_labelled_images(classifier, x, y)
        if x_adv is None:
            raise InputError(f"{self.name} needs adversarial examples: pass x_adv")
        classifier.check_input(x_adv, "x_adv")
        if x_adv.shape[1:] != x.shape[1:]:
            raise InputError(f"x_adv images have shape {list(x_adv.shape[1:])}, x has {list(x.shape[1:])}")
        return x_adv

    @staticmethod
    def _check_labelled_images(classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> None:
        """Raise `InputError` unless `x` are valid images for `classifier` and `y` `[N]` their integer labels."""
        classifier.check_input(x, "x")
        if not isinstance(y, torch.Tensor) or y.shape != (len(x),):
            raise InputError(f"y must be a tensor of shape [{len(x)}] to match x, got {getattr(y, 'shape', y)}")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise InputError(f"y must hold integer class labels, got dtype {y.dtype}")

    def _check_feature_pair(self, features: Features, features_adv: Features, layers: tuple[str, ...]) -> None:
        """`_check_features` on the clean and the adversarial activations `fit_features` was given."""
        self._check_features(features, layers, "features")
        self._check_features(features_adv, layers, "features_adv")

    def _check_features(self, features: Features, layers: tuple[str, ...], name: str) -> None:
        """Raise `InputError` unless `features` holds finite, non-empty `[N, D]` activations of every layer."""
        if not isinstance(features, Features):
            raise InputError(f"{name} must be neuroprint.features.Features, got {type(features).__name__}")
        missing = [layer for layer in layers if layer not in features]
        if missing:
            raise InputError(f"{name} lacks the layer(s) {missing} that {self.name} reads (see feature_spec)")
        for layer in layers:
            t = features[layer]
            if t.ndim != 2 or len(t) == 0 or len(t) != len(features):
                raise InputError(f"{name}[{layer!r}] must be [{len(features)}, D] and non-empty, got {list(t.shape)}")
            if not bool(torch.isfinite(t).all()):
                raise InputError(f"{name}[{layer!r}] contains NaN or infinite values")

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
    def load(directory: str | Path, classifier: Classifier) -> Detector:
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
        except Exception as exc:  # noqa: BLE001  (safetensors raises several types on corrupt files)
            raise InputError(f"{state} is corrupt ({exc})") from None
        detector: Detector = DETECTORS.create(config["name"], **config["params"])
        detector.classifier_ = classifier
        detector.load_state_(tensors, config["extras"])
        detector.threshold_ = config.get("threshold")
        return detector


def _check_fpr(fpr: float) -> None:
    if not 0.0 < fpr < 1.0:
        raise ConfigError(f"fpr must be in (0, 1), got {fpr}")
