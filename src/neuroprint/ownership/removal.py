"""Removal attacks (Lukas et al. 2021, arXiv 1912.00888, section 5 and appendix A.5): the ways an attacker derives
a surrogate of a source model and tries to shed the ownership evidence while keeping its accuracy.

Every attack gets the attacker's own data (images disjoint from the defender's; true labels are used only where
its threat model says so) and returns a new `Classifier`. What it gets of the source is its `access`: the
weights ("weights": model modification), or a `SourceAPI` that answers top-1 labels ("labels") or probability
vectors ("probabilities") and counts the queries (extraction). `threat` states the whole threat model.

Model modification (this module):
- `ftll` / `ftal` / `rtll` / `rtal` (Uchida et al. 2017): fine-tune the last layer / all layers; the RT variants
  first re-initialise the last layer.
- `prune`: gradual magnitude pruning (Zhu and Gupta 2017) of every conv/linear weight to `rate`, with fine-tuning
  after each of `rounds` steps (cubic sparsity schedule).
Extraction, training a fresh `architecture` (this module):
- `retrain`: on the source's labels of the attacker's data.
- `adv-train`: the same with PGD adversarial training (Madry et al. 2018) at `eps` (an adapted attack of the paper).
- `ground-truth`: the same with the true label on a share `share` of the attacker's data (the paper's other one).
The paper's further extraction attacks (distillation on probabilities, Papernot's Jacobian augmentation, Knockoff
Nets, transfer learning) are in `neuroprint.ownership.extraction`.

Build one with `make_removal("prune:rate=0.8")` and run it with `.run(source, attacker_data)`. `seed` is the
attacker's (data order, re-initialisation): give one the source was not trained with, or a model retrained
from scratch starts from the source's own initial weights.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from neuroprint.attacks.training import adversarial_training
from neuroprint.checks import check_eps, check_float, check_int
from neuroprint.data.base import DataSplits, Split
from neuroprint.errors import ConfigError
from neuroprint.models.checkpoint import build_classifier
from neuroprint.models.classifier import Classifier, last_linear
from neuroprint.models.training import Perturb, TrainConfig, train
from neuroprint.ownership.source_api import SourceAPI
from neuroprint.registry import MODELS, Registry
from neuroprint.specs import parse_spec

REMOVALS: Registry[Any] = Registry("removal attack")


@dataclass
class Removal:
    """A configured removal attack: `name`, its `params`, and the function that derives the surrogate."""

    name: str
    params: dict[str, Any]
    derive: Callable[[Any, DataSplits], Classifier] = field(repr=False)  # (model or SourceAPI, attacker data)
    architecture: str | None = None  # the architecture it trains from scratch (None: it modifies the source)
    access: str = "weights"  # what it holds of the source: "weights", or a SourceAPI's "labels" / "probabilities"
    threat: str = "the source's weights; the attacker's own images, labelled by the source model"
    queries: int | None = None  # images sent to the source API by the last `run` (None: it held the weights)

    @property
    def label(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.params.items() if k not in ("epochs", "lr", "seed"))
        return f"{self.name} ({shown})" if shown else self.name

    def run(self, source: Classifier, attacker: DataSplits) -> Classifier:
        """The surrogate derived from `source` (its weights, or an API of it, as `access` says) with the attacker's
        data (`attacker.train`; `attacker.val` for the per-epoch accuracy it watches)."""
        if self.access == "weights":
            return self.derive(source, attacker)
        api = SourceAPI(source, self.access)
        surrogate = self.derive(api, attacker)
        self.queries = api.queries
        return surrogate


def make_removal(spec: str) -> Removal:
    """A removal attack from `"name"` or `"name:key=value,..."`, e.g. `"retrain:architecture=mnist-net"`."""
    name, kwargs = parse_spec(spec)
    return REMOVALS.create(name, **kwargs)


def source_labels(source: Classifier | SourceAPI, split: Split) -> Split:
    """`split`'s images labelled by the source's top-1 prediction (the model's, or its API's)."""
    return Split(split.x, source.labels(split.x) if isinstance(source, SourceAPI) else source.predict(split.x))


def training_config(epochs: int, lr: float, seed: int) -> TrainConfig:
    """How a removal attack trains: Adam at `lr` for `epochs`, the rate cut tenfold for the last epoch, `seed`."""
    return TrainConfig(epochs=check_int("epochs", epochs), lr=check_float("lr", lr, 0.0, 1.0),
                       lr_drop_epoch=max(1, epochs - 1), seed=check_int("seed", seed, minimum=0))


def _copy(source: Classifier) -> Classifier:
    """A deep copy of the source model (removal attacks never modify the defender's object)."""
    import copy

    return copy.deepcopy(source)


def _fine_tune(mode: str, epochs: int, lr: float, seed: int) -> Removal:
    """FTLL/FTAL/RTLL/RTAL (Uchida et al. 2017). "Last layer" is the final linear layer; with BatchNorm
    architectures the running statistics of frozen layers still adapt to the attacker's data."""
    config = training_config(epochs, lr, seed)

    def derive(source: Classifier, attacker: DataSplits) -> Classifier:
        model = _copy(source)
        last = last_linear(model)
        if mode.startswith("rt"):
            torch.manual_seed(seed)
            last.reset_parameters()
        if mode.endswith("ll"):
            for p in model.parameters():
                p.requires_grad_(False)
            for p in last.parameters():
                p.requires_grad_(True)
        train(model, source_labels(source, attacker.train), source_labels(source, attacker.val), config, progress=False)
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    return Removal(mode, {"epochs": epochs, "lr": lr, "seed": seed}, derive)


FINE_TUNE_MODES = {  # mode: (what it does, default learning rate)
    "ftll": ("Fine-tune the last layer only.", 1e-3),
    "ftal": ("Fine-tune all layers.", 1e-4),
    "rtll": ("Re-initialise the last layer, then train it alone.", 1e-3),
    "rtal": ("Re-initialise the last layer, then train all layers.", 1e-3),
}


def _fine_tune_factory(mode: str, doc: str, default_lr: float) -> Callable[..., Removal]:
    def factory(epochs: int = 2, lr: float = default_lr, seed: int = 0) -> Removal:
        return _fine_tune(mode, epochs, lr, seed)

    factory.__doc__ = doc
    return factory


for _mode, (_doc, _lr) in FINE_TUNE_MODES.items():
    REMOVALS.register(_mode)(_fine_tune_factory(_mode, _doc, _lr))


@REMOVALS.register("prune")
def prune(rate: float = 0.8, rounds: int = 3, epochs: int = 1, lr: float = 1e-3, seed: int = 0) -> Removal:
    """Gradual magnitude pruning to sparsity `rate` in (0, 1) over `rounds` steps, `epochs` of fine-tuning each."""
    rate = check_float("rate", rate, 0.0, 1.0)
    if rate >= 1:
        raise ConfigError(f"rate must be < 1 (the share of weights removed), got {rate}")
    rounds = check_int("rounds", rounds)
    config = training_config(epochs, lr, seed)

    def derive(source: Classifier, attacker: DataSplits) -> Classifier:
        model = _copy(source)
        layers = [m for m in model.module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        train_split, val_split = source_labels(source, attacker.train), source_labels(source, attacker.val)
        reached = 0.0
        for step in range(1, rounds + 1):
            target = rate * (1 - (1 - step / rounds) ** 3)  # Zhu and Gupta's cubic schedule
            for layer in layers:  # the amount is relative to the weights still unpruned
                torch_prune.l1_unstructured(layer, "weight", amount=(target - reached) / (1 - reached))
            reached = target
            train(model, train_split, val_split, config, progress=False)
        for layer in layers:
            torch_prune.remove(layer, "weight")
        return model

    return Removal("prune", {"rate": rate, "rounds": rounds, "epochs": epochs, "lr": lr, "seed": seed}, derive)


def train_from_scratch(
    architecture: str, data: DataSplits, labels: Split, val: Split, epochs: int, lr: float, seed: int,
    perturb: Perturb | None = None,
) -> Classifier:
    """A fresh, seeded `architecture` for `data`'s images trained on `labels` (`val` for per-epoch accuracy)."""
    model = build_classifier(architecture, data, seed)
    train(model, labels, val, training_config(epochs, lr, seed), progress=False, perturb=perturb)
    return model


def _from_scratch(
    name: str, params: dict[str, Any], architecture: str, epochs: int, lr: float, seed: int,
    labels: Callable[[SourceAPI, Split], Split], threat: str, perturb: Perturb | None = None,
) -> Removal:
    """Extraction through a labels-only API: `architecture` trained from scratch on `labels(api, attacker.train)`."""
    check_architecture(architecture, epochs, lr, seed)

    def derive(api: SourceAPI, attacker: DataSplits) -> Classifier:
        return train_from_scratch(architecture, attacker, labels(api, attacker.train),
                                  source_labels(api, attacker.val), epochs, lr, seed, perturb)

    return Removal(name, {"architecture": architecture, **params, "epochs": epochs, "lr": lr, "seed": seed}, derive,
                   architecture, "labels", threat)


def check_architecture(architecture: str, epochs: int, lr: float, seed: int) -> None:
    """Fail on an unknown architecture or bad training settings now, not after the first models trained."""
    MODELS.get(architecture)
    training_config(epochs, lr, seed)


@REMOVALS.register("retrain")
def retrain(architecture: str = "lenet5", epochs: int = 4, lr: float = 1e-3, seed: int = 0) -> Removal:
    """Extraction: train `architecture` from scratch on the source's top-1 labels of the attacker's data."""
    return _from_scratch("retrain", {}, architecture, epochs, lr, seed, source_labels,
                         "top-1 labels; one query per image of the attacker's own data")


@REMOVALS.register("adv-train")
def adv_train(architecture: str = "lenet5", eps: float = 0.3, alpha: float = 0.05, steps: int = 10,
              epochs: int = 4, lr: float = 1e-3, seed: int = 0) -> Removal:
    """Extraction with PGD adversarial training (L-inf `eps`, `steps` steps of `alpha`, random start)."""
    perturb = adversarial_training(f"pgd:eps={check_eps(eps)},alpha={alpha},steps={steps}")

    return _from_scratch("adv-train", {"eps": eps, "alpha": alpha, "steps": steps}, architecture, epochs, lr, seed,
                         source_labels, "top-1 labels; one query per image of the attacker's own data", perturb)


@REMOVALS.register("ground-truth")
def ground_truth(share: float = 0.5, architecture: str = "lenet5", epochs: int = 4, lr: float = 1e-3,
                 seed: int = 0) -> Removal:
    """Extraction where a random share `share` in [0, 1] of the attacker's data carries its true label."""
    share = check_float("share", share, 0.0, 1.0, low_open=False)

    def labels(api: SourceAPI, split: Split) -> Split:
        mixed = source_labels(api, split).y.clone()
        known = torch.rand(len(split), generator=torch.Generator().manual_seed(seed)) < share
        mixed[known] = split.y[known]
        return Split(split.x, mixed)

    return _from_scratch("ground-truth", {"share": share}, architecture, epochs, lr, seed, labels,
                         "top-1 labels; one query per image of the attacker's own data, a share of which it has "
                         "labelled itself")
