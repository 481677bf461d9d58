"""Supervised training of a `Classifier` (Adam, cross-entropy, step learning-rate drop, eval each epoch)."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from neuroprint.data.base import Split
from neuroprint.errors import ConfigError
from neuroprint.models.classifier import Classifier
from neuroprint.models.probes import NeuralFPProbes, ProbeConfig, probe_loss, probe_responses


@dataclass
class TrainConfig:
    """Training hyperparameters. Defaults reach >= 99.0% test accuracy on MNIST with `mnist-net` (4 epochs)."""

    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-3
    lr_drop_epoch: int = 3  # multiply lr by 0.1 from this epoch on (0-based); accuracy wobbles without it
    seed: int = 0
    probes: ProbeConfig | None = None  # NeuralFP: train the model to respond to secret probes

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


@dataclass
class TrainHistory:
    train_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    probe_loss: list[float] = field(default_factory=list)  # NeuralFP L_fp per epoch (training mean)
    epoch_seconds: list[float] = field(default_factory=list)


def accuracy(classifier: Classifier, split: Split, batch_size: int = 128) -> float:
    """Share of `split` images that `classifier` labels correctly (batches of 128 run about twice as fast on a CPU
    as batches of 512: they stay in cache)."""
    return float((classifier.predict(split.x, batch_size) == split.y).float().mean())


#: Replaces a training batch `x` (labels `y`) by other inputs, e.g. PGD examples for adversarial training.
Perturb = Callable[[Classifier, torch.Tensor, torch.Tensor], torch.Tensor]


def train(
    classifier: Classifier,
    train_split: Split,
    val_split: Split,
    config: TrainConfig,
    progress: bool = True,
    perturb: Perturb | None = None,
    soft_targets: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> TrainHistory:
    """Train `classifier` in place on `train_split`, reporting validation accuracy after each epoch.

    Parameters with ``requires_grad=False`` stay frozen. `perturb` (evaluated with the model in eval mode) replaces
    each batch before the step: adversarial training passes an attack here. `soft_targets` `[N, K]` (probability
    vectors, one per training image) replace the labels in the loss, which becomes the distillation loss of
    Hinton et al. 2015 (arXiv 1503.02531): temperature^2 * cross-entropy(logits / temperature, soft_targets).

    With `config.probes` set (NeuralFP, Dathathri et al. eq. 14) the loss is cross-entropy + weight * L_fp,
    evaluated in one forward pass over each batch and its n probe-perturbed copies; the probes are drawn from
    the config (unless the classifier already holds some) and attached to `classifier.probes`.
    """
    if soft_targets is not None and soft_targets.shape != (len(train_split), classifier.num_classes):
        raise ConfigError(f"soft_targets must be [{len(train_split)}, {classifier.num_classes}] (one probability "
                          f"vector per training image), got {list(soft_targets.shape)}")
    probes = _attach_probes(classifier, config.probes, train_split)
    classifier.to(memory_format=torch.channels_last)  # ~1.3x faster CPU convolutions (docs/benchmarks/speed.md, training)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam([p for p in classifier.parameters() if p.requires_grad], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [config.lr_drop_epoch], gamma=0.1)
    loss_fn = nn.CrossEntropyLoss()
    history = TrainHistory()
    n = len(train_split)
    for epoch in range(config.epochs):
        classifier.train()
        order = torch.randperm(n, generator=generator)
        total, total_probe, started = 0.0, 0.0, time.perf_counter()
        bar = tqdm(range(0, n, config.batch_size), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, unit="batch")
        for start in bar:
            idx = order[start : start + config.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x, y = train_split.x[idx].to(classifier.device), train_split.y[idx].to(classifier.device)
            if perturb is not None:
                classifier.eval()
                x = perturb(classifier, x, y).detach()
                classifier.train()
            optimizer.zero_grad()
            if soft_targets is not None:
                targets = soft_targets[idx].to(classifier.device)
                loss = temperature**2 * loss_fn(classifier(x) / temperature, targets)
            elif probes is None:
                loss = loss_fn(classifier(x), y)
            else:
                directions = _directions(probes, generator)
                logits, responses = probe_responses(classifier, x, probes, classifier.bounds, directions)
                l_probe = probe_loss(responses, y, probes, directions)
                loss = loss_fn(logits, y) + probes.config.weight * l_probe
                total_probe += float(l_probe.detach()) * len(idx)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            if probes is not None and start % (20 * config.batch_size) == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", probe_loss=f"{float(l_probe.detach()):.3f}", refresh=False)
        scheduler.step()
        classifier.eval()
        history.epoch_seconds.append(time.perf_counter() - started)
        history.train_loss.append(total / n)
        history.val_accuracy.append(accuracy(classifier, val_split))
        message = f"epoch {epoch + 1}: loss {history.train_loss[-1]:.4f}, val accuracy {history.val_accuracy[-1]:.4f}"
        if probes is not None:
            history.probe_loss.append(total_probe / n)
            message += f", probe loss {history.probe_loss[-1]:.4f}"
        if progress:
            tqdm.write(message)
    classifier.to(memory_format=torch.contiguous_format)  # safetensors stores contiguous tensors only
    classifier.eval()
    return history


def _attach_probes(classifier: Classifier, config: ProbeConfig | None, train_split: Split) -> NeuralFPProbes | None:
    """The probes to train with: the classifier's own, or new ones drawn from `config` and attached."""
    if config is None:
        return None
    if classifier.probes is None:
        shape = tuple(train_split.x.shape[1:])
        classifier.probes = NeuralFPProbes.sample(config, shape, classifier.num_classes)  # type: ignore[arg-type]
    return classifier.probes


def _directions(probes: NeuralFPProbes, generator: torch.Generator) -> torch.Tensor | None:
    """The probe directions one training step evaluates: all (None), or a fresh draw of `per_step`."""
    per_step = probes.config.per_step
    if per_step is None or per_step == probes.n:
        return None
    return torch.randperm(probes.n, generator=generator)[:per_step]
