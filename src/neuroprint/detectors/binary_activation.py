"""Binary activation detector (Metzen et al. 2017, arXiv 1702.04267): a subnetwork on one layer's activations.

"On Detecting Adversarial Perturbations" (ICLR 2017). A small binary classifier, the "detector subnetwork", is
trained on the activations of one intermediate layer of the frozen classifier to tell clean inputs (0) from
adversarial ones (1); ART ships it as `BinaryActivationDetector`.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from neuroprint.checks import check_float, check_int
from neuroprint.detectors.base import Detector
from neuroprint.errors import ConfigError, InputError
from neuroprint.features import extract
from neuroprint.models.classifier import Classifier
from neuroprint.registry import DETECTORS

_CHUNK = 256  # images per forward pass
_VAL_FRACTION = 0.2  # share of each class held out to select the epoch
_MIN_PER_CLASS = 5  # clean and adversarial images needed at least


def subnetwork(shape: tuple[int, ...], hidden: int) -> nn.Sequential:
    """The detector subnetwork: one input's activations of shape `shape` (`[C, H, W]` or `[D]`) -> a logit."""
    if len(shape) == 1:
        return nn.Sequential(nn.Linear(shape[0], hidden), nn.ReLU(), nn.Linear(hidden, 1))
    pool = [nn.MaxPool2d(2)] if min(shape[1:]) >= 4 else []
    return nn.Sequential(
        nn.Conv2d(shape[0], hidden, 3, padding=1), nn.ReLU(), *pool, nn.Conv2d(hidden, hidden, 3, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, 1),
    )


