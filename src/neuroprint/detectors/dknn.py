"""DkNN: Deep k-Nearest Neighbors (Papernot & McDaniel 2018, arXiv 1803.04765) as an adversarial detector.

The DkNN classifier finds an input's k nearest training points at each feature layer; the nonconformity of a
label j is the number of those neighbours whose label differs from j, summed over layers, and a held-out
calibration set turns it into an empirical p-value per class. Cohen et al. (NNIF, CVPR 2020, arXiv 1909.06872,
Sec. 3) make it a detector: a logistic regression on the p-values, with DkNN on the embedding space only.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np
import torch

from neuroprint.checks import check_bool, check_float, check_layers
from neuroprint.detectors.base import Detector
from neuroprint.detectors.influence import forward_with_embedding
from neuroprint.detectors.logistic import LogisticHead
from neuroprint.detectors.selection import check_grid, paired_groups, select_by_cv
from neuroprint.detectors.training_cache import memoised
from neuroprint.errors import ConfigError, InputError
from neuroprint.features import POOLINGS, Pooling
from neuroprint.models.classifier import Classifier
from neuroprint.registry import DETECTORS

K_GRID = (10, 20, 50, 75, 100, 150, 200)  # candidate k (the paper searches [10, N / classes]; DkNN used 75)
EMBEDDING = "embedding"  # the feature-layer name of the embedding (input of the last linear layer)


def neighbours(
    queries: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels `[N, k]` and L2 distances `[N, k]` of the `k` nearest rows of `reference` `[M, D]` to each query
    `[N, D]` (exact search, faiss `IndexFlatL2`), nearest first."""
    index = faiss.IndexFlatL2(reference.shape[1])
    index.add(np.ascontiguousarray(reference.numpy(), dtype=np.float32))
    squared, nearest = index.search(np.ascontiguousarray(queries.numpy(), dtype=np.float32), k)
    return labels[torch.from_numpy(nearest).long()], torch.from_numpy(squared).clamp_min(0.0).sqrt()


def nonconformity(
    labels: torch.Tensor, k: int, num_classes: int, distances: torch.Tensor | None = None
) -> torch.Tensor:
    """alpha(x, j) `[N, K]`: over layers, the number of the `k` nearest neighbours whose label is not j
    (Papernot & McDaniel 2018, Alg. 1), from neighbour labels `[N, L, k_max]`.

    With neighbour `distances` `[N, L, k_max]`, ties of that integer are broken by the mean distance t to the `k`
    neighbours (over layers), added as t / (1 + t) in [0, 1): the order of unequal counts is unchanged, and among
    equal counts an input far from its neighbours is less conforming.
    """
    counts = torch.nn.functional.one_hot(labels[..., :k], num_classes).sum(2)  # [N, L, K]
    alpha = (k - counts).sum(1).double()
    if distances is None:
        return alpha
    t = distances[..., :k].double().mean((1, 2))
    return alpha + (t / (1.0 + t))[:, None]


def p_values(alpha: torch.Tensor, calibration: torch.Tensor) -> torch.Tensor:
    """Empirical p-values `[N, K]`: the share of calibration nonconformities `[C]` (sorted) >= alpha `[N, K]`."""
    at_least = len(calibration) - torch.searchsorted(calibration, alpha.contiguous(), right=False)
    return at_least.float() / len(calibration)


