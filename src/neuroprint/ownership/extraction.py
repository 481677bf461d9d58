"""The extraction attacks of Lukas et al. 2021 (arXiv 1912.00888, section 5 and appendix A.5.1) beyond plain
retraining: each trains a fresh `architecture` through the source's API (`SourceAPI`), never its weights.

- `distill` (Jagielski et al. 2019, arXiv 1909.01838; eq. 11-12): the API's probability vectors, softened at
  `temperature`, as the targets of Hinton et al.'s distillation loss, on the attacker's own images.
- `jacobian` (Papernot et al. 2017, arXiv 1602.02697; eq. 13-15): from `seed_images` of the attacker's own images,
  `rounds` of training and then doubling the set by a step of size `step` along the sign of the surrogate's
  gradient of the label the API gave (FGM, as the paper does); labels only, `seed_images * 2^rounds` queries.
- `knockoff` (Orekondy et al. 2019, "Knockoff Nets", random selection): no images of the task at all; `budget`
  images from another distribution (`transfer`: scikit-learn's 8x8 digits stretched to the task's size, or
  uniform noise) with the API's probability vectors as soft targets.
- `transfer`: transfer learning. The attacker first trains on a task of its own with a different label set (its
  own images with true labels merged in pairs: 5 classes), then replaces the output layer and fine-tunes the whole
  network for `epochs` on the API's labels of the same images (the paper's transfer from a model pre-trained on
  another task; one epoch there reaches its accuracy).

Each is a `REMOVALS` entry (`make_removal("distill:temperature=4")`) with its threat model in `Removal.threat`.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from neuroprint.checks import check_choice, check_float, check_int
from neuroprint.data import load_dataset
from neuroprint.data.base import DataSplits, Split
from neuroprint.errors import ConfigError
from neuroprint.models.checkpoint import build_classifier
from neuroprint.models.classifier import Classifier, input_gradients_only, last_linear
from neuroprint.models.training import train
from neuroprint.ownership.removal import (
    REMOVALS,
    Removal,
    check_architecture,
    source_labels,
    train_from_scratch,
    training_config,
)
from neuroprint.ownership.source_api import SourceAPI

TRANSFER_SETS = ("digits", "noise")


def _params(architecture: str, epochs: int, lr: float, seed: int, **specific: object) -> dict[str, object]:
    check_architecture(architecture, epochs, lr, seed)
    return {"architecture": architecture, **specific, "epochs": epochs, "lr": lr, "seed": seed}


def soften(probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(z / T) `[N, K]` from the API's softmax(z) `[N, K]` (Jagielski et al. eq. 11): p^(1/T), renormalised."""
    powered = probabilities.clamp_min(1e-12).pow(1.0 / temperature)
    return powered / powered.sum(1, keepdim=True)


def train_on_probabilities(architecture: str, data: DataSplits, targets: torch.Tensor, val: Split, epochs: int,
                           lr: float, seed: int, temperature: float = 1.0) -> Classifier:
    """A fresh, seeded `architecture` trained with the distillation loss on soft `targets` `[N, K]` for
    `data.train`'s images (`val`, labelled, for the per-epoch accuracy)."""
    model = build_classifier(architecture, data, seed)
    hard = Split(data.train.x, targets.argmax(1))
    train(model, hard, val, training_config(epochs, lr, seed), progress=False, soft_targets=targets, temperature=temperature)
    return model


@REMOVALS.register("distill")
def distill(temperature: float = 4.0, architecture: str = "lenet5", epochs: int = 4, lr: float = 1e-3,
            seed: int = 0) -> Removal:
    """Jagielski et al.'s distillation: probability vectors at `temperature` (> 0) for the attacker's own images."""
    temperature = check_float("temperature", temperature, 0.0, 100.0)

    def derive(api: SourceAPI, attacker: DataSplits) -> Classifier:
        targets = soften(api.probabilities(attacker.train.x), temperature)
        return train_on_probabilities(architecture, attacker, targets, source_labels(api, attacker.val), epochs, lr,
                                      seed, temperature)

    return Removal("distill", _params(architecture, epochs, lr, seed, temperature=temperature), derive, architecture,
                   "probabilities", "probability vectors; one query per image of the attacker's own data")


def jacobian_step(model: Classifier, x: torch.Tensor, y: torch.Tensor, step: float) -> torch.Tensor:
    """Papernot et al.'s augmentation `[N, C, H, W]`: x + step * sign(d logit_y / dx) of the surrogate, clipped."""
    model.eval()
    with input_gradients_only(model), torch.enable_grad():
        x = x.clone().requires_grad_(True)
        model(x).gather(1, y[:, None]).sum().backward()
        assert x.grad is not None
        return (x + step * x.grad.sign()).clamp(*model.bounds).detach()


