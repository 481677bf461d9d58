"""NNIF: Nearest Neighbour Influence Functions (Cohen, Sapiro & Giryes, CVPR 2020, arXiv 1909.06872).

"Detecting Adversarial Samples Using Influence Functions and Nearest Neighbors". For a normal input, the training
points that most helped the prediction (by influence functions) are also its nearest neighbours in the network's
activation spaces; an adversarial input breaks that correspondence. The detector feeds the neighbour ranks and L2
distances of the M most helpful and M most harmful training points into a logistic regression.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from neuroprint.checks import check_bool, check_float, check_layers
from neuroprint.detectors.base import Detector
from neuroprint.detectors.influence import LastLayerInfluence, forward_with_embedding
from neuroprint.detectors.logistic import LogisticHead
from neuroprint.detectors.ranks import ranks_and_distances
from neuroprint.detectors.selection import check_grid, paired_groups, select_by_cv
from neuroprint.detectors.training_cache import memoised
from neuroprint.errors import ConfigError, InputError
from neuroprint.features import POOLINGS, Pooling
from neuroprint.models.classifier import Classifier
from neuroprint.registry import DETECTORS

#: the reference code's grid of M (number of most helpful / harmful training points): 10..100 step 10, 150..500 step 50
M_GRID = (*range(10, 101, 10), *range(150, 501, 50))
EMBEDDING = "embedding"  # the feature-layer name of the embedding (input of the last linear layer)
_BATCH = 256  # inputs per scoring block


@DETECTORS.register("nnif")
class NNIFDetector(Detector):
    """NNIF detector (Cohen et al. 2020, "Detecting Adversarial Samples Using Influence Functions and Nearest
    Neighbors", arXiv 1909.06872, Algorithm 1).

    For an input x labelled with the classifier's **prediction** (clean or adversarial alike), the influence
    I(z, x) of every training point z is computed exactly for the last linear layer (`LastLayerInfluence`:
    damped Hessian factorised once, closed-form gradients; `damping` is added to the Hessian of the mean training
    loss). Of the `M` most helpful and `M` most harmful training points, NNFEATURES takes, at every feature layer,
    the **mean** neighbour rank (1 = nearest among all training points) and mean L2 distance to x: 4 features per
    layer. Feature layers: `layers` (default the classifier's `layers`, pooled with `pooling`), or with
    `embedding_only=True` the embedding alone (the paper's "penultimate layer" variant). `M` is chosen from
    `m_grid` (default `M_GRID`, the reference grid) by grouped, stratified `cv_folds`-fold cross-validated AUC on the
    fit data; then a logistic regression (`LogisticHead`: standardisation, which makes the paper's min-max scaling
    redundant, and `C` by cross-validation) is fitted on clean (0) and adversarial (1) features. The score is its
    logit: **higher = more adversarial**.

    Ranks and distances are over the whole training set (faiss brute-force distances, ranks by counting; see
    `neuroprint.detectors.ranks`), so the reference code's rescaling of subset ranks (x 49/5) is not needed.

    Needs the classifier's training data: `set_training_data(x_train, y_train)` before `fit`. The fitted state holds
    the training activations of every feature layer and the last-layer influence factors (for MNIST and 7 layers:
    about 0.3 GB). Input `x` `[N, C, H, W]`, pixels in the classifier's bounds ([0, 1]); `score` returns `[N]`
    float32 and is **not** differentiable (ranks and top-M selections).

    Example:
        >>> det = NNIFDetector().set_training_data(x_train, y_train).fit(clf, x_val, y_val, x_val_adv)
        >>> scores = det.score(x_test)  # [N], higher = more adversarial
    """

    name = "nnif"
    needs_training_data = True

    def __init__(
        self,
        m_grid: Sequence[int] | None = None,
        layers: Sequence[str] | None = None,
        embedding_only: bool = False,
        pooling: Pooling = "avg",
        damping: float = 0.01,
        cv_folds: int = 5,
        random_state: int = 0,
    ) -> None:
        layers = check_layers(layers)
        check_bool("embedding_only", embedding_only)
        if embedding_only and layers is not None:
            raise ConfigError("give either layers or embedding_only=true, not both")
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        check_float("damping", damping, 0.0, 1e6)
        if cv_folds < 2:
            raise ConfigError(f"cv_folds must be >= 2 (M is chosen by cross-validation), got {cv_folds}")
        self.m_grid = check_grid("m_grid", m_grid)
        self.layers = layers
        self.embedding_only = embedding_only
        self.pooling = pooling
        self.damping = damping
        self.cv_folds = cv_folds
        self.random_state = random_state

    # -- fitting ------------------------------------------------------------------------------------------------
    def fit(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None = None) -> NNIFDetector:
        """Learn from clean images `x` `[N, C, H, W]` (labels `y` are not used: NNIF labels every input with the
        prediction) and adversarial images `x_adv`; M is chosen by cross-validation on these images only."""
        x_adv = self._check_fit_inputs(classifier, x, y, x_adv)
        x_train, y_train = self._training_data()
        grid = self.m_grid if self.m_grid is not None else list(M_GRID)
        if 2 * max(grid) > len(x_train):
            raise InputError(f"m_grid reaches M={max(grid)}, but 2M must not exceed the {len(x_train)} training points")
        if min(len(x), len(x_adv)) < self.cv_folds:
            raise InputError(f"nnif needs >= {self.cv_folds} clean and adversarial images, got {len(x)} and {len(x_adv)}")
        self.layers_ = (EMBEDDING,) if self.embedding_only else tuple(self.layers or classifier.layers)
        self.influence_, self.train_acts_ = memoised(
            classifier, x_train, y_train, ("nnif", self.layers_, self.pooling, self.damping),
            lambda: self._fit_training_side(classifier, x_train, y_train),
        )
        m_max = max(grid)
        clean = self._raw_features(classifier, x, m_max, progress=True)
        adv = self._raw_features(classifier, x_adv, m_max, progress=True)
        labels = torch.cat([torch.zeros(len(clean)), torch.ones(len(adv))]).long()
        raw = torch.cat([clean, adv])
        candidates = {m: self._features(raw, m) for m in sorted(set(grid))}
        groups = paired_groups(len(clean), len(adv))
        self.m_, self.m_auc_ = select_by_cv(candidates, labels, groups, self.cv_folds, self.random_state)
        self.head_ = LogisticHead(self.cv_folds, self.random_state).fit(candidates[self.m_], labels)
        self.classifier_ = classifier
        return self

    def _fit_training_side(
        self, classifier: Classifier, x_train: torch.Tensor, y_train: torch.Tensor
    ) -> tuple[LastLayerInfluence, dict[str, torch.Tensor]]:
        """One pass over the training set: the last-layer influence model and the feature-layer activations."""
        named = () if self.embedding_only else self.layers_
        logits, embedding, acts = forward_with_embedding(classifier, x_train, named, self.pooling)
        influence = LastLayerInfluence(self.damping).fit(embedding, logits, y_train)
        return influence, ({EMBEDDING: embedding} if self.embedding_only else acts)

    # -- features -----------------------------------------------------------------------------------------------
    def _raw_features(
        self, classifier: Classifier, x: torch.Tensor, m: int, progress: bool = False,
        chosen_sets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`[N, L, 4, m]`: per layer, ranks and distances of the `m` most helpful then the `m` most harmful training
        points, each list ordered from the most influential (float32). The sets come from the last-layer influence,
        or from `chosen_sets` `[N, 2m]` (helpful then harmful training indices) when given."""
        out = []
        blocks = range(0, len(x), _BATCH)
        for start in tqdm(blocks, desc="nnif features", disable=not progress or len(blocks) < 2, unit="batch"):
            named = () if self.embedding_only else self.layers_
            logits, embedding, acts = forward_with_embedding(classifier, x[start : start + _BATCH], named, self.pooling)
            if self.embedding_only:
                acts = {EMBEDDING: embedding}
            if chosen_sets is None:
                helpful, harmful = self.influence_.top(embedding, logits, logits.argmax(1), m)
                chosen = torch.cat([helpful, harmful], dim=1)  # [b, 2m]
            else:
                chosen = chosen_sets[start : start + _BATCH]
            per_layer = []
            for layer in self.layers_:
                ranks, dists = ranks_and_distances(acts[layer], self.train_acts_[layer], chosen)
                per_layer.append(torch.stack([ranks[:, :m].float(), dists[:, :m], ranks[:, m:].float(), dists[:, m:]], 1))
            out.append(torch.stack(per_layer, 1))
        return torch.cat(out)

    @staticmethod
    def _features(raw: torch.Tensor, m: int) -> torch.Tensor:
        """NNIF features `[N, 4L]` for M = `m`: per layer, mean rank and mean distance of the `m` most helpful,
        then of the `m` most harmful training points (Alg. 1 NNFEATURES, averaged as in the reference code)."""
        return raw[..., :m].mean(-1).flatten(1)

    def nnif_features(
        self, x: torch.Tensor, helpful: torch.Tensor | None = None, harmful: torch.Tensor | None = None
    ) -> torch.Tensor:
        """NNIF features `[N, 4L]` of images `x` at the chosen M, in layer order (R+, D+, R-, D- per layer).

        `helpful` and `harmful` `[N, M]` (training-set indices, most influential first) replace the last-layer
        influence's sets, e.g. with those of the full-network LiSSA reference path (`lissa_influence`)."""
        self._check_fitted()
        self.classifier_.check_input(x)
        chosen = None
        if (helpful is None) != (harmful is None):
            raise InputError("give both helpful and harmful training-point sets, or neither")
        if helpful is not None and harmful is not None:
            if helpful.shape != (len(x), self.m_) or harmful.shape != (len(x), self.m_):
                raise InputError(f"helpful and harmful sets must be [{len(x)}, M={self.m_}], got "
                                 f"{list(helpful.shape)} and {list(harmful.shape)}")
            chosen = torch.cat([helpful, harmful], dim=1).long()
        with torch.no_grad():
            return self._features(self._raw_features(self.classifier_, x.detach(), self.m_, chosen_sets=chosen), self.m_)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Adversarial score `[N]` (logit; higher = more adversarial) of images `x` `[N, C, H, W]` in [0, 1]."""
        features = self.nnif_features(x)
        return self.head_(features)

    # -- persistence --------------------------------------------------------------------------------------------
    def state_dict_(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"train_acts.{i}": self.train_acts_[layer] for i, layer in enumerate(self.layers_)}
        tensors.update({
            "influence.train_a": self.influence_.train_a_,
            "influence.train_r": self.influence_.train_r_,
            "influence.cholesky": self.influence_.cholesky_,
        })
        tensors.update(self.head_.state_dict())
        extras = {"layers": list(self.layers_), "m": self.m_, "m_auc": [[m, a] for m, a in self.m_auc_.items()]}
        return tensors, extras

    def load_state_(self, tensors: dict[str, torch.Tensor], extras: dict[str, Any]) -> None:
        self.layers_ = tuple(extras["layers"])
        needed = [f"train_acts.{i}" for i in range(len(self.layers_))]
        needed += ["influence.train_a", "influence.train_r", "influence.cholesky"]
        missing = [key for key in needed if key not in tensors]
        if missing:
            raise InputError(f"saved nnif state lacks tensors {missing}")
        self.train_acts_ = {layer: tensors[f"train_acts.{i}"] for i, layer in enumerate(self.layers_)}
        self.influence_ = LastLayerInfluence(self.damping)
        self.influence_.train_a_ = tensors["influence.train_a"]
        self.influence_.train_r_ = tensors["influence.train_r"]
        self.influence_.cholesky_ = tensors["influence.cholesky"]
        self.m_ = int(extras["m"])
        self.m_auc_ = {int(m): float(a) for m, a in extras["m_auc"]}
        self.head_ = LogisticHead(self.cv_folds, self.random_state).load_state(tensors)
