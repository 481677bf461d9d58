"""Model checkpoints (safetensors weights + JSON metadata) and loading of user models.

A checkpoint is a directory holding `model.safetensors` and `model.json` (architecture and its arguments, dataset,
normalisation, bounds, feature layers, clean test accuracy, training config, versions, git hash). Nothing is
pickled. User models come from a TorchScript file or from an import path `package.module:factory` plus weights.
"""
from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from neuroprint.data import DataSplits
from neuroprint.errors import ConfigError, InputError
from neuroprint.io import atomic_path, git_commit, read_json, versions, write_json
from neuroprint.models.classifier import Classifier
from neuroprint.models.probes import NeuralFPProbes
from neuroprint.models.training import Perturb, TrainConfig, accuracy, train
from neuroprint.registry import MODELS

WEIGHTS, META, PROBES = "model.safetensors", "model.json", "probes.safetensors"
#: Checkpoints that ship inside the package, trained by `neuroprint train` / `load_or_train` and named by their
#: `model_key`: `load_or_train` uses one when the requested configuration matches it exactly.
SHIPPED_WEIGHTS = Path(__file__).parent / "weights"


def save_checkpoint(classifier: Classifier, directory: str | Path, meta: dict[str, Any]) -> None:
    """Write `classifier`'s weights and `meta` (must include `architecture` and `arch_kwargs`) atomically; a
    NeuralFP classifier's probes go to `probes.safetensors`, their settings to `model.json`."""
    probes = classifier.probes
    full = {
        **meta,
        "bounds": list(classifier.bounds),
        "mean": classifier.mean.flatten().tolist(),
        "std": classifier.std.flatten().tolist(),
        "layers": list(classifier.layers),
        "num_classes": classifier.num_classes,
        "versions": versions(),
        "git": git_commit(),
        "probes": None if probes is None else probes.meta(),
    }
    state = {k: v.detach().contiguous().cpu() for k, v in classifier.module.state_dict().items()}
    with atomic_path(directory, directory=True) as tmp:
        save_file(state, str(tmp / WEIGHTS))
        if probes is not None:
            save_file(probes.tensors(), str(tmp / PROBES))
        write_json(tmp / META, full)


def load_checkpoint(directory: str | Path) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild a `Classifier` from a checkpoint directory written by `save_checkpoint`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"expected a checkpoint directory at {directory} (with {META} and {WEIGHTS}); it does not exist")
    meta = read_json(directory / META)
    for key in ("architecture", "arch_kwargs", "mean", "std", "bounds", "layers"):
        if key not in meta:
            raise InputError(f"{directory / META} lacks the field {key!r}; is it a neuroprint checkpoint?")
    module = build_architecture(meta["architecture"], meta["arch_kwargs"])
    _load_weights(module, directory / WEIGHTS)
    clf = Classifier(module, bounds=tuple(meta["bounds"]), mean=meta["mean"], std=meta["std"], layers=meta["layers"])
    if meta.get("probes") is not None:
        clf.probes = NeuralFPProbes.from_stored(_read_safetensors(directory / PROBES, "NeuralFP probes"), meta["probes"])
    return clf, meta


def load_user_model(
    source: str,
    weights: str | Path | None = None,
    *,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    layers: list[str] | None = None,
    num_classes: int | None = None,
) -> Classifier:
    """Wrap a user's model: a TorchScript file (`model.pt`), or `package.module:factory` with a weights file.

    Weights are read from safetensors, or from a state dict with `torch.load(weights_only=True)` (never a full
    pickle). The model must take normalised inputs; pass the `mean`/`std` it expects.
    """
    if ":" in source and not Path(source).exists():
        module = build_architecture(source, {})
        if weights is not None:
            _load_weights(module, Path(weights))
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"expected a TorchScript model file at {path}, or an import path 'package.module:factory'")
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as exc:
            raise InputError(f"{path} is not a TorchScript model ({str(exc).splitlines()[0]})") from None
    return Classifier(module, mean=mean, std=std, layers=layers, num_classes=num_classes)


