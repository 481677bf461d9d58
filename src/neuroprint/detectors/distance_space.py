"""Feature distance spaces: an LSTM over the trajectory of an input's activations relative to class pivots.

Carrara et al. 2018, "Adversarial Examples Detection in Features Distance Spaces" (ECCV 2018 Workshops). Every
layer's (average-pooled) activation is embedded as its distances to one pivot per class; the sequence of these
embeddings, from the first layer to the last, traces the input's path through the network, and a small recurrent
(or MLP) classifier trained on clean and adversarial sequences tells the two apart.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from neuroprint.checks import check_choice, check_float, check_int, check_layers
from neuroprint.detectors.base import Detector, FeatureSpec, resolve_layers
from neuroprint.detectors.pivots import METRICS, PIVOTS, Metric, PivotKind, class_pivots, embed
from neuroprint.detectors.training_cache import memoised, training_activations
from neuroprint.errors import InputError
from neuroprint.features import Features, activations, extract
from neuroprint.models.classifier import Classifier
from neuroprint.registry import DETECTORS

HeadKind = Literal["lstm", "mlp"]
HEADS = ("lstm", "mlp")
_CHUNK = 256  # images per forward pass


class SequenceHead(nn.Module):
    """The detector network on embedded sequences `[N, L, C]`, returning logits `[N]` (Carrara et al. Sect. 5.2).

    `"lstm"`: an LSTM with `hidden` units whose last hidden state feeds a linear layer with one output.
    `"mlp"`: the concatenated sequence `[N, L*C]` -> `hidden` ReLU units -> dropout 0.5 -> one output.
    The sigmoid of the logit is the probability that the input is adversarial.
    """

    def __init__(self, kind: HeadKind, n_layers: int, n_classes: int, hidden: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "lstm":
            self.lstm = nn.LSTM(n_classes, hidden, batch_first=True)
            self.out = nn.Linear(hidden, 1)
        else:
            self.mlp = nn.Sequential(
                nn.Flatten(), nn.Linear(n_layers * n_classes, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, 1)
            )

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        if self.kind == "lstm":
            _, (h, _) = self.lstm(sequences)
            return self.out(h[-1]).squeeze(1)
        return self.mlp(sequences).squeeze(1)


@DETECTORS.register("distance-space")
class DistanceSpaceDetector(Detector):
    """Feature-distance-space detector (Carrara et al. 2018, "Adversarial Examples Detection in Features Distance
    Spaces", ECCV 2018 Workshops); all eight variants of the paper's Table 2 through `head` x `pivot` x `metric`.

    Pivots: for every layer in `layers` (default: the classifier's `layers`, i.e. every conv/linear block and the
    logits; conv maps average-pooled over space) and every class, the `pivot` ("medoid" or "centroid") of the
    pooled activations of the classifier's *training* images of that class (given with `set_training_data`; true
    labels). Medoids are exact up to `medoid_reference` members per class and use a seeded sampled approximation
    beyond (see `neuroprint.detectors.pivots.medoid_index`). Embedding: per layer the L2 distances (`metric="l2"`)
    or cosine similarities (`"cos"`) to the C pivots, so an input becomes a sequence `[L, C]`; each of its L*C
    entries is standardised with the mean and standard deviation of the detector's training sequences (an affine
    map the network could learn; it makes lr 3e-4 work for distances of any scale).

    Network (`head`): "lstm" (hidden 100 -> linear -> sigmoid) or the "mlp" baseline (L*C -> 100 ReLU, dropout
    0.5 -> 1), trained with binary cross-entropy, Adam (`lr` 3e-4), batches of `batch_size` 128 drawn by a
    weighted sampler that balances clean and adversarial sequences, for up to `epochs` 100 epochs. Model selection:
    a seeded share `validation_fraction` of the fit data is held out (when `x_adv` has as many rows as `x`, row i of
    `x_adv` is taken to be the attack on `x[i]` and falls on the same side); after every epoch the validation AUC
    is measured, the weights of the best epoch are kept, and training stops after `patience` epochs without
    improvement. With several attacks in `x_adv` the detector cannot tell them apart, so the sampler balances clean
    against adversarial (the paper also balances the attacks). Everything is seeded by `random_state`.

    Input `x` `[N, C, H, W]`, pixels in the classifier's bounds; `score` returns `[N]` float32, the network's logit:
    **higher = more adversarial** (sigmoid(score) is the probability). The score is differentiable with respect
    to `x` (hooked activations, distances and the network are all torch).

    Features: `feature_spec` is `(layers, "avg")`, so a harness can share one forward pass through `fit_features`
    / `score_features` (the training data is still needed for the pivots).

    Example:
        >>> det = DistanceSpaceDetector(head="lstm", pivot="medoid", metric="cos")
        >>> det.set_training_data(x_train, y_train).fit(clf, x_val, y_val, x_val_adv)
        >>> scores = det.score(x_test)  # [N], higher = more adversarial
    """

    name = "distance-space"
    needs_training_data = True

    def __init__(
        self,
        head: HeadKind = "lstm",
        pivot: PivotKind = "medoid",
        metric: Metric = "cos",
        layers: Sequence[str] | None = None,
        hidden: int = 100,
        lr: float = 3e-4,
        batch_size: int = 128,
        epochs: int = 100,
        patience: int = 20,
        validation_fraction: float = 0.2,
        medoid_reference: int = 10_000,
        random_state: int = 0,
    ) -> None:
        layers = check_layers(layers)
        self.head = check_choice("head", head, HEADS)
        self.pivot = check_choice("pivot", pivot, PIVOTS)
        self.metric = check_choice("metric", metric, METRICS)
        self.layers = layers
        self.hidden = check_int("hidden", hidden)
        self.lr = check_float("lr", lr, 0.0, 1.0)
        self.batch_size = check_int("batch_size", batch_size)
        self.epochs = check_int("epochs", epochs)
        self.patience = check_int("patience", patience)
        self.validation_fraction = check_float("validation_fraction", validation_fraction, 0.0, 0.5)
        self.medoid_reference = check_int("medoid_reference", medoid_reference, 2)
        self.random_state = check_int("random_state", random_state, 0)

    @property
    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec(None if self.layers is None else tuple(self.layers), "avg")

    # -- fitting ------------------------------------------------------------------------------------------------
    def fit(
        self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None = None
    ) -> DistanceSpaceDetector:
        """Learn from clean images `x` `[N, C, H, W]` (labels `y` are not used) and adversarial images `x_adv`."""
        x_adv = self._check_fit_inputs(classifier, x, y, x_adv)
        layers = resolve_layers(self.layers, classifier)
        self._fit_pivots(classifier, layers)
        clean = extract(classifier, x, layers, "avg", _CHUNK)
        adv = extract(classifier, x_adv, layers, "avg", _CHUNK)
        return self._fit_network(classifier, self._embed(clean), self._embed(adv))

    def fit_features(
        self, classifier: Classifier, features: Features, y: torch.Tensor, features_adv: Features
    ) -> DistanceSpaceDetector:
        """`fit` on activations extracted as `feature_spec` says (`y` is not used)."""
        layers = resolve_layers(self.layers, classifier)
        self._check_feature_pair(features, features_adv, layers)
        self._fit_pivots(classifier, layers)
        return self._fit_network(classifier, self._embed(features), self._embed(features_adv))

    def _fit_pivots(self, classifier: Classifier, layers: tuple[str, ...]) -> None:
        """Pivots `{layer: [K, D]}` from the training activations (reused across fits on the same data)."""
        x_train, y_train = self._training_data()
        self.layers_ = layers
        self.pivots_: dict[str, torch.Tensor] = {}
        acts = training_activations(classifier, x_train, y_train, layers)  # one pass for all layers (cached)
        for layer in layers:
            key = ("pivots", layer, self.pivot, self.medoid_reference, self.random_state)

            def compute(layer: str = layer) -> torch.Tensor:
                return class_pivots(acts[layer], y_train, classifier.num_classes, self.pivot, self.medoid_reference,
                                    self.random_state)

            self.pivots_[layer] = memoised(classifier, x_train, y_train, key, compute)

    def _fit_network(self, classifier: Classifier, clean: torch.Tensor, adv: torch.Tensor) -> DistanceSpaceDetector:
        """Train the head on embedded sequences `clean` `[n, L, K]` and `adv` `[m, L, K]`, selecting by val AUC."""
        train_idx, val_idx = self._split(len(clean), len(adv))
        sequences = torch.cat([clean, adv])
        labels = torch.cat([torch.zeros(len(clean)), torch.ones(len(adv))])
        train_seq, train_lab = sequences[train_idx], labels[train_idx]
        self.shift_ = train_seq.mean(0)
        self.scale_ = train_seq.std(0).clamp_min(1e-6)
        train_seq = (train_seq - self.shift_) / self.scale_
        val_seq, val_lab = (sequences[val_idx] - self.shift_) / self.scale_, labels[val_idx].numpy()
        with torch.random.fork_rng():
            torch.manual_seed(self.random_state)
            net = SequenceHead(self.head, *clean.shape[1:], self.hidden)
            optimizer = torch.optim.Adam(net.parameters(), lr=self.lr)
            loss_fn = nn.BCEWithLogitsLoss()
            n_pos = float(train_lab.sum())
            weights = torch.where(train_lab > 0, 0.5 / n_pos, 0.5 / (len(train_lab) - n_pos))
            generator = torch.Generator().manual_seed(self.random_state)
            best_auc, best_state, best_epoch, epoch = -1.0, copy.deepcopy(net.state_dict()), 0, 0
            for epoch in range(1, self.epochs + 1):
                net.train()
                order = torch.multinomial(weights, len(train_lab), replacement=True, generator=generator)
                for start in range(0, len(order), self.batch_size):
                    batch = order[start : start + self.batch_size]
                    optimizer.zero_grad()
                    loss_fn(net(train_seq[batch]), train_lab[batch]).backward()
                    optimizer.step()
                net.eval()
                with torch.no_grad():
                    val_auc = float(roc_auc_score(val_lab, net(val_seq).numpy()))
                if val_auc > best_auc:
                    best_auc, best_state, best_epoch = val_auc, copy.deepcopy(net.state_dict()), epoch
                elif epoch - best_epoch >= self.patience:
                    break
        net.load_state_dict(best_state)
        net.eval()
        self.net_ = net
        self.val_auc_, self.best_epoch_, self.epochs_run_ = best_auc, best_epoch, epoch
        self.classifier_ = classifier
        return self

    def _split(self, n_clean: int, n_adv: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Seeded (train, validation) indices into ``cat([clean, adv])``; paired sets share the split."""
        generator = torch.Generator().manual_seed(self.random_state)
        n_val_clean = round(self.validation_fraction * n_clean)
        clean_val = torch.randperm(n_clean, generator=generator)[:n_val_clean]
        if n_adv == n_clean:
            adv_val = clean_val
        else:
            adv_val = torch.randperm(n_adv, generator=generator)[: round(self.validation_fraction * n_adv)]
        if min(len(clean_val), len(adv_val), n_clean - len(clean_val), n_adv - len(adv_val)) < 2:
            raise InputError(
                f"{self.name} needs >= 2 clean and adversarial images on both sides of its validation split "
                f"(validation_fraction={self.validation_fraction}), got {n_clean} clean and {n_adv} adversarial"
            )
        is_val = torch.zeros(n_clean + n_adv, dtype=torch.bool)
        is_val[clean_val] = True
        is_val[n_clean + adv_val] = True
        return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()

    # -- scoring ------------------------------------------------------------------------------------------------
    def _embed(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The embedded sequences `[N, L, K]` of activations `{layer: [N, D]}` (differentiable)."""
        return torch.stack([embed(acts[layer], self.pivots_[layer], self.metric) for layer in self.layers_], 1)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The embedded sequences `[N, L, K]` (L layers, K classes; not standardised) of images `x`."""
        self._check_fitted()
        self.classifier_.check_input(x.detach())
        self.classifier_.eval()
        parts = []
        for start in range(0, len(x), _CHUNK):
            _, acts = activations(self.classifier_, x[start : start + _CHUNK], self.layers_, "avg")
            parts.append(self._embed(acts))
        return torch.cat(parts)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Adversarial score `[N]` (logit; higher = more adversarial) of images `x` `[N, C, H, W]`."""
        return self._score_sequences(self.embedding(x))

    def score_features(self, features: Features) -> torch.Tensor:
        """`score` from activations extracted as `feature_spec` says."""
        self._check_fitted()
        self._check_features(features, self.layers_, "features")
        return self._score_sequences(self._embed(features))

    def _score_sequences(self, sequences: torch.Tensor) -> torch.Tensor:
        z = (sequences - self.shift_.to(sequences)) / self.scale_.to(sequences)
        return self.net_.to(z.device)(z.float())

    # -- persistence --------------------------------------------------------------------------------------------
    def state_dict_(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"pivots.{i}": self.pivots_[layer] for i, layer in enumerate(self.layers_)}
        tensors.update({"shift": self.shift_, "scale": self.scale_})
        tensors.update({f"net.{k}": v for k, v in self.net_.state_dict().items()})
        extras = {"layers": list(self.layers_), "val_auc": self.val_auc_, "best_epoch": self.best_epoch_,
                  "epochs_run": self.epochs_run_}
        return tensors, extras

    def load_state_(self, tensors: dict[str, torch.Tensor], extras: dict[str, Any]) -> None:
        self.layers_ = tuple(extras["layers"])
        needed = [f"pivots.{i}" for i in range(len(self.layers_))] + ["shift", "scale"]
        missing = [k for k in needed if k not in tensors]
        if missing:
            raise InputError(f"saved distance-space state lacks tensors {missing}")
        self.pivots_ = {layer: tensors[f"pivots.{i}"] for i, layer in enumerate(self.layers_)}
        self.shift_, self.scale_ = tensors["shift"], tensors["scale"]
        n_layers, n_classes = self.shift_.shape
        self.net_ = SequenceHead(self.head, n_layers, n_classes, self.hidden)
        try:
            self.net_.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise InputError(f"saved distance-space network does not match its config ({first})") from None
        self.net_.eval()
        self.val_auc_, self.best_epoch_ = extras["val_auc"], extras["best_epoch"]
        self.epochs_run_ = extras["epochs_run"]