@DETECTORS.register("dknn")
class DkNNDetector(Detector):
    """DkNN detector (Papernot & McDaniel 2018, "Deep k-Nearest Neighbors", arXiv 1803.04765; as a detector in Cohen
    et al. 2020, arXiv 1909.06872).

    At each feature layer (default: the embedding, i.e. the input of the last linear layer, as in the NNIF paper;
    or the named `layers`, pooled with `pooling`) the k nearest training points are found with faiss (exact L2).
    A seeded `calibration_fraction` of the clean fit images (the paper: 33%) gives the calibration nonconformities
    alpha(x, y) with their true labels; every other input gets an empirical p-value per class. DkNN's integer
    nonconformity ties for most clean inputs (all neighbours agree), which makes a threshold at 5% FPR
    unreachable; with `tie_break=True` (a refinement of ours; False is the paper's DkNN) ties are broken by the
    mean neighbour distance (see `nonconformity`). The features are the
    `num_classes` p-values **sorted in decreasing order** (the first is DkNN's credibility), so the head does not
    depend on which class was predicted. `k` is chosen from `k_grid` (default `K_GRID`) by grouped, stratified
    cross-validated AUC; a logistic regression (`LogisticHead`) on the remaining clean (0) and adversarial (1)
    images gives the score, its logit: **higher = more adversarial**. When `x_adv` is paired with `x` (same length),
    the attacks of calibration images are left out of the head's data.

    Needs the classifier's training data (`set_training_data`); the fitted state keeps its activations and labels.
    Input `x` `[N, C, H, W]` in the classifier's bounds ([0, 1]); `score` returns `[N]` float32, not differentiable.

    Example:
        >>> det = DkNNDetector().set_training_data(x_train, y_train).fit(clf, x_val, y_val, x_val_adv)
        >>> scores = det.score(x_test)  # [N], higher = more adversarial
    """

    name = "dknn"
    needs_training_data = True

    def __init__(
        self,
        k_grid: Sequence[int] | None = None,
        layers: Sequence[str] | None = None,
        pooling: Pooling = "avg",
        calibration_fraction: float = 1 / 3,
        tie_break: bool = True,
        cv_folds: int = 5,
        random_state: int = 0,
    ) -> None:
        layers = check_layers(layers)
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        check_float("calibration_fraction", calibration_fraction, 0.0, 1.0)
        if calibration_fraction >= 1.0:
            raise ConfigError(f"calibration_fraction must be < 1 (the rest fits the head), got {calibration_fraction}")
        if cv_folds < 2:
            raise ConfigError(f"cv_folds must be >= 2 (k is chosen by cross-validation), got {cv_folds}")
        self.k_grid = check_grid("k_grid", k_grid)
        self.layers = layers
        self.pooling = pooling
        self.calibration_fraction = calibration_fraction
        self.tie_break = check_bool("tie_break", tie_break)
        self.cv_folds = cv_folds
        self.random_state = random_state

    # -- fitting ------------------------------------------------------------------------------------------------
    def fit(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None = None) -> DkNNDetector:
        """Learn from clean images `x` `[N, C, H, W]` with true labels `y` `[N]` (for calibration) and `x_adv`."""
        x_adv = self._check_fit_inputs(classifier, x, y, x_adv)
        x_train, y_train = self._training_data()
        grid = self.k_grid if self.k_grid is not None else list(K_GRID)
        if max(grid) > len(x_train):
            raise InputError(f"k_grid reaches k={max(grid)}, more than the {len(x_train)} training points")
        generator = torch.Generator().manual_seed(self.random_state)
        order = torch.randperm(len(x), generator=generator)
        n_cal = round(self.calibration_fraction * len(x))
        calibration, head_clean = order[:n_cal].sort().values, order[n_cal:].sort().values
        head_adv = head_clean if len(x_adv) == len(x) else torch.arange(len(x_adv))
        if n_cal < 1 or min(len(head_clean), len(head_adv)) < self.cv_folds:
            raise InputError(f"dknn needs more clean images to calibrate and fit on, got {len(x)}")
        self.layers_ = (EMBEDDING,) if self.layers is None else tuple(self.layers)
        self.train_acts_ = memoised(
            classifier, x_train, y_train, ("dknn", self.layers_, self.pooling),
            lambda: self._activations(classifier, x_train),
        )
        self.train_labels_ = y_train.long().cpu()
        self.num_classes_ = classifier.num_classes
        k_max = max(grid)
        cal_labels_nn, cal_dists = self._neighbours(self._activations(classifier, x[calibration]), k_max)
        clean = self._neighbours(self._activations(classifier, x[head_clean]), k_max)
        adv = self._neighbours(self._activations(classifier, x_adv[head_adv]), k_max)
        cal_labels = y[calibration].long().cpu()
        candidates, cal_alphas = {}, {}
        for k in sorted(set(grid)):
            alpha = nonconformity(cal_labels_nn, k, self.num_classes_, cal_dists if self.tie_break else None)
            cal_alphas[k] = alpha.gather(1, cal_labels[:, None])[:, 0].sort().values
            candidates[k] = torch.cat([self._features(*part, k, cal_alphas[k]) for part in (clean, adv)])
        labels = torch.cat([torch.zeros(len(head_clean)), torch.ones(len(head_adv))]).long()
        groups = paired_groups(len(head_clean), len(head_adv))
        self.k_, self.k_auc_ = select_by_cv(candidates, labels, groups, self.cv_folds, self.random_state)
        self.calibration_ = cal_alphas[self.k_]
        self.head_ = LogisticHead(self.cv_folds, self.random_state).fit(candidates[self.k_], labels)
        self.classifier_ = classifier
        return self

    def _activations(self, classifier: Classifier, x: torch.Tensor) -> dict[str, torch.Tensor]:
        named = () if self.layers is None else self.layers_
        _, embedding, acts = forward_with_embedding(classifier, x, named, self.pooling)
        return {EMBEDDING: embedding} if self.layers is None else acts

    def _neighbours(self, acts: dict[str, torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Neighbour labels and distances `[N, L, k]` at every feature layer."""
        found = [neighbours(acts[layer], self.train_acts_[layer], self.train_labels_, k) for layer in self.layers_]
        return torch.stack([f[0] for f in found], 1), torch.stack([f[1] for f in found], 1)

    def _features(self, labels: torch.Tensor, distances: torch.Tensor, k: int, calibration: torch.Tensor) -> torch.Tensor:
        """Sorted p-values `[N, K]` (decreasing) from neighbour labels and distances `[N, L, >= k]`."""
        alpha = nonconformity(labels, k, self.num_classes_, distances if self.tie_break else None)
        return p_values(alpha, calibration).sort(dim=1, descending=True).values

    # -- scoring ------------------------------------------------------------------------------------------------
    def dknn_features(self, x: torch.Tensor) -> torch.Tensor:
        """Sorted DkNN p-values `[N, K]` of images `x` at the chosen k."""
        self._check_fitted()
        self.classifier_.check_input(x)
        labels, distances = self._neighbours(self._activations(self.classifier_, x.detach()), self.k_)
        return self._features(labels, distances, self.k_, self.calibration_)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Adversarial score `[N]` (logit; higher = more adversarial) of images `x` `[N, C, H, W]` in [0, 1]."""
        features = self.dknn_features(x)
        return self.head_(features)

    # -- persistence --------------------------------------------------------------------------------------------
    def state_dict_(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"train_acts.{i}": self.train_acts_[layer] for i, layer in enumerate(self.layers_)}
        tensors.update({"train_labels": self.train_labels_, "calibration": self.calibration_})
        tensors.update(self.head_.state_dict())
        extras = {
            "layers": list(self.layers_), "k": self.k_, "num_classes": self.num_classes_,
            "k_auc": [[k, a] for k, a in self.k_auc_.items()],
        }
        return tensors, extras

    def load_state_(self, tensors: dict[str, torch.Tensor], extras: dict[str, Any]) -> None:
        self.layers_ = tuple(extras["layers"])
        needed = [f"train_acts.{i}" for i in range(len(self.layers_))] + ["train_labels", "calibration"]
        missing = [key for key in needed if key not in tensors]
        if missing:
            raise InputError(f"saved dknn state lacks tensors {missing}")
        self.train_acts_ = {layer: tensors[f"train_acts.{i}"] for i, layer in enumerate(self.layers_)}
        self.train_labels_ = tensors["train_labels"]
        self.calibration_ = tensors["calibration"]
        self.k_ = int(extras["k"])
        self.num_classes_ = int(extras["num_classes"])
        self.k_auc_ = {int(k): float(a) for k, a in extras["k_auc"]}
        self.head_ = LogisticHead(self.cv_folds, self.random_state).load_state(tensors)
