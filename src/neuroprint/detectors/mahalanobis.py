"""Mahalanobis: class-conditional Gaussians on deep features (Lee et al. 2018, arXiv 1807.03888).

"A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks" (NeurIPS 2018).
Every layer's average-pooled features are modelled as Gaussians with one mean per class and one shared (tied)
covariance; the confidence score is the largest negative Mahalanobis distance to a class mean, after a small input
pre-processing step, and a logistic regression on the per-layer scores flags adversarial inputs.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from sklearn.metrics import roc_auc_score

from neuroprint.checks import check_layers
from neuroprint.detectors.base import Detector, FeatureSpec, resolve_layers
from neuroprint.detectors.logistic import LogisticHead
from neuroprint.errors import ConfigError, InputError
from neuroprint.features import Features, activations, extract
from neuroprint.models.classifier import Classifier
from neuroprint.registry import DETECTORS

NOISE_GRID = (0.0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01)  # the paper's list of noise magnitudes
_CHUNK = 256  # images per forward pass


def tied_gaussian(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class means and the shared covariance of `features` `[N, D]` with integer `labels` `[N]`.

    Returns `(classes [C], means [C, D], covariance [D, D])` in float64 for the C classes present; the covariance is
    the maximum-likelihood one, (1/N) sum_i (f_i - mu_{y_i})(f_i - mu_{y_i})^T (Lee et al. 2018, Eq. 1).
    """
    f = features.detach().double().cpu()
    labels = labels.cpu()
    classes = torch.unique(labels)
    means = torch.stack([f[labels == c].mean(0) for c in classes])
    centred = f - means[torch.searchsorted(classes, labels)]
    return classes, means, centred.T @ centred / len(f)


