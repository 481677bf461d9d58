"""KD+BU: kernel density and Bayesian uncertainty (Feinman et al. 2017, arXiv 1703.00410).

"Detecting Adversarial Samples from Artifacts". Adversarial inputs land off the data manifold of their predicted
class, so a kernel density estimate of the last hidden layer's features, over the training points of that class,
is low; and the model is less certain about them, which Monte-Carlo dropout measures. A logistic regression on
both flags adversarial inputs.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from neuroprint.checks import check_float, check_int
from neuroprint.detectors.base import Detector
from neuroprint.detectors.logistic import LogisticHead
from neuroprint.detectors.training_cache import training_activations
from neuroprint.errors import ConfigError, InputError
from neuroprint.features import pool
from neuroprint.models.classifier import Classifier
from neuroprint.registry import DETECTORS

_CHUNK = 256  # images per forward pass


@DETECTORS.register("kdbu")
class KDBUDetector(Detector):
    """KD+BU detector (Feinman et al. 2017, "Detecting Adversarial Samples from Artifacts", arXiv 1703.00410).

    Features `z` `[D]`: the output of `layer` (default: the classifier's second-to-last feature layer, the last
    hidden layer; average-pooled if it is a conv map), which must be the input of the final layer (the classifier's
    last feature layer, whose output is the logits): this is checked at fit time.

    KD: with `c` the class the classifier predicts for the input, ``log KD(x) = log((1/N_c) sum_j
    exp(-||z - z_j||^2 / (2 h^2)))`` over the N_c training images of (true) class `c`, bandwidth `h` =
    `bandwidth` (the paper's MNIST value 1.20; CIFAR-10 0.26, SVHN 1.00). The log is taken (the reference uses the
    density itself, which underflows in 256 dimensions; the head standardises either way) and the Gaussian's
    normalising constant, the same for every class, is dropped.

    BU by a dropout variant: our zoo nets have no dropout and a detector never retrains the model, so dropout with
    rate `dropout` (0.5) is applied to `z`, the input of the final layer, at inference, with `mc_samples` (T = 50)
    masks drawn once at fit time (seeded, stored with the detector: scores are deterministic and reloads identical).
    ``BU(x) = (1/T) sum_t ||p_t||^2 - ||(1/T) sum_t p_t||^2``, with p_t the softmax of the final layer on the
    t-th masked `z` (the paper's Eq. 4; the reference's MC dropout drops every dropout layer of its net).

    A logistic regression (`LogisticHead`, C by `cv_folds`-fold cross-validation) on (log KD, BU), fitted on the
    clean and adversarial *fit* images only (the reference code fits on the test set and adds noisy negatives:
    neither is done here), gives the score, its logit: **higher = more adversarial**.

    Needs the classifier's training data (`set_training_data`); its features are stored with the detector
    (50,000 x 256 floats, 51 MB, for MNIST). Input `x` `[N, C, H, W]`, pixels in the classifier's bounds; `score`
    returns `[N]` float32, differentiable with respect to `x` except through the predicted class (a constant).

    Example:
        >>> det = KDBUDetector(bandwidth=1.2).set_training_data(x_train, y_train)
        >>> scores = det.fit(clf, x_val, y_val, x_val_adv).score(x_test)  # [N], higher = more adversarial
    """

    name = "kdbu"
    needs_training_data = True

    def __init__(
        self,
        bandwidth: float = 1.20,
        layer: str | None = None,
        dropout: float = 0.5,
        mc_samples: int = 50,
        cv_folds: int = 5,
        random_state: int = 0,
    ) -> None:
        if layer is not None and (not isinstance(layer, str) or not layer):
            raise ConfigError(f"layer must be a layer name or None, got {layer!r}")
        LogisticHead(cv_folds, random_state)  # validates cv_folds
        self.bandwidth = check_float("bandwidth", bandwidth, 0.0, 1e6)
        self.layer = layer
        self.dropout = check_float("dropout", dropout, 0.0, 1.0)
        if self.dropout >= 1.0:
            raise ConfigError(f"dropout must be in (0, 1), got {dropout!r}")
        self.mc_samples = check_int("mc_samples", mc_samples, 2)
        self.cv_folds = cv_folds
        self.random_state = check_int("random_state", random_state, 0)

    # -- fitting ------------------------------------------------------------------------------------------------
    def fit(
        self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None = None
    ) -> KDBUDetector:
        """Learn from clean images `x` `[N, C, H, W]` (labels `y` are not used) and adversarial images `x_adv`."""
        x_adv = self._check_fit_inputs(classifier, x, y, x_adv)
        x_train, y_train = self._training_data()
        self._resolve_layers(classifier, x[:8])
        self.train_features_ = training_activations(classifier, x_train, y_train, [self.layer_])[self.layer_]
        self.train_labels_ = y_train.detach().cpu().long()
        if len(torch.unique(self.train_labels_)) < 2:
            raise InputError("kdbu needs training images of at least two classes")
        generator = torch.Generator().manual_seed(self.random_state)
        keep = torch.rand(self.mc_samples, self.train_features_.shape[1], generator=generator) >= self.dropout
        self.masks_ = keep.float() / (1.0 - self.dropout)
        with torch.no_grad():
            clean, adv = self._stream(classifier, x), self._stream(classifier, x_adv)
        labels = torch.cat([torch.zeros(len(clean)), torch.ones(len(adv))]).long()
        self.head_ = LogisticHead(self.cv_folds, self.random_state).fit(torch.cat([clean, adv]), labels)
        self.classifier_ = classifier
        return self

    def _resolve_layers(self, classifier: Classifier, probe: torch.Tensor) -> None:
        """Set `layer_` and `final_`; raise `ConfigError` unless the final layer maps `layer`'s output to the logits."""
        if len(classifier.layers) < 2:
            raise ConfigError("kdbu needs a classifier with at least two feature layers (a hidden and a final one)")
        final = classifier.layers[-1]
        layer = self.layer if self.layer is not None else classifier.layers[-2]
        if layer == final:
            raise ConfigError(f"layer must be a hidden layer, not the final layer {final!r}")
        modules = dict(classifier.module.named_modules())
        if layer not in modules:
            raise ConfigError(f"unknown layer {layer!r}; valid: {', '.join(classifier.layers[:-1])}")
        with torch.no_grad():
            logits, raw = classifier.layer_outputs(probe.to(classifier.device), [layer])
            if raw[layer].ndim != 2 or not torch.allclose(modules[final](raw[layer]), logits, atol=1e-4, rtol=1e-4):
                raise ConfigError(f"layer {layer!r} must be the [N, D] input of the final layer {final!r}")
        self.layer_, self.final_ = layer, final

    # -- scoring ------------------------------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """`[N, 2]` float32: (log KD, BU) of images `x` `[N, C, H, W]` (differentiable in `x`)."""
        self._check_fitted()
        self.classifier_.check_input(x.detach())
        self.classifier_.eval()
        return torch.cat([self._features(self.classifier_, x[i : i + _CHUNK]) for i in range(0, len(x), _CHUNK)])

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Adversarial score `[N]` (logit; higher = more adversarial) of images `x` `[N, C, H, W]` in [0, 1]."""
        features = self.features(x)  # checks fitted first
        return self.head_(features)

    def _stream(self, classifier: Classifier, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._features(classifier, x[i : i + _CHUNK]) for i in range(0, len(x), _CHUNK)])

    def _features(self, classifier: Classifier, x: torch.Tensor) -> torch.Tensor:
        logits, raw = classifier.layer_outputs(x.to(classifier.device), [self.layer_])
        z = pool(raw[self.layer_], "avg")
        final: nn.Module = dict(classifier.module.named_modules())[self.final_]
        return torch.stack([self._log_density(z, logits.argmax(1)), self._uncertainty(z, final)], 1).float()

    def _log_density(self, z: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """`[B]`: log of the Gaussian KDE (bandwidth h, constant dropped) of `z` `[B, D]` in its predicted class."""
        out = torch.zeros(len(z), dtype=torch.float64, device=z.device)
        for c in torch.unique(predicted).tolist():
            rows = predicted == c
            ref = self.train_features_[self.train_labels_ == c].to(z.device, torch.float64)
            if len(ref) == 0:  # a class without training images: density 0, floored to a very low log density
                out[rows] = -1e6
                continue
            q = z[rows].double()
            sq = (q.pow(2).sum(1, keepdim=True) - 2.0 * q @ ref.T + ref.pow(2).sum(1)).clamp_min(0.0)
            out[rows] = torch.logsumexp(-sq / (2.0 * self.bandwidth**2), dim=1) - math.log(len(ref))
        return out

    def _uncertainty(self, z: torch.Tensor, final: nn.Module) -> torch.Tensor:
        """`[B]`: Monte-Carlo dropout uncertainty of the final layer on `z` `[B, D]` with the stored masks `[T, D]`."""
        masked = z[None] * self.masks_.to(z)[:, None, :]  # [T, B, D]
        probs = torch.softmax(final(masked.flatten(0, 1)).view(len(self.masks_), len(z), -1).double(), dim=2)
        return probs.pow(2).sum(2).mean(0) - probs.mean(0).pow(2).sum(1)

    # -- persistence --------------------------------------------------------------------------------------------
    def state_dict_(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"train_features": self.train_features_, "train_labels": self.train_labels_, "masks": self.masks_}
        tensors.update(self.head_.state_dict())
        return tensors, {"layer": self.layer_, "final": self.final_}

    def load_state_(self, tensors: dict[str, torch.Tensor], extras: dict[str, Any]) -> None:
        missing = [k for k in ("train_features", "train_labels", "masks") if k not in tensors]
        if missing:
            raise InputError(f"saved kdbu state lacks tensors {missing}")
        self.train_features_, self.train_labels_, self.masks_ = (
            tensors["train_features"], tensors["train_labels"], tensors["masks"]
        )
        self.layer_, self.final_ = extras["layer"], extras["final"]
        self.head_ = LogisticHead(self.cv_folds, self.random_state).load_state(tensors)
