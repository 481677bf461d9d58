"""`fit_guard`: fit detectors on a checkpoint's validation images and calibrate each at a chosen clean FPR.

The images follow the evaluation protocol (`evaluation.protocol.fit_splits`): `n_fit` validation sources cut in
two disjoint halves, the correctly classified clean half split into images to fit on and a quarter held out for
the thresholds, the other half attacked with every `attacks` spec (successful examples only). The clean FPR each
threshold reaches is then measured on correctly classified test images that took no part in fitting.

Example:
    >>> guard = fit_guard(GuardConfig(checkpoint="runs/models/mnist-net", detectors=["bank", "mahalanobis"]))
    >>> guard.save("runs/guard")
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from neuroprint.attacks import build_adversarial_set, make_attack
from neuroprint.checks import check_choice, check_float, check_int
from neuroprint.data import DataSplits, load_dataset
from neuroprint.detectors import DETECTORS, Detector, make_detector
from neuroprint.errors import ConfigError, InputError
from neuroprint.evaluation.splits import correct_clean, draw_sources, fit_splits
from neuroprint.guard.guard import DRAWS, Draws, Guard, checkpoint_digest, set_draws
from neuroprint.models.checkpoint import load_checkpoint
from neuroprint.models.classifier import Classifier
from neuroprint.specs import parse_spec

Log = Callable[[str], None]
KEYS = ("secret", "seed")


@dataclass
class GuardConfig:
    """What to fit. `dataset` None means the dataset named in the checkpoint (`model.json`); `fpr` in (0, 1) is the
    share of clean images each detector may flag; `draws` is how randomized detectors draw when calibrated;
    `key` "secret" (default) fits every detector that takes a `secret_key` (the bank) from a seed drawn from the
    OS CSPRNG and kept nowhere, "seed" from `seed` (reproducible, and rebuildable by anyone who knows the seed)."""

    checkpoint: str | Path
    detectors: list[str] = field(default_factory=lambda: ["bank"])
    attacks: list[str] = field(default_factory=lambda: ["pgd"])
    dataset: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    fpr: float = 0.05
    n_fit: int = 1000
    n_test: int = 1000
    seed: int = 0
    draws: Draws = "secure"
    batch_size: int = 256
    key: str = "secret"

    def __post_init__(self) -> None:
        if not self.detectors:
            raise ConfigError("at least one detector is needed (--detector NAME); see `neuroprint list`")
        if not self.attacks:
            raise ConfigError("at least one attack is needed to fit on (--attack NAME); see `neuroprint list`")
        check_float("fpr", self.fpr, 0.0, 1.0)
        if self.fpr >= 1.0:
            raise ConfigError(f"fpr must be in (0, 1), got {self.fpr}")
        check_int("n_fit", self.n_fit, 8)
        check_int("n_test", self.n_test, 0)
        check_choice("draws", self.draws, DRAWS)
        check_choice("key", self.key, KEYS)
        for spec in self.attacks:  # fail on bad names before loading anything
            make_attack(spec)
        for spec in self.detectors:
            self.detector(spec)

    def detector(self, spec: str) -> Detector:
        """A fresh detector for `spec`, seeded with `seed` and keyed as `key` says, unless the spec sets
        `random_state` or `secret_key` itself."""
        name, params = parse_spec(spec)
        accepted = DETECTORS.parameters(name) if name in DETECTORS else []
        if "random_state" in accepted:
            params = {"random_state": self.seed, **params}
        if "secret_key" in accepted:
            params = {"secret_key": self.key == "secret", **params}
        return make_detector(name, **params)


def detector_keys(specs: list[str]) -> list[str]:
    """Unique keys for detector specs: the detector's name, with -2, -3, ... for repeats (bank, bank-2)."""
    keys: list[str] = []
    for spec in specs:
        name = parse_spec(spec)[0]
        key, n = name, 1
        while key in keys:
            n += 1
            key = f"{name}-{n}"
        keys.append(key)
    return keys