def class_distances(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distances `[N, C]`: (f - mu_c)^T Sigma^-1 (f - mu_c). Differentiable in `features`."""
    diff = features[:, None, :] - means[None].to(features)  # [N, C, D]
    return torch.einsum("ncd,de,nce->nc", diff, precision.to(features), diff)


@DETECTORS.register("mahalanobis")
class MahalanobisDetector(Detector):
    """Mahalanobis detector (Lee et al. 2018, "A Simple Unified Framework for Detecting Out-of-Distribution Samples
    and Adversarial Attacks", arXiv 1807.03888).

    Per layer in `layers` (default: the classifier's `layers`; conv maps average-pooled over space), the confidence
    score is M(x) = max_c -(f(x) - mu_c)^T Sigma^-1 (f(x) - mu_c), with class means mu_c and one tied covariance
    Sigma (inverted by pseudo-inverse) estimated on clean fit images and their labels `y`. Before scoring a layer,
    the input is pre-processed to raise that layer's confidence: x' = clip(x - eps * sign(grad_x min_c dist_c(x))),
    eps in pixel units. A logistic regression on the per-layer scores (clean = 0, adversarial = 1) gives the score,
    its logit: **higher = more adversarial** (it learns that low confidence means adversarial).

    Fit protocol (leak-free): a seeded share `stats_fraction` of the clean fit images estimates the Gaussians, and
    the rest (with their adversarial versions) trains the head, so the head never sees in-sample distances, which
    are smaller than those of unseen images. When `x_adv` has as many rows as `x`, row i of `x_adv` is taken to be
    the attack on `x[i]`, and only the attacks on head images train the head (for unpaired sets of equal length this
    merely subsamples them). The noise magnitude eps is chosen from `noise_magnitudes` (default the paper's grid) by
    the AUC of a head (C = 1) fitted on a seeded share `1 - validation_fraction` of the head images and evaluated on
    the rest (ties go to the smaller eps); the final head (C chosen by cross-validation) is fitted on all head
    images. Note: the stats images score as less adversarial than unseen clean images, so calibrate the threshold on
    clean images not used in `fit`.

    Input `x` `[N, C, H, W]`, pixels in the classifier's bounds ([0, 1]); `score` returns `[N]` float32. It is
    differentiable with respect to `x` except through the pre-processing direction sign(grad), which is treated
    as a constant (its derivative is zero almost everywhere).

    Features: with `noise_magnitudes=[0.0]` (no pre-processing) `feature_spec` is `(layers, "avg")` and
    `fit_features` / `score_features` work on shared activations; with pre-processing it is None (the detector
    needs gradients with respect to the images).

    Example:
        >>> det = MahalanobisDetector().fit(clf, x_val, y_val, x_val_adv)
        >>> scores = det.score(x_test)  # [N], higher = more adversarial
    """

    name = "mahalanobis"

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        noise_magnitudes: Sequence[float] = NOISE_GRID,
        stats_fraction: float = 0.5,
        validation_fraction: float = 0.3,
        cv_folds: int = 5,
        random_state: int = 0,
    ) -> None:
        layers = check_layers(layers)
        if isinstance(noise_magnitudes, str) or len(noise_magnitudes) == 0 or min(noise_magnitudes) < 0:
            raise ConfigError(f"noise_magnitudes must be a non-empty list of values >= 0, got {noise_magnitudes!r}")
        for param, value in (("stats_fraction", stats_fraction), ("validation_fraction", validation_fraction)):
            if not 0.0 < value < 1.0:
                raise ConfigError(f"{param} must be in (0, 1), got {value}")
        LogisticHead(cv_folds, random_state)  # validates cv_folds
        self.layers = layers
        self.noise_magnitudes = [float(e) for e in noise_magnitudes]
        self.stats_fraction = stats_fraction
        self.validation_fraction = validation_fraction
        self.cv_folds = cv_folds
        self.random_state = random_state

    @property
    def feature_spec(self) -> FeatureSpec | None:
        if any(e > 0 for e in self.noise_magnitudes):
            return None
        return FeatureSpec(None if self.layers is None else tuple(self.layers), "avg")

    # -- fitting ------------------------------------------------------------------------------------------------
    def fit(
        self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None = None
    ) -> MahalanobisDetector:
        """Learn from clean images `x` `[N, C, H, W]`, their labels `y` `[N]` and adversarial images `x_adv`."""
        x_adv = self._check_fit_inputs(classifier, x, y, x_adv)
        layers = resolve_layers(self.layers, classifier)
        stats, head_clean, head_adv = self._split(len(x), len(x_adv))
        self._fit_gaussians(dict(extract(classifier, x[stats], layers, "avg", _CHUNK)), y[stats], layers)
        with torch.no_grad():  # the pre-processing gradient turns autograd back on for itself
            clean = self._noisy_confidences(classifier, x[head_clean])  # [E, n, L]
            adv = self._noisy_confidences(classifier, x_adv[head_adv])
        return self._fit_head(classifier, clean, adv)

    def fit_features(
        self, classifier: Classifier, features: Features, y: torch.Tensor, features_adv: Features
    ) -> MahalanobisDetector:
        """`fit` on average-pooled activations (only without pre-processing: `noise_magnitudes=[0.0]`)."""
        if self.feature_spec is None:
            raise ConfigError(f"noise_magnitudes must be [0.0] to fit mahalanobis on features, got {self.noise_magnitudes}")
        layers = resolve_layers(self.layers, classifier)
        self._check_feature_pair(features, features_adv, layers)
        if not isinstance(y, torch.Tensor) or y.shape != (len(features),) or y.is_floating_point():
            raise InputError(f"y must be integer labels of shape [{len(features)}], got {getattr(y, 'shape', y)}")
        stats, head_clean, head_adv = self._split(len(features), len(features_adv))
        self._fit_gaussians({layer: features[layer][stats] for layer in layers}, y[stats], layers)
        e = len(self.noise_magnitudes)
        clean = self._confidences({layer: features[layer][head_clean] for layer in layers}).expand(e, -1, -1)
        adv = self._confidences({layer: features_adv[layer][head_adv] for layer in layers}).expand(e, -1, -1)
        return self._fit_head(classifier, clean, adv)

    def _split(self, n_clean: int, n_adv: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Seeded (stats, head clean, head adversarial) index sets; paired sets share the split."""
        n_stats = round(self.stats_fraction * n_clean)
        if n_stats < 2 or n_clean - n_stats < 2:
            raise InputError(f"mahalanobis needs more clean images to split by stats_fraction, got {n_clean}")
        generator = torch.Generator().manual_seed(self.random_state)
        order = torch.randperm(n_clean, generator=generator)
        stats, head = order[:n_stats].sort().values, order[n_stats:].sort().values
        return stats, head, head if n_adv == n_clean else torch.arange(n_adv)

    def _fit_gaussians(self, acts: Mapping[str, torch.Tensor], y: torch.Tensor, layers: tuple[str, ...]) -> None:
        self.layers_ = layers
        self.means_: dict[str, torch.Tensor] = {}
        self.precision_: dict[str, torch.Tensor] = {}
        for layer in layers:
            classes, means, covariance = tied_gaussian(acts[layer], y)
            self.classes_ = classes
            self.means_[layer] = means.float()
            self.precision_[layer] = torch.linalg.pinv(covariance, hermitian=True).float()

    def _fit_head(self, classifier: Classifier, clean: torch.Tensor, adv: torch.Tensor) -> MahalanobisDetector:
        """Choose eps by validation AUC, then fit the head on all head images; `clean`/`adv` are `[E, n, L]`."""
        n_clean, n_adv = clean.shape[1], adv.shape[1]
        labels = torch.cat([torch.zeros(n_clean), torch.ones(n_adv)]).long()
        magnitudes = self.noise_magnitudes
        self.noise_auc_: dict[float, float] = {}
        if len(magnitudes) > 1:
            generator = torch.Generator().manual_seed(self.random_state + 1)
            val_clean = torch.randperm(n_clean, generator=generator)[: max(1, int(self.validation_fraction * n_clean))]
            if n_adv == n_clean:  # paired: an image and its attack fall on the same side
                val_adv = val_clean
            else:
                val_adv = torch.randperm(n_adv, generator=generator)[: max(1, int(self.validation_fraction * n_adv))]
            is_val = torch.zeros(n_clean + n_adv, dtype=torch.bool)
            is_val[val_clean] = True
            is_val[n_clean + val_adv] = True
            for eps, c, a in zip(magnitudes, clean, adv):
                feats = torch.cat([c, a])
                head = LogisticHead(cv_folds=0).fit(feats[~is_val], labels[~is_val])  # C = 1: fast and adequate
                val_scores = head(feats[is_val]).detach().cpu().numpy()
                self.noise_auc_[eps] = float(roc_auc_score(labels[is_val].numpy(), val_scores))
        best = max(range(len(magnitudes)), key=lambda i: self.noise_auc_.get(magnitudes[i], 0.0))
        self.noise_ = magnitudes[best]
        feats = torch.cat([clean[best], adv[best]])
        self.head_ = LogisticHead(self.cv_folds, self.random_state).fit(feats, labels)
        self.classifier_ = classifier
        return self

    # -- scoring ------------------------------------------------------------------------------------------------
    def confidences(self, x: torch.Tensor) -> torch.Tensor:
        """Per-layer confidence scores `[N, L]` of images `x` after pre-processing with the chosen `noise_`."""
        self._check_fitted()
        self.classifier_.check_input(x.detach())
        return self._noisy_confidences(self.classifier_, x, [self.noise_])[0]

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Adversarial score `[N]` (logit; higher = more adversarial) of images `x` `[N, C, H, W]` in [0, 1]."""
        confidences = self.confidences(x)
        return self.head_(confidences)

    def score_features(self, features: Features) -> torch.Tensor:
        """`score` from average-pooled activations (only for a detector fitted without pre-processing)."""
        self._check_fitted()
        if self.noise_ > 0:
            raise ConfigError(f"this mahalanobis detector pre-processes images (noise {self.noise_}): use score(x)")
        self._check_features(features, self.layers_, "features")
        return self.head_(self._confidences(features))

    def _confidences(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """`[N, L]`: max_c -(f - mu_c)^T Sigma^-1 (f - mu_c) per layer of activations `{layer: [N, D]}`."""
        columns = []
        for layer in self.layers_:
            if acts[layer].shape[1] != self.means_[layer].shape[1]:
                raise InputError(f"layer {layer!r} has {acts[layer].shape[1]} features, fitted {self.means_[layer].shape[1]}")
            columns.append(-class_distances(acts[layer], self.means_[layer], self.precision_[layer]).min(1).values)
        return torch.stack(columns, dim=1)

    def _noisy_confidences(
        self, classifier: Classifier, x: torch.Tensor, magnitudes: Sequence[float] | None = None
    ) -> torch.Tensor:
        """`[E, N, L]` confidences of `x` pre-processed with each noise magnitude (default `noise_magnitudes`)."""
        magnitudes = self.noise_magnitudes if magnitudes is None else magnitudes
        classifier.eval()
        chunks = []
        for start in range(0, len(x), _CHUNK):
            xb = x[start : start + _CHUNK]
            per_eps: list[list[torch.Tensor]] = [[] for _ in magnitudes]
            if all(e == 0 for e in magnitudes):
                _, acts = activations(classifier, xb, self.layers_, "avg")
                chunks.append(self._confidences(acts).expand(len(magnitudes), -1, -1))
                continue
            for layer in self.layers_:
                direction = self._distance_gradient_sign(classifier, xb, layer)  # x - eps * direction: closer
                for i, eps in enumerate(magnitudes):
                    x_pre = (xb - eps * direction).clamp(*classifier.bounds) if eps > 0 else xb
                    _, acts = activations(classifier, x_pre, [layer], "avg")
                    dist = class_distances(acts[layer], self.means_[layer], self.precision_[layer])
                    per_eps[i].append(-dist.min(1).values)
            chunks.append(torch.stack([torch.stack(p, 1) for p in per_eps]))
        return torch.cat(chunks, dim=1)

    def _distance_gradient_sign(self, classifier: Classifier, x: torch.Tensor, layer: str) -> torch.Tensor:
        """sign(grad_x of the distance to the closest class mean at `layer`), as a constant (no graph)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            _, acts = activations(classifier, xg, [layer], "avg")
            dist = class_distances(acts[layer], self.means_[layer], self.precision_[layer])
            (grad,) = torch.autograd.grad(dist.min(1).values.sum(), xg)
        return grad.sign()

    # -- persistence --------------------------------------------------------------------------------------------
    def state_dict_(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"classes": self.classes_}
        for i, layer in enumerate(self.layers_):
            tensors[f"means.{i}"] = self.means_[layer]
            tensors[f"precision.{i}"] = self.precision_[layer]
        tensors.update(self.head_.state_dict())
        extras = {"layers": list(self.layers_), "noise": self.noise_, "noise_auc": list(self.noise_auc_.items())}
        return tensors, extras

    def load_state_(self, tensors: dict[str, torch.Tensor], extras: dict[str, Any]) -> None:
        self.layers_ = tuple(extras["layers"])
        needed = ["classes"] + [f"{kind}.{i}" for i in range(len(self.layers_)) for kind in ("means", "precision")]
        missing = [key for key in needed if key not in tensors]
        if missing:
            raise InputError(f"saved mahalanobis state lacks tensors {missing}")
        self.classes_ = tensors["classes"]
        self.means_ = {layer: tensors[f"means.{i}"] for i, layer in enumerate(self.layers_)}
        self.precision_ = {layer: tensors[f"precision.{i}"] for i, layer in enumerate(self.layers_)}
        self.noise_ = float(extras["noise"])
        self.noise_auc_ = {float(e): float(a) for e, a in extras["noise_auc"]}
        self.head_ = LogisticHead(self.cv_folds, self.random_state).load_state(tensors)
