"""`AdversarialSet`: adversarial images with their provenance, saved as `<path>.safetensors` + `<path>.json`.

Policy: attacks are run only on images the classifier labels correctly (an already misclassified image is not an
adversarial example). `build_adversarial_set` applies that filter and records each kept image's index in the
split it came from, so detectors can pair every adversarial image with its clean source.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from neuroprint.attacks.base import Attack, check_labels
from neuroprint.distributed import SINGLE, Ranks
from neuroprint.errors import InputError
from neuroprint.io import atomic_path, read_json, versions, write_json
from neuroprint.models.classifier import Classifier

FORMAT_VERSION = 1
_TENSORS = ("x_adv", "source_index", "y_true", "clean_pred", "adv_pred", "success", "l2", "linf")


@dataclass
class AdversarialSet:
    """`N` attacked images: `x_adv` `[N, C, H, W]` float in the classifier's bounds, and per image `[N]`:
    `source_index` (int64 index into split `split`), `y_true`, `clean_pred`, `adv_pred` (int64), `success` (bool,
    ``adv_pred != y_true``), `l2` and `linf` (float, pixel units). `attack` and `params` name the attack that made
    it; `meta` is free-form JSON-serialisable provenance (dataset, model, counts, ...).
    """

    x_adv: torch.Tensor
    source_index: torch.Tensor
    y_true: torch.Tensor
    clean_pred: torch.Tensor
    adv_pred: torch.Tensor
    success: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    attack: str
    params: dict[str, Any]
    split: str = "test"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x_adv.ndim != 4:
            raise InputError(f"x_adv must have shape [N, C, H, W], got {list(self.x_adv.shape)}")
        n = len(self.x_adv)
        for name in _TENSORS[1:]:
            if getattr(self, name).shape != (n,):
                raise InputError(f"{name} must have shape [{n}] like x_adv, got {list(getattr(self, name).shape)}")
        if self.success.dtype != torch.bool:
            raise InputError(f"success must be a bool tensor, got dtype {self.success.dtype}")

    def __len__(self) -> int:
        return len(self.x_adv)

    @property
    def success_rate(self) -> float:
        """Share of attacked images that the classifier now misclassifies."""
        return float(self.success.float().mean()) if len(self) else 0.0

    @property
    def mean_l2(self) -> float:
        """Mean L2 perturbation over successful examples (NaN when there are none)."""
        return float(self.l2[self.success].mean()) if bool(self.success.any()) else math.nan

    @property
    def mean_linf(self) -> float:
        """Mean L-inf perturbation over successful examples (NaN when there are none)."""
        return float(self.linf[self.success].mean()) if bool(self.success.any()) else math.nan

    def successful(self) -> AdversarialSet:
        """The subset of examples on which the attack succeeded."""
        return self.subset(self.success)

    def subset(self, index: torch.Tensor) -> AdversarialSet:
        """The examples selected by `index` (a bool mask or int indices), with the same provenance."""
        picked = {name: getattr(self, name)[index] for name in _TENSORS}
        return AdversarialSet(**picked, attack=self.attack, params=dict(self.params), split=self.split, meta=dict(self.meta))

    def summary(self) -> dict[str, Any]:
        """Attack name, params, size and quality figures as a JSON-ready dict."""
        return {
            "attack": self.attack,
            "params": self.params,
            "split": self.split,
            "n": len(self),
            "success_rate": self.success_rate,
            "mean_l2": _json_float(self.mean_l2),
            "mean_linf": _json_float(self.mean_linf),
        }

    def save(self, path: str | Path) -> None:
        """Write `<path>.safetensors` (tensors) then `<path>.json` (provenance), each atomically."""
        from safetensors.torch import save_file

        base = _base(path)
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in _TENSORS}
        with atomic_path(base.with_name(base.name + ".safetensors")) as tmp:
            save_file(tensors, str(tmp))
        write_json(
            base.with_name(base.name + ".json"),
            {**self.summary(), "format_version": FORMAT_VERSION, "meta": self.meta, "versions": versions()},
        )

    @classmethod
    def load(cls, path: str | Path) -> AdversarialSet:
        """Read a set written by `save`; a missing, corrupt or inconsistent file raises `InputError` naming it."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        base = _base(path)
        config_path, tensor_path = base.with_name(base.name + ".json"), base.with_name(base.name + ".safetensors")
        config = read_json(config_path)
        if not isinstance(config, dict) or config.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{config_path} is not an adversarial-set file of format version {FORMAT_VERSION}")
        if not tensor_path.is_file():
            raise InputError(f"expected adversarial images at {tensor_path}, but it does not exist")
        try:
            tensors = load_file(str(tensor_path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise InputError(f"{tensor_path} is not a readable safetensors file ({exc})") from None
        missing = [name for name in _TENSORS if name not in tensors]
        if missing:
            raise InputError(f"{tensor_path} lacks tensor(s) {', '.join(missing)}")
        try:
            loaded = cls(
                **{name: tensors[name] for name in _TENSORS},
                attack=str(config["attack"]),
                params=dict(config["params"]),
                split=str(config["split"]),
                meta=dict(config.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{config_path} or {tensor_path} is inconsistent ({exc})") from None
        if len(loaded) != config.get("n"):
            raise InputError(f"{tensor_path} holds {len(loaded)} images but {config_path} says {config.get('n')}")
        return loaded


def build_adversarial_set(
    classifier: Classifier,
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    source_index: torch.Tensor | None = None,
    split: str = "test",
    batch_size: int = 256,
    progress: bool = False,
    meta: dict[str, Any] | None = None,
    ranks: Ranks = SINGLE,
) -> AdversarialSet:
    """Attack the images of `x` `[N, C, H, W]` that `classifier` labels correctly (true labels `y` `[N]`).

    `source_index` `[N]` gives each image's index in split `split` (default ``arange(N)``). `meta` gains
    `n_input` and `n_correct` (the clean images offered and kept). Raises `InputError` if none is correct.
    With `ranks` of a torchrun job the attack is sharded across them (`Attack.__call__`); every rank gets the set.

    Example:
        >>> adv = build_adversarial_set(clf, make_attack("pgd"), data.test.x[:500], data.test.y[:500])
        >>> adv.save("runs/mnist-pgd")
    """
    classifier.check_input(x)
    y = check_labels(y, len(x), classifier.num_classes)
    if source_index is None:
        source_index = torch.arange(len(x))
    if (not isinstance(source_index, torch.Tensor) or source_index.shape != (len(x),)
            or source_index.is_floating_point() or source_index.dtype == torch.bool):
        shape = list(source_index.shape) if isinstance(source_index, torch.Tensor) else type(source_index).__name__
        raise InputError(f"source_index must be an integer tensor of shape [{len(x)}] (one per image), got {shape}")
    source_index = source_index.detach().cpu().long()
    correct = classifier.predict(x, batch_size) == y
    if not bool(correct.any()):
        raise InputError(f"none of the {len(x)} images is classified correctly; there is nothing to attack")
    result = attack(classifier, x[correct], y[correct], batch_size=batch_size, progress=progress, ranks=ranks)
    return AdversarialSet(
        x_adv=result.x_adv,
        source_index=source_index[correct],
        y_true=y[correct],
        clean_pred=result.clean_pred,
        adv_pred=result.adv_pred,
        success=result.success,
        l2=result.l2,
        linf=result.linf,
        attack=attack.name,
        params=dict(attack.params),
        split=split,
        meta={**(meta or {}), "n_input": len(x), "n_correct": int(correct.sum())},
    )


def _base(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".json", ".safetensors") else path


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else value