@DETECTORS.register("binary-activation")
class BinaryActivationDetector(Detector):
    """Binary activation detector (Metzen et al. 2017, "On Detecting Adversarial Perturbations",
    arXiv 1702.04267).

    The raw output of `layer` (default: the middle entry of `classifier.layers`, the earlier of the two middle
    ones for an even count, e.g. `conv2` of `small-cnn`, `conv4` of `mnist-net`) is standardised per channel
    with the mean and standard deviation of the fit data and fed to a small subnetwork: for a conv map
    `[N, C, H, W]`, conv3x3(C -> `hidden`) + ReLU + 2x2 max-pool (only if H, W >= 4) + conv3x3(`hidden` ->
    `hidden`) + ReLU + global average pool + linear(`hidden` -> 1); for a vector `[N, D]`, linear(D ->
    `hidden`) + ReLU + linear(`hidden` -> 1). The classifier stays frozen. The subnetwork is trained with Adam
    (`lr`, `weight_decay`) and a class-balanced (`pos_weight`) binary cross-entropy on clean (0) against
    adversarial (1) images, seeded by `random_state`, for `epochs` epochs; 20% of each class is held out (the
    same rows of paired sets), and the weights of the epoch with the best held-out AUC are kept (`val_auc_`).
    The layer's outputs for all fit images are held in memory during `fit`.

    Input `x` `[N, C, H, W]`, pixels in the classifier's bounds ([0, 1]); `score` returns `[N]` float32, the
    subnetwork's logit, **higher = more adversarial**, differentiable with respect to `x`.

    Example:
        >>> det = BinaryActivationDetector(layer="conv2").fit(clf, x_val, y_val, x_val_adv)
        >>> scores = det.score(x_test)  # [N], higher = more adversarial
    """

    name = "binary-activation"

    def __init__(
        self,
        layer: str | None = None,
        hidden: int = 64,
        epochs: int = 30,
        lr: float = 1e-3,
        batch_size: int = 128,
        weight_decay: float = 1e-4,
        random_state: int = 0,
    ) -> None:
        if layer is not None and (not isinstance(layer, str) or not layer):
            raise ConfigError(f"layer must be a layer name or None, got {layer!r}")
        self.layer = layer
        self.hidden = check_int("hidden", hidden, 1)
        self.epochs = check_int("epochs", epochs, 1)
        self.lr = check_float("lr", lr, 0.0, 10.0)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.weight_decay = check_float("weight_decay", weight_decay, 0.0, 1.0, low_open=False)
        self.random_state = check_int("random_state", random_state, 0)

    # -- fitting ---------------------------------------------------------------------------------------------
    def fit(
        self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None = None
    ) -> BinaryActivationDetector:
        """Learn from clean images `x` `[N, C, H, W]` (labels `y` are not used) and adversarial `x_adv`."""
        x_adv = self._check_fit_inputs(classifier, x, y, x_adv)
        if min(len(x), len(x_adv)) < _MIN_PER_CLASS:
            raise InputError(
                f"{self.name} needs >= {_MIN_PER_CLASS} clean and adversarial images each, "
                f"got {len(x)} and {len(x_adv)}"
            )
        classifier.eval()  # as `extract` does: batch-norm statistics must not move while probing the layer
        self._resolve_layer(classifier, x[:1])
        device = classifier.device
        acts = torch.cat([self._activations(classifier, x), self._activations(classifier, x_adv)]).to(device)
        labels = torch.cat([torch.zeros(len(x)), torch.ones(len(x_adv))]).to(device)
        train, val = (idx.to(device) for idx in self._split(len(x), len(x_adv)))
        dims = (0, 2, 3) if acts.ndim == 4 else (0,)
        self.mean_ = acts[train].mean(dims, keepdim=True)
        std = acts[train].std(dims, keepdim=True)
        self.std_ = torch.where(std > 1e-6, std, torch.ones_like(std))  # a dead channel stays unscaled
        acts = (acts - self.mean_) / self.std_
        n_pos = float(labels[train].sum())
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(train) - n_pos) / n_pos, device=device))
        val_labels = labels[val].cpu().numpy()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            net = subnetwork(self.shape_, self.hidden).to(device)
        optimizer = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        generator = torch.Generator().manual_seed(self.random_state)
        best_auc, best_state = -1.0, copy.deepcopy(net.state_dict())
        for _ in range(self.epochs):
            net.train()
            order = train[torch.randperm(len(train), generator=generator).to(device)]
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                optimizer.zero_grad()
                loss_fn(net(acts[batch]).squeeze(1), labels[batch]).backward()
                optimizer.step()
            net.eval()
            with torch.no_grad():
                val_auc = float(roc_auc_score(val_labels, net(acts[val]).squeeze(1).cpu().numpy()))
            if val_auc > best_auc:
                best_auc, best_state = val_auc, copy.deepcopy(net.state_dict())
        net.load_state_dict(best_state)
        self.net_, self.val_auc_ = net.eval(), best_auc
        self.classifier_ = classifier
        return self

    def _resolve_layer(self, classifier: Classifier, probe: torch.Tensor) -> None:
        """Set `layer_` and `shape_` (one image's activation shape); `ConfigError` for an unusable layer."""
        layer = self.layer if self.layer is not None else classifier.layers[(len(classifier.layers) - 1) // 2]
        if layer not in dict(classifier.module.named_modules()):
            valid = ", ".join(classifier.layers)
            raise ConfigError(f"unknown layer {layer!r}; valid: {valid} (or any submodule name)")
        with torch.no_grad():
            out = classifier.layer_outputs(probe.to(classifier.device), [layer])[1][layer]
        if not isinstance(out, torch.Tensor) or out.ndim not in (2, 4):
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"layer {layer!r} must output [N, D] or [N, C, H, W], got {got}")
        self.layer_, self.shape_ = layer, tuple(out.shape[1:])

    def _activations(self, classifier: Classifier, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs `[N, *shape_]` of `layer_` for images `x`, without gradients."""
        flat = extract(classifier, x, [self.layer_], "flatten", _CHUNK)[self.layer_]
        return flat.view(len(x), *self.shape_)

    def _split(self, n_clean: int, n_adv: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Seeded, stratified (train, held-out) indices into ``cat([clean, adv])``; pairs share their rows."""
        generator = torch.Generator().manual_seed(self.random_state)
        clean_val = torch.randperm(n_clean, generator=generator)[: round(_VAL_FRACTION * n_clean)]
        adv_val = torch.randperm(n_adv, generator=generator)[: round(_VAL_FRACTION * n_adv)]
        if n_adv == n_clean:  # row i of x_adv is the attack on x[i]: hold both out, or the pair would leak
            adv_val = clean_val
        held_out = torch.zeros(n_clean + n_adv, dtype=torch.bool)
        held_out[clean_val], held_out[n_clean + adv_val] = True, True
        return torch.nonzero(~held_out).flatten(), torch.nonzero(held_out).flatten()

    # -- scoring ---------------------------------------------------------------------------------------------
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Adversarial score `[N]` (a logit; higher = more adversarial) of images `x` `[N, C, H, W]`."""
        self._check_fitted()
        self.classifier_.check_input(x.detach())
        self.classifier_.eval()
        self.net_.eval()
        return torch.cat([self._logits(x[i : i + _CHUNK]) for i in range(0, len(x), _CHUNK)])

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.classifier_.layer_outputs(x.to(self.classifier_.device), [self.layer_])[1][self.layer_]
        if tuple(raw.shape[1:]) != self.shape_:
            got, fitted = list(raw.shape[1:]), list(self.shape_)
            raise InputError(f"layer {self.layer_!r} outputs {got} per image, fitted on {fitted}")
        return self.net_((raw - self.mean_) / self.std_).squeeze(1).float()

    # -- persistence -----------------------------------------------------------------------------------------
    def state_dict_(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"mean": self.mean_, "std": self.std_}
        tensors.update({f"net.{k}": v for k, v in self.net_.state_dict().items()})
        return tensors, {"layer": self.layer_, "shape": list(self.shape_), "val_auc": self.val_auc_}

    def load_state_(self, tensors: dict[str, torch.Tensor], extras: dict[str, Any]) -> None:
        missing = [k for k in ("mean", "std") if k not in tensors]
        if missing:
            raise InputError(f"saved {self.name} state lacks tensors {missing}")
        self.layer_, self.shape_ = extras["layer"], tuple(extras["shape"])
        self.val_auc_ = float(extras["val_auc"])
        device = self.classifier_.device
        self.net_ = subnetwork(self.shape_, self.hidden).to(device).eval()
        try:
            self.net_.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        except RuntimeError as exc:
            reason = str(exc).splitlines()[0]
            raise InputError(f"saved {self.name} weights do not fit the subnetwork ({reason})") from None
        self.mean_, self.std_ = tensors["mean"].to(device), tensors["std"].to(device)