def fit_guard(config: GuardConfig, progress: bool = True, log: Log = print) -> Guard:
    """Fit and calibrate every detector of `config` on its checkpoint; returns the guard (not yet saved)."""
    classifier, model_meta = load_checkpoint(config.checkpoint)
    dataset = config.dataset or model_meta.get("dataset")
    if not dataset:
        raise ConfigError(f"the checkpoint {config.checkpoint} names no dataset; pass --dataset (and --data-path)")
    data = load_dataset(dataset, **config.dataset_options)
    _check_fits_model(classifier, data, dataset)
    fit_clean, calib, attack_index = fit_splits(classifier, data.val, config.n_fit, config.seed)
    if len(calib) < 2 or len(fit_clean) < 2:
        raise InputError(f"only {len(fit_clean) + len(calib)} correctly classified clean validation images; "
                         f"raise --n-fit (now {config.n_fit})")
    x_adv, attack_records = _attacked(classifier, data, attack_index, config, progress, log)
    detectors: dict[str, Detector] = {}
    for key, spec in zip(detector_keys(config.detectors), config.detectors):
        detector = config.detector(spec)
        if detector.needs_training_data:
            detector.set_training_data(data.train.x, data.train.y)
        log(f"fit {spec} on {len(fit_clean)} clean + {len(x_adv)} adversarial validation images")
        detector.fit(classifier, fit_clean.x, fit_clean.y, x_adv if detector.needs_adversarial_examples else None)
        set_draws(detector, config.draws)
        detectors[key] = detector.calibrate(calib.x, fpr=config.fpr)
    meta = {
        "model": {"checkpoint": str(Path(config.checkpoint).resolve()), "sha256": checkpoint_digest(config.checkpoint),
                  "architecture": model_meta.get("architecture"), "clean_accuracy": model_meta.get("clean_accuracy")},
        "image_shape": list(data.image_shape),
        "num_classes": classifier.num_classes,
        "fpr": config.fpr,
        "draws": config.draws,
        "fit": {"dataset": dataset, "dataset_options": config.dataset_options, "n_fit": config.n_fit,
                "seed": config.seed, "n_fit_clean": len(fit_clean), "n_calibration": len(calib),
                "attacks": attack_records, "specs": list(config.detectors)},
    }
    guard = Guard(classifier, detectors, meta, config.draws)
    guard.meta["test_fpr"] = _test_fpr(guard, classifier, data, config)
    return guard


def _check_fits_model(classifier: Classifier, data: DataSplits, dataset: str) -> None:
    """Raise `InputError` in one line when `data`'s images do not fit the model (shape or class count)."""
    try:
        width = classifier(data.val.x[:1]).shape[1]
    except RuntimeError as exc:
        raise InputError(f"the model cannot take {dataset} images of shape {list(data.image_shape)} "
                         f"({str(exc).splitlines()[0]})") from None
    if width < data.num_classes:
        raise InputError(f"{dataset} has {data.num_classes} classes but the model outputs {width}")


def _attacked(classifier: Classifier, data: DataSplits, index: torch.Tensor, config: GuardConfig, progress: bool,
              log: Log) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Successful adversarial examples of every attack on `data.val[index]`, and a record per attack."""
    parts, records = [], []
    for spec in config.attacks:
        log(f"attack {spec} on {len(index)} validation images")
        adv = build_adversarial_set(classifier, make_attack(spec), data.val.x[index], data.val.y[index],
                                    source_index=index, split="val", batch_size=config.batch_size, progress=progress)
        parts.append(adv.x_adv[adv.success])
        records.append({"spec": spec, "n_attacked": len(adv), "n_success": int(adv.success.sum())})
    x_adv = torch.cat(parts)
    if len(x_adv) == 0:
        raise InputError(f"no attack ({', '.join(config.attacks)}) succeeded on any validation image; "
                         f"a detector needs successful adversarial examples to fit on")
    return x_adv, records


def _test_fpr(guard: Guard, classifier: Classifier, data: DataSplits, config: GuardConfig) -> dict[str, Any]:
    """The share of correctly classified clean test images each detector (and any of them) flags."""
    if config.n_test == 0:
        return {}
    clean_index, _ = draw_sources(len(data.test), 2 * config.n_test, config.seed + 1)
    clean = correct_clean(classifier, data.test, clean_index)
    flags = [guard.score(clean.x[i : i + config.batch_size]) for i in range(0, len(clean), config.batch_size)]
    out: dict[str, Any] = {key: float(torch.cat([f.flags[key] for f in flags]).float().mean()) for key in guard.detectors}
    out["any"] = float(torch.cat([f.flagged for f in flags]).float().mean())
    out["n_images"] = len(clean)
    return out