def build_architecture(architecture: str, arch_kwargs: dict[str, Any]) -> nn.Module:
    """An untrained network: a zoo architecture by name (`MODELS`), or a user's import path
    `package.module:factory` (e.g. `torchvision.models:resnet50`) called with `arch_kwargs`."""
    if ":" not in architecture:
        return MODELS.create(architecture, **arch_kwargs)
    module_name, _, attr = architecture.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import model factory {architecture!r} ({exc}); expected 'package.module:factory'") from None
    module = factory(**arch_kwargs)
    if not isinstance(module, nn.Module):
        raise ConfigError(f"{architecture} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (or of a `weights_only` torch file), with one-line errors naming `what`."""
    if not path.is_file():
        raise InputError(f"expected {what} at {path}, but the file does not exist")
    try:
        return load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (safetensors and torch raise several types on corrupt files)
        raise InputError(f"cannot read {what} from {path} ({str(exc).splitlines()[0]})") from None


def _load_weights(module: nn.Module, path: Path) -> None:
    state = _read_safetensors(path, "model weights")
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"weights in {path} do not fit the architecture: {str(exc).splitlines()[0]}") from None


def model_key(architecture: str, dataset: str, config: TrainConfig, arch_kwargs: dict[str, Any]) -> str:
    """Cache key of a trained model: a short hash of everything that decides its weights."""
    settings = asdict(config)
    if settings["probes"] is None:  # plain models keep the keys they had before NeuralFP existed
        del settings["probes"]
    blob = json.dumps({"a": architecture, "d": dataset, "k": arch_kwargs, "c": settings}, sort_keys=True)
    return f"{architecture}-{dataset}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def architecture_kwargs(architecture: str, data: DataSplits) -> dict[str, Any]:
    """The arguments that fit zoo `architecture` to `data`'s image shape and class count."""
    c, h, _ = data.image_shape
    kwargs: dict[str, Any] = {"in_channels": c, "num_classes": data.num_classes}
    if "image_size" in MODELS.parameters(architecture):
        kwargs["image_size"] = h
    return kwargs


def build_classifier(architecture: str, data: DataSplits, seed: int) -> Classifier:
    """A freshly initialised (seeded) zoo `architecture` for `data`, normalised with its training statistics."""
    torch.manual_seed(seed)
    return Classifier(MODELS.create(architecture, **architecture_kwargs(architecture, data)), mean=data.mean, std=data.std)


def train_model(
    architecture: str, data: DataSplits, config: TrainConfig, progress: bool = True, device: str = "cpu",
    perturb: Perturb | None = None,
) -> tuple[Classifier, dict[str, Any]]:
    """Train a zoo architecture on `data` on `device` (on `perturb`'s inputs in place of each batch, e.g.
    `attacks.training.adversarial_training`); returns the classifier and its checkpoint metadata."""
    clf = build_classifier(architecture, data, config.seed).to(device)
    history = train(clf, data.train, data.val, config, progress=progress, perturb=perturb)
    meta = {
        "architecture": architecture,
        "arch_kwargs": architecture_kwargs(architecture, data),
        "dataset": data.name,
        "train_config": asdict(config),
        "val_accuracy": history.val_accuracy,
        "epoch_seconds": history.epoch_seconds,
        "probe_loss": history.probe_loss,
        "clean_accuracy": accuracy(clf, data.test),
    }
    return clf, meta


def load_or_train(
    architecture: str,
    data: DataSplits,
    config: TrainConfig,
    cache_dir: str | Path = "runs/cache/models",
    progress: bool = True,
    device: str = "cpu",
) -> tuple[Classifier, dict[str, Any], Path]:
    """Reuse the cached (or shipped, `SHIPPED_WEIGHTS`) model for this exact configuration, or train and cache it.
    Returns (model, meta, dir)."""
    c, h, _ = data.image_shape
    key_kwargs = {"in_channels": c, "num_classes": data.num_classes, "image_size": h}
    key = model_key(architecture, data.name, config, key_kwargs)
    for directory in (Path(cache_dir) / key, SHIPPED_WEIGHTS / key):
        if (directory / META).is_file():
            clf, meta = load_checkpoint(directory)
            return clf.to(device), meta, directory
    directory = Path(cache_dir) / key
    clf, meta = train_model(architecture, data, config, progress, device)
    save_checkpoint(clf, directory, meta)
    return clf, meta, directory
