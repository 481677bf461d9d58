"""The leakage-free evaluation protocol: every detector on every attack, fit on validation, tested on test.

- Source images: `n_fit` validation and `n_test` test images are drawn (seeded) and cut into two disjoint halves:
  one half is scored as clean, the other half is attacked. No image is both a clean and an attacked sample, and
  no test image is ever seen while fitting.
- Only correctly classified clean images count, and only successful adversarial examples (success rates are
  reported beside the detection metrics).
- Detectors are fit on validation clean + validation adversarial examples; thresholds come from the scores of
  clean validation images held out from fitting (a quarter of them: images a detector was fit on look "too
  clean", e.g. Mahalanobis' Gaussians, and would give a threshold with the wrong false-positive rate). With `fit_attacks`, every detector is fit once on those attacks and tested on all attacks
  (unseen-attack generalisation).
- Trained models and adversarial sets are cached on disk, keyed by their configuration.
- A detector that reads only activations (`Detector.feature_spec`) is fit and scored on activations extracted
  once per image set and shared with the other detectors that read the same ones (`evaluation.inputs`).
- Under torchrun (`neuroprint.distributed`) every rank attacks its shard of the source images and extracts the
  activations of its shard; the main rank fits, scores and reports. The result is the single-process one whatever
  the number of ranks.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuroprint.attacks import AdversarialSet, build_adversarial_set, make_attack
from neuroprint.checks import check_int
from neuroprint.data import DataSplits, Split, load_dataset
from neuroprint.detectors import DETECTORS, Detector, make_detector
from neuroprint.distributed import SINGLE, Ranks, muted
from neuroprint.errors import ConfigError, InputError
from neuroprint.evaluation import inputs, metrics
from neuroprint.evaluation.examples import Example, pick_examples
from neuroprint.evaluation.results import AttackSummary, DetectionResult, EvalReport
from neuroprint.evaluation.splits import ProtocolSplits, protocol_splits
from neuroprint.models.checkpoint import load_checkpoint, load_or_train
from neuroprint.models.classifier import Classifier
from neuroprint.models.training import TrainConfig, accuracy
from neuroprint.specs import parse_spec

Log = Callable[[str], None]
N_EXAMPLES = 6  # attacked test images per attack kept in the record for the report's example grid


@dataclass
class EvalConfig:
    """What to evaluate. `model` is a zoo architecture (trained and cached) or a checkpoint directory."""

    dataset: str = "mnist"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    model: str = "mnist-net"
    train: TrainConfig = field(default_factory=TrainConfig)
    attacks: list[str] = field(default_factory=lambda: ["fgsm", "pgd"])
    detectors: list[str] = field(default_factory=lambda: ["lid", "mahalanobis"])
    fit_attacks: list[str] | None = None
    n_fit: int = 1000
    n_test: int = 1000
    seed: int = 0
    batch_size: int = 256
    cache_dir: Path = Path("runs/cache")
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.attacks:
            raise ConfigError("at least one attack is needed (--attack NAME); see `neuroprint list`")
        if not self.detectors:
            raise ConfigError("at least one detector is needed (--detector NAME); see `neuroprint list`")
        for name in ("n_fit", "n_test"):
            if getattr(self, name) < 4:
                raise ConfigError(f"{name} must be >= 4 source images, got {getattr(self, name)}")
        check_int("batch_size", self.batch_size)
        unknown = [a for a in self.fit_attacks or [] if a not in self.attacks]
        if unknown:
            raise ConfigError(f"fit attack(s) {unknown} must also be among the evaluated attacks {self.attacks}")
        for spec in self.attacks:  # fail on bad names and values before any training or attacking
            make_attack(spec)
        for spec in self.detectors:
            self.detector(spec)

    def detector(self, spec: str) -> Detector:
        """A fresh detector for `spec`, seeded with `seed` unless the spec sets `random_state` itself (or the
        detector has no randomness to seed)."""
        name, params = parse_spec(spec)
        if name in DETECTORS and "random_state" in DETECTORS.parameters(name):
            params = {"random_state": self.seed, **params}
        return make_detector(name, **params)


def cached_adversarial_set(
    classifier: Classifier,
    model_tag: str,
    spec: str,
    split: Split,
    split_name: str,
    index: torch.Tensor,
    cache_dir: Path,
    batch_size: int,
    progress: bool,
    ranks: Ranks = SINGLE,
) -> tuple[AdversarialSet, float]:
    """Attack `split[index]` with `spec` (correctly classified images only), reusing a cached result.

    Returns the set and the seconds the attack took (0 when it came from the cache). With `ranks` of a torchrun
    job, the main rank's look into the cache decides for all, the attack is sharded and the main rank writes it.
    """
    attack = make_attack(spec)
    key_blob = json.dumps(
        {"model": model_tag, "attack": attack.name, "params": attack.params, "split": split_name, "index": index.tolist()},
        sort_keys=True,
        default=str,
    )
    key = hashlib.sha256(key_blob.encode()).hexdigest()[:16]
    path = cache_dir / "adv" / model_tag / f"{attack.name}-{split_name}-{key}"
    if ranks.agree(Path(f"{path}.json").is_file()):
        return AdversarialSet.load(path), 0.0
    start = time.perf_counter()
    adv = build_adversarial_set(
        classifier, attack, split.x[index], split.y[index], source_index=index, split=split_name,
        batch_size=batch_size, progress=progress, ranks=ranks,
    )
    seconds = time.perf_counter() - start
    adv.meta["seconds"] = seconds
    if ranks.main:
        adv.save(path)
    return adv, seconds


def _summary(spec: str, adv: AdversarialSet, split_name: str, seconds: float) -> AttackSummary:
    return AttackSummary(
        name=adv.attack,
        spec=spec,
        params=adv.params,
        split=split_name,
        n_attacked=len(adv),
        n_success=int(adv.success.sum()),
        success_rate=adv.success_rate,
        mean_l2=adv.mean_l2,
        mean_linf=adv.mean_linf,
        seconds=float(adv.meta.get("seconds", seconds)),
    )


def run_evaluation(config: EvalConfig, progress: bool = True, log: Log = print,
                   ranks: Ranks = SINGLE) -> EvalReport | None:
    """Run the protocol; returns every attack summary and every (detector, attack) result.

    With `ranks` of a torchrun job, every rank must call this: the attacks and the extraction of activations are
    sharded across them, and the main rank alone fits the detectors and returns the report (the others return
    None)."""
    if not ranks.main:
        progress, log = False, muted
    data = load_dataset(config.dataset, **config.dataset_options)
    with ranks.main_first():  # the main rank trains an uncached model; the others then load it
        classifier, model_dir = load_model(config.model, data, config.train, config.cache_dir,
                                           ranks.device(config.device), progress, log)
    clean_acc = accuracy(classifier, data.test)
    model_tag = Path(model_dir).name
    log(f"model {model_tag}: clean test accuracy {clean_acc:.4f}")

    sets = protocol_splits(classifier, data, config.n_fit, config.n_test, config.seed)
    fit_on_attacks = any(config.detector(spec).needs_adversarial_examples for spec in config.detectors)
    fitted = set(config.fit_attacks or config.attacks) if fit_on_attacks else set()  # NeuralFP fits on clean only
    summaries: list[AttackSummary] = []
    adv_sets: dict[tuple[str, str], AdversarialSet] = {}
    examples: list[Example] = []
    example_images: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for spec in config.attacks:
        splits = [("val", data.val, sets.val_adv_index)] if spec in fitted else []
        for split_name, split, index in [*splits, ("test", data.test, sets.test_adv_index)]:
            log(f"attack {spec} on {len(index)} {split_name} images")
            adv, seconds = cached_adversarial_set(
                classifier, model_tag, spec, split, split_name, index, config.cache_dir, config.batch_size, progress,
                ranks,
            )
            adv_sets[spec, split_name] = adv
            summaries.append(_summary(spec, adv, split_name, seconds))
            if not bool(adv.success.any()):
                raise InputError(f"attack {spec} produced no successful adversarial example on the {split_name} split")
        chosen, x_clean, x_adv = pick_examples(spec, adv_sets[spec, "test"], data.test, N_EXAMPLES, classifier.bounds)
        examples += chosen
        example_images[spec] = (x_clean, x_adv)

    activations = inputs.SharedActivations(classifier, config.batch_size, ranks)
    bench = _Bench(config, classifier, data.train, sets, adv_sets, example_images, activations, ranks.main, log)
    groups = [[spec] for spec in config.attacks] if config.fit_attacks is None else [list(config.fit_attacks)]
    results: list[DetectionResult] = []
    for name in config.detectors:
        for fit_group in groups:
            results += _fit_and_test(bench, name, fit_group, fit_group if config.fit_attacks is None else config.attacks)
    if not ranks.main:
        return None
    return EvalReport(config, clean_acc, str(model_dir), summaries, results, examples)


@dataclass(frozen=True)
class _Bench:
    """What every detector of one evaluation is fit and tested with: the config, the model, its training split
    (for detectors that need it), the protocol's image sets, the adversarial sets by (attack spec, split), the
    example images (clean sources, adversarial) by attack spec, the activations shared by the detectors, and
    whether this process is the main rank (the one that fits and scores)."""

    config: EvalConfig
    classifier: Classifier
    train: Split
    sets: ProtocolSplits
    adv_sets: dict[tuple[str, str], AdversarialSet]
    example_images: dict[str, tuple[torch.Tensor, torch.Tensor]]
    activations: inputs.SharedActivations
    main: bool
    log: Log


def _successes(adv: AdversarialSet) -> torch.Tensor:
    return adv.x_adv[adv.success]


def _fit_and_test(bench: _Bench, spec: str, fit_group: list[str], tested: list[str]) -> list[DetectionResult]:
    """Fit detector `spec` on validation clean + `fit_group` adversarial examples, set its threshold at 5% FPR on
    the held-out clean images `sets.val_calib`, and test it on every `tested` attack.

    A detector that cannot be fit on this data (an `InputError`, e.g. no fingerprint passes the selection rule)
    gives results with `error` set and no metrics, so one failure does not end a long evaluation.

    Every rank calls this (the activations are extracted sharded, all sets before fitting, so that a failed fit
    cannot leave the ranks waiting on each other); only the main rank fits and returns results. `fit_seconds`
    and `score_seconds_per_image` include the extraction of the activations they use, shared or not.
    """
    config, classifier, sets, adv_sets, log = bench.config, bench.classifier, bench.sets, bench.adv_sets, bench.log
    detector = config.detector(spec)
    read = bench.activations.input
    clean_fit = read(detector, "val_clean", sets.val_clean.x)
    adv_fit = inputs.concat([read(detector, f"val_adv:{s}", _successes(adv_sets[s, "val"])) for s in fit_group]) \
        if detector.needs_adversarial_examples else None
    calib = read(detector, "val_calib", sets.val_calib.x)
    clean_test = read(detector, "test_clean", sets.test_clean.x)
    adv_tests = {attack: read(detector, f"test_adv:{attack}", _successes(adv_sets[attack, "test"])) for attack in tested}
    if not bench.main:
        return []
    if detector.needs_training_data:
        detector.set_training_data(bench.train.x, bench.train.y)
    if adv_fit is not None:
        log(f"fit {spec} on {len(clean_fit)} clean + {len(adv_fit)} adversarial ({'+'.join(fit_group)})")
    else:
        log(f"fit {spec} on {len(clean_fit)} clean images (attack-agnostic)")
    start = time.perf_counter()
    try:
        inputs.fit(detector, classifier, clean_fit, sets.val_clean.y, adv_fit)
    except InputError as exc:
        log(f"  {spec} could not be fit on {'+'.join(fit_group)}: {exc}")
        return [DetectionResult(spec, attack, fit_group, error=str(exc)) for attack in tested]
    inputs.calibrate(detector, calib, fpr=0.05)
    extraction = clean_fit.seconds + calib.seconds + (adv_fit.seconds if adv_fit is not None else 0.0)
    fit_seconds = time.perf_counter() - start + extraction
    clean_scores = inputs.scores(detector, clean_test)
    results = []
    for attack in tested:
        start = time.perf_counter()
        adv_scores = inputs.scores(detector, adv_tests[attack])
        per_image = (time.perf_counter() - start + adv_tests[attack].seconds) / len(adv_scores)
        fprs, tprs = metrics.roc(clean_scores, adv_scores)
        example_clean, example_adv = bench.example_images[attack]
        low, high = auc_ci95 = metrics.auc_interval(clean_scores, adv_scores)
        results.append(
            DetectionResult(
                detector=spec,
                attack=attack,
                fit_attacks=fit_group if detector.needs_adversarial_examples else [],
                auc=metrics.auc(clean_scores, adv_scores),
                auc_ci95=auc_ci95,
                tpr_at_fpr05=metrics.tpr_at_fpr(clean_scores, adv_scores, 0.05),
                fpr_at_tpr95=metrics.fpr_at_tpr(clean_scores, adv_scores, 0.95),
                fpr_at_tpr99=metrics.fpr_at_tpr(clean_scores, adv_scores, 0.99),
                detection_accuracy=metrics.detection_accuracy(clean_scores, adv_scores, detector.threshold_),
                n_clean=len(clean_scores),
                n_adv=len(adv_scores),
                fit_seconds=fit_seconds,
                score_seconds_per_image=per_image,
                threshold=detector.threshold_,
                clean_scores=rounded(clean_scores),
                adv_scores=rounded(adv_scores),
                example_scores={"clean": rounded(inputs.scores(detector, inputs.DetectorInput(example_clean))),
                                "adversarial": rounded(inputs.scores(detector, inputs.DetectorInput(example_adv)))},
                roc=(fprs.tolist(), tprs.tolist()),
            )
        )
        log(f"  {spec} vs {attack}: AUC {results[-1].auc:.4f} (95% CI {low:.4f}-{high:.4f}), "
            f"TPR@5%FPR {results[-1].tpr_at_fpr05:.4f}")
    return results


def rounded(values: np.ndarray, digits: int = 6) -> list[float]:
    """`values` as a list of floats rounded to `digits` significant digits (what the JSON record stores)."""
    return [float(f"{v:.{digits}g}") for v in values.tolist()]


def load_model(model: str, data: DataSplits, train: TrainConfig, cache_dir: Path, device: str, progress: bool,
               log: Log) -> tuple[Classifier, str]:
    """`model` as a checkpoint directory, or a zoo architecture trained on `data` with `train` (cached under
    `cache_dir`/models); returns the classifier and its directory."""
    if Path(model).is_dir():
        classifier, _ = load_checkpoint(model)
        return classifier.to(device), model
    log(f"model {model} on {data.name}: loading from cache or training ({train.epochs} epochs)")
    classifier, _, directory = load_or_train(model, data, train, cache_dir / "models", progress, device)
    return classifier, str(directory)