@REMOVALS.register("jacobian")
def jacobian(seed_images: int = 150, rounds: int = 6, step: float = 0.1, architecture: str = "lenet5",
             epochs: int = 4, lr: float = 1e-3, seed: int = 0) -> Removal:
    """Papernot et al.'s Jacobian-based augmentation: `seed_images` of the attacker's own images, `rounds` doublings
    by a step `step` (pixels), `epochs` of training per round; labels only."""
    seed_images, rounds = check_int("seed_images", seed_images, minimum=2), check_int("rounds", rounds, minimum=0)
    step = check_float("step", step, 0.0, 1.0)

    def derive(api: SourceAPI, attacker: DataSplits) -> Classifier:
        if seed_images > len(attacker.train):
            raise ConfigError(f"seed_images={seed_images} exceeds the attacker's {len(attacker.train)} images")
        pick = torch.randperm(len(attacker.train), generator=torch.Generator().manual_seed(seed))[:seed_images]
        x = attacker.train.x[pick]
        y = api.labels(x)
        val = source_labels(api, attacker.val)
        model = build_classifier(architecture, attacker, seed)
        for round_ in range(rounds + 1):
            train(model, Split(x, y), val, training_config(epochs, lr, seed + round_), progress=False)
            if round_ < rounds:
                new = jacobian_step(model, x, y, step)
                x, y = torch.cat([x, new]), torch.cat([y, api.labels(new)])
        return model

    return Removal("jacobian", _params(architecture, epochs, lr, seed, seed_images=seed_images, rounds=rounds,
                                       step=step), derive, architecture, "labels",
                   f"top-1 labels; {seed_images * 2**rounds} queries grown from {seed_images} of the attacker's own "
                   "images")


def transfer_images(transfer: str, n: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """`n` images `[n, *shape]` in [0, 1] from another distribution: scikit-learn's digits (1,797, stretched
    bilinearly to the task's size and channels; drawn without replacement) or uniform noise."""
    generator = torch.Generator().manual_seed(seed)
    channels, height, width = shape
    if transfer == "noise":
        return torch.rand(n, *shape, generator=generator)
    digits = load_dataset("digits")
    pool = torch.cat([digits.train.x, digits.val.x, digits.test.x])
    if n > len(pool):
        raise ConfigError(f"budget={n} exceeds the {len(pool)} images of the digits transfer set")
    picked = pool[torch.randperm(len(pool), generator=generator)[:n]]
    return F.interpolate(picked, size=(height, width), mode="bilinear", align_corners=False).repeat(1, channels, 1, 1)


@REMOVALS.register("knockoff")
def knockoff(transfer: str = "digits", budget: int = 1797, architecture: str = "lenet5", epochs: int = 20,
             lr: float = 1e-3, seed: int = 0) -> Removal:
    """Knockoff Nets with random selection: `budget` images of the `transfer` set ("digits" or "noise"), the API's
    probability vectors as soft targets; a tenth of them, labelled the same way, for validation."""
    transfer = check_choice("transfer", transfer, TRANSFER_SETS)
    budget = check_int("budget", budget, minimum=10)

    def derive(api: SourceAPI, attacker: DataSplits) -> Classifier:
        x = transfer_images(transfer, budget, tuple(attacker.train.x.shape[1:]), seed)  # type: ignore[arg-type]
        probabilities = api.probabilities(x)
        n_val = budget // 10
        own = DataSplits(f"knockoff-{transfer}", Split(x[n_val:], probabilities[n_val:].argmax(1)),
                         Split(x[:n_val], probabilities[:n_val].argmax(1)), attacker.test, api.num_classes)
        return train_on_probabilities(architecture, own, probabilities[n_val:], own.val, epochs, lr, seed)

    return Removal("knockoff", _params(architecture, epochs, lr, seed, transfer=transfer, budget=budget), derive,
                   architecture, "probabilities",
                   f"probability vectors; {budget} queries of {transfer} images, none of the task's own")


def merged_task(data: DataSplits) -> DataSplits:
    """The attacker's own task with a different label set: its images with true labels merged in pairs
    ({0, 1} -> 0, {2, 3} -> 1, ...)."""
    def merged(split: Split) -> Split:
        return Split(split.x, split.y // 2)

    return DataSplits(f"{data.name}-pairs", merged(data.train), merged(data.val), merged(data.test),
                      (data.num_classes + 1) // 2)


def with_new_head(pretrained: Classifier, architecture: str, data: DataSplits, seed: int) -> Classifier:
    """`architecture` for `data`'s classes holding `pretrained`'s weights everywhere but the output layer, which is
    freshly initialised (seeded)."""
    model = build_classifier(architecture, data, seed)
    last = last_linear(pretrained)
    head = {f"module.{name}.{p}" for name, m in pretrained.module.named_modules() if m is last
            for p in ("weight", "bias")}
    state = {k: v for k, v in pretrained.state_dict().items() if k not in head and k not in ("mean", "std")}
    model.load_state_dict(state, strict=False)
    return model


@REMOVALS.register("transfer")
def transfer_learning(pretrain_epochs: int = 4, architecture: str = "lenet5", epochs: int = 1, lr: float = 1e-3,
                      seed: int = 0) -> Removal:
    """Transfer learning: `pretrain_epochs` on the attacker's own 5-class task (true labels), a new output layer,
    then `epochs` on the API's labels of its images."""
    pretrain_epochs = check_int("pretrain_epochs", pretrain_epochs)

    def derive(api: SourceAPI, attacker: DataSplits) -> Classifier:
        task = merged_task(attacker)
        pretrained = train_from_scratch(architecture, task, task.train, task.val, pretrain_epochs, lr, seed)
        model = with_new_head(pretrained, architecture, attacker, seed)
        train(model, source_labels(api, attacker.train), source_labels(api, attacker.val),
              training_config(epochs, lr, seed), progress=False)
        return model

    return Removal("transfer", _params(architecture, epochs, lr, seed, pretrain_epochs=pretrain_epochs), derive,
                   architecture, "labels",
                   "top-1 labels; one query per image of the attacker's own data, which it has also labelled "
                   "for a task of its own")

