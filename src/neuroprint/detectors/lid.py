"""LID: Local Intrinsic Dimensionality of deep activations (Ma et al. 2018, arXiv 1801.02613).

"Characterizing Adversarial Subspaces Using Local Intrinsic Dimensionality" (ICLR 2018). The local intrinsic
dimensionality of an input's activations, estimated from its nearest clean neighbours, is higher for adversarial
inputs than for clean ones; a logistic regression on the per-layer estimates separates the two.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from neuroprint.checks import check_layers
from neuroprint.detectors.base import Detector, FeatureSpec, resolve_layers
from neuroprint.detectors.logistic import LogisticHead
from neuroprint.errors import ConfigError, InputError
from neuroprint.features import POOLINGS, Features, Pooling, activations, extract
from neuroprint.models.classifier import Classifier
from neuroprint.registry import DETECTORS

_CHUNK = 256  # images per forward pass
_TINY = 1e-12  # floor on distances, so that a duplicate of a reference point gives a finite estimate


def pairwise_distances(queries: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Euclidean distances `[N, M]` between rows of `queries` `[N, D]` and `reference` `[M, D]`, in float64.

    Differentiable everywhere (the squared distance is floored at a tiny positive value before the square root).
    """
    q, r = queries.double(), reference.double()
    sq = q.pow(2).sum(1, keepdim=True) - 2.0 * q @ r.T + r.pow(2).sum(1)
    return sq.clamp_min(_TINY).sqrt()


def lid_mle(distances: torch.Tensor, k: int) -> torch.Tensor:
    """MLE of the LID `[N]` from distances `[N, M]` to candidate neighbours (+inf marks an excluded candidate).

    LID(x) = -((1/k) sum_{i=1..k} log(r_i(x) / r_k(x)))^-1, with r_i the distance to the i-th nearest neighbour
    (Ma et al. 2018, Eq. 4). Differentiable through `topk`.
    """
    r = distances.topk(k, dim=1, largest=False).values  # ascending, r[:, -1] = r_k
    mean_log = torch.log(r / r[:, -1:]).mean(1)
    return -1.0 / mean_log.clamp_max(-1e-6)  # k equidistant neighbours would give 1/0


@DETECTORS.register("lid")
class LIDDetector(Detector):
    """LID detector (Ma et al. 2018, "Characterizing Adversarial Subspaces Using Local Intrinsic Dimensionality",
    arXiv 1801.02613).

    For every layer in `layers` (default: the classifier's `layers`; activations flattened, as in the paper), the
    MLE LID of an input is estimated from its `k` nearest neighbours in a minibatch of `batch_size` clean points
    (with `n_batches > 1`: averaged over that many disjoint minibatches, which lowers the estimator's noise while
    keeping the paper's k and batch size, hence its scale); a logistic regression on the per-layer LIDs (clean = 0,
    adversarial = 1) gives the score, its logit: **higher = more adversarial**.

    Reference-batch protocol (leak-free and deployable): the paper estimates LID inside random minibatches of the
    evaluation data itself, which needs a batch of clean test points at test time. Here `fit` draws one seeded
    sample of `n_batches * batch_size` clean fit images (`random_state`) and stores its activations as fixed
    reference minibatches; every input, at fit and at score time, is compared with those minibatches only, so a
    score depends on nothing but the input and the fitted state. A clean fit image that belongs to the reference
    does not count itself as a neighbour (the paper drops the zero self-distance the same way). When `x_adv` has as
    many rows as `x`, row i of `x_adv` is taken to be the attack on `x[i]` (as attacks return them), and its own
    clean source is excluded from its neighbours, as at deployment, where an input's clean source is never in the
    reference (for unpaired sets of equal length this drops one arbitrary candidate: harmless). The paper's noisy
    (Gaussian-perturbed) negatives are not used.

    Input `x` `[N, C, H, W]`, pixels in the classifier's bounds ([0, 1]); `score` returns `[N]` float32 and is
    differentiable with respect to `x` (distances and `topk` in torch).

    Features: `feature_spec` is `(layers, pooling)`, so a harness can share one forward pass per split through
    `fit_features` / `score_features` (flattened conv maps are large: mind memory on big sets).

    Example:
        >>> det = LIDDetector(k=20, batch_size=100).fit(clf, x_val, y_val, x_val_adv)
        >>> scores = det.score(x_test)  # [N], higher = more adversarial
    """

    name = "lid"

    def __init__(
        self,
        k: int = 20,
        batch_size: int = 100,
        n_batches: int = 1,
        layers: Sequence[str] | None = None,
        pooling: Pooling = "flatten",
        cv_folds: int = 5,
        random_state: int = 0,
    ) -> None:
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        if batch_size <= k:
            raise ConfigError(f"batch_size must be > k (the neighbours come from the batch), got {batch_size} <= {k}")
        if n_batches < 1:
            raise ConfigError(f"n_batches must be >= 1, got {n_batches}")
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        layers = check_layers(layers)
        LogisticHead(cv_folds, random_state)  # validates cv_folds
        self.k = k
        self.batch_size = batch_size
        self.n_batches = n_batches
        self.layers = layers
        self.pooling = pooling
        self.cv_folds = cv_folds
        self.random_state = random_state

    @property
    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec(None if self.layers is None else tuple(self.layers), self.pooling)

    # -- fitting ------------------------------------------------------------------------------------------------
    def fit(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None = None) -> LIDDetector:
        """Learn from clean images `x` `[N, C, H, W]` (labels `y` `[N]` are not used) and adversarial `x_adv`."""
        x_adv = self._check_fit_inputs(classifier, x, y, x_adv)
        self._start_fit(classifier, len(x))
        self.reference_ = dict(extract(classifier, x[self.reference_index_], self.layers_, self.pooling, _CHUNK))
        clean = self._stream_lids(classifier, x, self._self_columns(len(x)))
        paired = len(x_adv) == len(x)
        adv = self._stream_lids(classifier, x_adv, self._self_columns(len(x_adv)) if paired else None)
        return self._fit_head(classifier, clean, adv)

    def fit_features(
        self, classifier: Classifier, features: Features, y: torch.Tensor, features_adv: Features
    ) -> LIDDetector:
        """`fit` on activations extracted as `feature_spec` says (`y` is not used)."""
        layers = resolve_layers(self.layers, classifier)
        self._check_feature_pair(features, features_adv, layers)
        self._start_fit(classifier, len(features))
        self.reference_ = {layer: features[layer][self.reference_index_].float().clone() for layer in self.layers_}
        clean = self._lids(features, self._self_columns(len(features)))
        paired = len(features_adv) == len(features)
        adv = self._lids(features_adv, self._self_columns(len(features_adv)) if paired else None)
        return self._fit_head(classifier, clean, adv)

    def _start_fit(self, classifier: Classifier, n_clean: int) -> None:
        per_batch = min(n_clean // self.n_batches, self.batch_size)
        if per_batch <= self.k:
            raise InputError(
                f"lid with k={self.k}, n_batches={self.n_batches} needs more than {self.k * self.n_batches} clean "
                f"images, got {n_clean}"
            )
        self.layers_ = resolve_layers(self.layers, classifier)
        generator = torch.Generator().manual_seed(self.random_state)
        index = torch.randperm(n_clean, generator=generator)[: per_batch * self.n_batches]
        self.reference_index_ = index.view(self.n_batches, per_batch).sort(dim=1).values.flatten()

    def _self_columns(self, n: int) -> torch.Tensor:
        """`[n]`: the reference column holding input i itself (or its clean source), -1 where none does."""
        columns = torch.full((n,), -1, dtype=torch.long)
        inside = self.reference_index_ < n
        columns[self.reference_index_[inside]] = torch.arange(len(self.reference_index_))[inside]
        return columns

    def _fit_head(self, classifier: Classifier, clean: torch.Tensor, adv: torch.Tensor) -> LIDDetector:
        labels = torch.cat([torch.zeros(len(clean)), torch.ones(len(adv))]).long()
        self.head_ = LogisticHead(self.cv_folds, self.random_state).fit(torch.cat([clean, adv]), labels)
        self.classifier_ = classifier
        return self

    # -- scoring ------------------------------------------------------------------------------------------------
    def lid(self, x: torch.Tensor) -> torch.Tensor:
        """Per-layer LID estimates `[N, L]` of images `x` against the reference batch (differentiable in `x`)."""
        self._check_fitted()
        self.classifier_.check_input(x.detach())
        self.classifier_.eval()
        out = []
        for start in range(0, len(x), _CHUNK):
            _, acts = activations(self.classifier_, x[start : start + _CHUNK], self.layers_, self.pooling)
            out.append(self._lids(acts, None))
        return torch.cat(out)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Adversarial score `[N]` (logit; higher = more adversarial) of images `x` `[N, C, H, W]` in [0, 1]."""
        lids = self.lid(x)
        return self.head_(lids)

    def score_features(self, features: Features) -> torch.Tensor:
        """`score` from activations extracted as `feature_spec` says."""
        self._check_fitted()
        self._check_features(features, self.layers_, "features")
        return self.head_(self._lids(features, None))

    def _stream_lids(self, classifier: Classifier, x: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
        out = []
        for start in range(0, len(x), _CHUNK):
            acts = extract(classifier, x[start : start + _CHUNK], self.layers_, self.pooling, _CHUNK)
            out.append(self._lids(acts, None if exclude is None else exclude[start : start + _CHUNK]))
        return torch.cat(out)

    def _lids(self, acts: Mapping[str, torch.Tensor], exclude: torch.Tensor | None) -> torch.Tensor:
        """`[N, L]` float32 LIDs of activations `{layer: [N, D]}`; `exclude` `[N]` names a reference column to skip."""
        n = len(acts[self.layers_[0]])
        rows = []
        for start in range(0, n, _CHUNK):  # bounds the float64 copies of wide flattened layers
            part = slice(start, start + _CHUNK)
            skip = None if exclude is None else exclude[part]
            rows.append(torch.stack([self._layer_lid(acts[layer][part], layer, skip) for layer in self.layers_], 1))
        return torch.cat(rows)

    def _layer_lid(self, queries: torch.Tensor, layer: str, exclude: torch.Tensor | None) -> torch.Tensor:
        reference = self.reference_[layer]
        if queries.shape[1] != reference.shape[1]:
            raise InputError(f"layer {layer!r} has {queries.shape[1]} features, the reference {reference.shape[1]}")
        dist = pairwise_distances(queries, reference.to(queries.device))
        if exclude is not None:
            rows = torch.nonzero(exclude >= 0).flatten()
            own = torch.zeros_like(dist, dtype=torch.bool)
            own[rows, exclude[rows]] = True
            dist = dist.masked_fill(own, float("inf"))
        n, batches = len(dist), dist.view(len(dist), self.n_batches, -1)  # reference batch j = columns j*M..(j+1)*M
        return lid_mle(batches.flatten(0, 1), self.k).view(n, self.n_batches).mean(1).float()

    # -- persistence --------------------------------------------------------------------------------------------
    def state_dict_(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"reference.{i}": self.reference_[layer] for i, layer in enumerate(self.layers_)}
        tensors["reference_index"] = self.reference_index_
        tensors.update(self.head_.state_dict())
        return tensors, {"layers": list(self.layers_)}

    def load_state_(self, tensors: dict[str, torch.Tensor], extras: dict[str, Any]) -> None:
        self.layers_ = tuple(extras["layers"])
        missing = [f"reference.{i}" for i in range(len(self.layers_)) if f"reference.{i}" not in tensors]
        if missing or "reference_index" not in tensors:
            raise InputError(f"saved lid state lacks tensors {missing or ['reference_index']}")
        self.reference_ = {layer: tensors[f"reference.{i}"] for i, layer in enumerate(self.layers_)}
        self.reference_index_ = tensors["reference_index"]
        self.head_ = LogisticHead(self.cv_folds, self.random_state).load_state(tensors)
