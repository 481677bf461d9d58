"""Robustness of detectors against adaptive attackers: SR@FPR per detector, budget and attack, and the worst case.

The protocol of `neuroprint.evaluation.protocol` (same seeded, disjoint splits and cache): every detector is fit
on clean validation images and validation adversarial examples of `fit_attack`, and its threshold is set at
`fpr` on held-out clean validation images. Then, for every budget (norm and eps, pixel units of [0, 1] images)
and every attack of the suite, `n_attack` correctly classified test images are attacked through the attacker's
view of the detector (`neuroprint.adaptive.views`), and the *defender's* detector judges the result:

    SR@FPR = share of attacked images that are misclassified and not flagged  (`metrics.success_rate_at_threshold`)

For a detector that draws at random per query (the bank with `sampling="secure"`) every verdict is averaged over
`DEFENDER_DRAWS` independent draws. The worst case is per image, as AutoAttack reports one: of all the suite's
outputs for an image, the attacker submits the misclassified one its own view scores lowest, and the defender
judges that one. For a deterministic detector the view's check is the defender's score, so this counts an image
lost when any attack got it through; a randomized one gives the attacker no retries. Beside it: the attack success
with no detector judging (the highest misclassification rate of one attack of the suite at that budget; the worst
case can exceed it, as attacks get through on different images), and the FPR the threshold actually reaches on
clean test images. Every record keeps, per image, the probability that the worst-case submission gets through, so
two designs can be compared image by image (`metrics.paired_difference_interval`).

`sources="validation"` attacks validation images that no detector is fit or calibrated on (`splits.held_out_index`),
to choose a design without the test set. `attacker_seed` gives the attacker its own copy of every detector, fit on
its own validation images with its own key (`random_state`), both drawn with that seed; it attacks through its copy
and the defender's detector judges (the threat model in which the key, not the method, is secret).
Adaptive outputs are cached under `cache_dir`/robustness, keyed by everything that determines them (a paper's
attack's output before projection, keyed without the budget, serves every budget). Under
torchrun (`neuroprint.distributed`) every rank fits the detectors (the main rank's threshold is shared, so all
attack the same detector), attacks its shard of the images, and the main rank reports.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from neuroprint.adaptive import make_adaptive_attack
from neuroprint.adaptive.base import NORMS, AdaptiveAttack
from neuroprint.adaptive.cache import cached_attack
from neuroprint.adaptive.feature_matching import FeatureMatching
from neuroprint.adaptive.papers import PaperAttack
from neuroprint.adaptive.views import DetectorView, detector_view
from neuroprint.data import DataSplits, Split, load_dataset
from neuroprint.detectors import Detector, make_detector
from neuroprint.distributed import SINGLE, Ranks, muted
from neuroprint.errors import ConfigError, InputError
from neuroprint.evaluation.protocol import EvalConfig, cached_adversarial_set, load_model
from neuroprint.evaluation.splits import correct_clean, fit_splits, held_out_index, protocol_splits
from neuroprint.io import git_commit, versions
from neuroprint.models.classifier import Classifier
from neuroprint.models.training import TrainConfig, accuracy
from neuroprint.registry import ADAPTIVE_ATTACKS, DETECTORS
from neuroprint.specs import parse_spec

Log = Callable[[str], None]
#: the gradient attacks run against every detector; attacks with `applies_to` (the papers' own) join for theirs
SUITE = ("joint", "orthogonal", "selective", "feature-matching", "high-confidence")
DEFENDER_DRAWS = 10  # verdicts averaged per submitted image when the detector draws at random per query
N_TEST_CLEAN = 1000  # test sources drawn at least (half of them clean): the test FPR is measured on ~500 images
#: where the attacked images come from: the test set (reporting), or validation images that no detector is fit or
#: calibrated on (choosing a design without looking at the test set)
SOURCES = ("test", "validation")


@dataclass(frozen=True)
class Budget:
    """A perturbation budget: `norm` ("linf" or "l2") and `eps` in pixel units of [0, 1] images."""

    norm: str
    eps: float

    @staticmethod
    def parse(text: str) -> Budget:
        """`"linf:0.3"`, `"l2:2"` or a bare number (L-inf)."""
        norm, _, value = text.rpartition(":")
        norm = norm or "linf"
        if norm not in NORMS:
            raise ConfigError(f"unknown norm {norm!r} in budget {text!r}; valid: {', '.join(NORMS)} (e.g. linf:0.3, l2:2)")
        try:
            eps = float(value)
        except ValueError:
            raise ConfigError(f"budget {text!r} has no number after the norm (e.g. linf:0.3, l2:2)") from None
        high = 1.0 if norm == "linf" else math.inf
        if not 0.0 < eps <= high:
            raise ConfigError(f"{norm} eps must be in (0, {high}], got {eps} in budget {text!r}")
        return Budget(norm, eps)

    def __str__(self) -> str:
        return f"{self.norm}:{self.eps:g}"


@dataclass
class RobustnessConfig:
    """What to measure (module docstring). `attacks` None: the `SUITE` plus the papers' attacks that apply."""

    detectors: list[str]
    budgets: list[str] = field(default_factory=lambda: ["linf:0.1", "linf:0.3"])
    attacks: list[str] | None = None
    dataset: str = "mnist"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    model: str = "mnist-net"
    train: TrainConfig = field(default_factory=TrainConfig)
    fit_attack: str = "pgd"
    n_fit: int = 1000
    n_attack: int = 100
    steps: int = 200
    restarts: int = 1
    eot: int | None = None
    fpr: float = 0.05
    seed: int = 0
    batch_size: int = 100
    cache_dir: Path = Path("runs/cache")
    device: str = "cpu"
    sources: str = "test"
    attacker_seed: int | None = None

    def __post_init__(self) -> None:
        if self.sources not in SOURCES:
            raise ConfigError(f"unknown sources {self.sources!r}; valid: {', '.join(SOURCES)}")
        if not self.detectors:
            raise ConfigError("at least one detector is needed (--detector NAME); see `neuroprint list`")
        if not self.budgets:
            raise ConfigError("at least one budget is needed (--eps 0.3 or --eps l2:2)")
        self.parsed_budgets = [Budget.parse(b) for b in self.budgets]
        for spec in self.attacks or []:
            make_adaptive_attack(spec)  # unknown names and bad values fail before any work
        if self.n_attack < 1 or self.n_fit < 8:
            raise ConfigError(f"n_attack must be >= 1 and n_fit >= 8, got {self.n_attack} and {self.n_fit}")
        if not 0.0 < self.fpr < 1.0:
            raise ConfigError(f"fpr must be in (0, 1), got {self.fpr}")
        self.evaluation = EvalConfig(dataset=self.dataset, dataset_options=self.dataset_options, model=self.model,
                                     train=self.train, attacks=[self.fit_attack], detectors=self.detectors,
                                     n_fit=self.n_fit, n_test=max(2 * self.n_attack, N_TEST_CLEAN), seed=self.seed,
                                     batch_size=self.batch_size, cache_dir=self.cache_dir, device=self.device)

    def suite(self, detector: str) -> list[str]:
        """The attack specs run against `detector` (a registered name)."""
        if self.attacks is not None:
            return [a for a in self.attacks if detector in (ADAPTIVE_ATTACKS.get(parse_spec(a)[0]).applies_to or (detector,))]
        papers = [n for n in ADAPTIVE_ATTACKS.available() if detector in ADAPTIVE_ATTACKS.get(n).applies_to]
        return [*SUITE, *papers]


@dataclass
class AttackOutcome:
    """One attack on one detector at one budget; rates are shares of the `n` attacked images (NaN, with `error`
    saying why, when the attack could not run); `params` are the attack's own (eps, steps, step size, weights)."""

    detector: str
    budget: str
    attack: str
    n: int
    fooled: float = math.nan
    evaded_attacker_view: float = math.nan
    sr: float = math.nan
    seconds: float = 0.0
    steps: int = 0
    restarts: int = 0
    ms_per_image_step: float | None = None
    curve: list[float] = field(repr=False, default_factory=list)
    error: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class DetectorOutcome:
    """Everything measured for one detector: its threshold, FPRs, view, and per budget the attacks and worst case."""

    detector: str
    gradient: str = ""
    threshold: float | None = None
    fpr_test: float | None = None
    attacks: list[AttackOutcome] = field(default_factory=list)
    worst_case: dict[str, float] = field(default_factory=dict)
    no_detector: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    #: per budget, per attacked image: the probability that the worst-case submission gets through (the share of
    #: `DEFENDER_DRAWS` verdicts; 0 or 1 for a deterministic detector); paired comparisons of designs use these
    worst_case_images: dict[str, list[float]] = field(repr=False, default_factory=dict)


@dataclass
class RobustnessReport:
    """Everything one `run_robustness` measured, with its configuration, the model's clean test accuracy and the
    command line that asked for it (set by the CLI)."""

    config: RobustnessConfig
    clean_accuracy: float
    model_dir: str
    outcomes: list[DetectorOutcome]
    seconds: float
    command: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        """The record: config, provenance (versions, git, seed, command), and every outcome."""
        c = self.config
        return {
            "kind": "robustness", "dataset": c.dataset, "seed": c.seed, "versions": versions(), "git": git_commit(),
            "command": self.command,
            "config": {"detectors": c.detectors, "budgets": c.budgets, "attacks": c.attacks, "fit_attack": c.fit_attack,
                       "n_fit": c.n_fit, "n_attack": c.n_attack, "steps": c.steps, "restarts": c.restarts,
                       "eot": c.eot, "fpr": c.fpr, "train": asdict(c.train), "sources": c.sources,
                       "attacker_seed": c.attacker_seed},
            "model": {"name": c.model, "dir": self.model_dir, "clean_accuracy": self.clean_accuracy},
            "seconds": self.seconds,
            "outcomes": [asdict(o) for o in self.outcomes],
        }


def run_robustness(config: RobustnessConfig, progress: bool = True, log: Log = print,
                   ranks: Ranks = SINGLE) -> RobustnessReport | None:
    """Fit every detector, attack it with the suite at every budget, and measure SR@FPR (module docstring).
    With `ranks` of a torchrun job every rank must call this; the main rank returns the report, the others None."""
    start = time.perf_counter()
    if not ranks.main:
        progress, log = False, muted
    ev = config.evaluation
    data = load_dataset(config.dataset, **config.dataset_options)
    with ranks.main_first():  # the main rank trains an uncached model; the others then load it
        classifier, model_dir = load_model(config.model, data, config.train, config.cache_dir,
                                           ranks.device(config.device), progress, log)
    model_tag = Path(model_dir).name
    splits = protocol_splits(classifier, data, config.n_fit, max(2 * config.n_attack, N_TEST_CLEAN), config.seed)
    if config.sources == "test":
        sources = correct_clean(classifier, data.test, splits.test_adv_index)
    else:
        sources = correct_clean(classifier, data.val, held_out_index(len(data.val), config.n_fit, config.seed))
    sources = sources.subset(torch.arange(min(config.n_attack, len(sources))))
    clean_accuracy = accuracy(classifier, data.test)
    log(f"model {model_tag}: clean test accuracy {clean_accuracy:.4f}; attacking {len(sources)} {config.sources} images")
    fit_adv, _ = cached_adversarial_set(classifier, model_tag, config.fit_attack, data.val, "val",
                                        splits.val_adv_index, config.cache_dir, config.batch_size, progress, ranks)
    outcomes = []
    for spec in config.detectors:
        outcome = DetectorOutcome(spec)
        outcomes.append(outcome)
        try:
            detector = _fitted(ev.detector(spec), classifier, data, splits.val_clean, splits.val_calib,
                               fit_adv.x_adv[fit_adv.success], config.fpr, ranks)
            attacker = detector if config.attacker_seed is None else _attacker_copy(
                config, spec, classifier, data, model_tag, progress, ranks)
        except (InputError, ConfigError) as exc:
            outcome.error = str(exc)
            log(f"{spec}: not evaluated ({exc})")
            continue
        outcome.threshold = detector.threshold_
        judge, view = detector_view(detector, draws=config.eot), detector_view(attacker, draws=config.eot)
        outcome.fpr_test = 1.0 - float(_evasion(detector, judge, splits.test_clean.x,
                                                torch.ones(len(splits.test_clean), dtype=torch.bool)).mean())
        outcome.gradient = view.gradient if attacker is detector else \
            f"{view.gradient}, of the attacker's own copy (seed {config.attacker_seed})"
        log(f"{spec}: threshold {detector.threshold_:.4g} (FPR {config.fpr:g} on validation, "
            f"{outcome.fpr_test:.3f} on clean test images); attacker's gradient: {outcome.gradient}")
        for budget in config.parsed_budgets:
            _measure_budget(config, classifier, judge, view, budget, sources, splits.val_clean, model_dir,
                            outcome, progress, log, ranks)
    if not ranks.main:
        return None
    return RobustnessReport(config, clean_accuracy, model_dir, outcomes, time.perf_counter() - start)


def _fitted(detector: Detector, classifier: Classifier, data: DataSplits, fit_clean: Split, calib: Split,
            x_adv: torch.Tensor, fpr: float, ranks: Ranks) -> Detector:
    """`detector` fit on clean `fit_clean` (and adversarial `x_adv` where it needs them), its threshold set at
    `fpr` on `calib` (the main rank's threshold, shared with every rank)."""
    if detector.needs_training_data:
        detector.set_training_data(data.train.x, data.train.y)
    detector.fit(classifier, fit_clean.x, fit_clean.y, x_adv if detector.needs_adversarial_examples else None)
    detector.calibrate(calib.x, fpr=fpr)
    detector.threshold_ = ranks.share(detector.threshold_)
    return detector


def _attacker_copy(config: RobustnessConfig, spec: str, classifier: Classifier, data: DataSplits, model_tag: str,
                   progress: bool, ranks: Ranks) -> Detector:
    """The attacker's own copy of detector `spec`: its own key (`random_state`, where the detector has one) and its
    own validation images, attacked with `fit_attack` and split for fitting and calibration, all drawn with
    `attacker_seed`; the threat model in which the defender's key, not its method, is secret."""
    seed = config.attacker_seed
    own_key = {"random_state": seed} if "random_state" in DETECTORS.parameters(parse_spec(spec)[0]) else {}
    fit_clean, calib, adv_index = fit_splits(classifier, data.val, config.n_fit, seed)
    adv, _ = cached_adversarial_set(classifier, model_tag, config.fit_attack, data.val, "val", adv_index,
                                    config.cache_dir, config.batch_size, progress, ranks)
    return _fitted(make_detector(spec, **own_key), classifier, data, fit_clean, calib, adv.x_adv[adv.success],
                   config.fpr, ranks)


def _measure_budget(config: RobustnessConfig, classifier: Classifier, judge: DetectorView, view: DetectorView,
                    budget: Budget, sources: Split, guides: Split, model_dir: str, outcome: DetectorOutcome,
                    progress: bool, log: Log, ranks: Ranks) -> None:
    """Run the suite through the attacker's `view` at `budget` on `sources` and let the defender's detector (its
    view `judge`) decide; append to `outcome` every attack's SR@FPR, the worst case (per image and overall) and the
    success with no detector judging (the highest misclassification rate of one attack)."""
    chosen = sources.x.clone()  # per image, the attacker's pick among the suite's outputs
    chosen_check = torch.full((len(sources),), math.inf)
    for attack_spec in config.suite(judge.detector.name):
        attack = make_adaptive_attack(attack_spec, norm=budget.norm, eps=budget.eps, steps=config.steps,
                                      restarts=config.restarts, random_state=config.seed)
        if isinstance(attack, FeatureMatching):
            attack.set_guides(guides.x, guides.y)
        key = _key(model_dir, outcome.detector, config, attack, sources, view.threshold)
        if isinstance(attack, PaperAttack):  # its output before projection serves every budget
            budget_free = {k: v for k, v in attack.params.items() if k not in ("norm", "eps")}
            inner_key = _key(model_dir, outcome.detector, config, attack, sources, view.threshold, budget_free)
            attack.store_inner(config.cache_dir / "robustness" / f"{attack.name}-unprojected-{inner_key}.safetensors")
        try:
            result, seconds = cached_attack(attack, classifier, view, sources, key,
                                             config.cache_dir / "robustness", config.batch_size, progress, ranks)
        except (ConfigError, InputError) as exc:  # this attack cannot run here; the others still can
            log(f"  {outcome.detector} {budget} {attack.name}: not run ({exc})")
            outcome.attacks.append(AttackOutcome(outcome.detector, str(budget), attack.name, len(sources),
                                                 error=str(exc), params=dict(attack.params)))
            continue
        check = torch.where(result.fooled, _checks(view, result.x_adv), math.inf)
        better = check < chosen_check
        chosen[better], chosen_check[better] = result.x_adv[better], check[better]
        fooled = float(result.fooled.double().mean())
        outcome.attacks.append(AttackOutcome(
            outcome.detector, str(budget), attack.name, len(sources), fooled, float(result.evades.double().mean()),
            float(_evasion(judge.detector, judge, result.x_adv, result.fooled).mean()), seconds, attack.params["steps"],
            attack.params["restarts"], 1000 * seconds / result.image_steps if seconds and result.image_steps else None,
            result.curve, params=dict(attack.params)))
        outcome.no_detector[str(budget)] = max(fooled, outcome.no_detector.get(str(budget), 0.0))
        log(f"  {outcome.detector} {budget} {attack.name}: fooled {fooled:.3f}, "
            f"SR@{config.fpr:g}FPR {outcome.attacks[-1].sr:.3f} ({seconds:.0f} s)")
    evasion = _evasion(judge.detector, judge, chosen, classifier.predict(chosen) != sources.y)
    outcome.worst_case[str(budget)] = float(evasion.mean())
    outcome.worst_case_images[str(budget)] = [round(float(e), 4) for e in evasion]
    log(f"  {outcome.detector} {budget}: worst case SR@{config.fpr:g}FPR {outcome.worst_case[str(budget)]:.3f}")


def _evasion(detector: Detector, view: DetectorView, x: torch.Tensor, fooled: torch.Tensor) -> torch.Tensor:
    """Per submitted image of `x` `[N, C, H, W]` (`fooled` `[N]`), the probability `[N]` that it gets through:
    misclassified and not flagged (`metrics.success_rate_at_threshold` is its mean); for a randomized detector the
    share of `DEFENDER_DRAWS` independent verdicts, each as one query would get it."""
    draws = DEFENDER_DRAWS if view.randomized else 1
    return torch.stack([fooled & ~_flags(detector, x) for _ in range(draws)]).double().mean(0)


@torch.no_grad()
def _flags(detector: Detector, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The defender's verdicts `[N]` (a detector that needs input gradients enables them itself)."""
    return torch.cat([detector.predict(x[i : i + batch_size]).cpu() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def _checks(view: DetectorView, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The attacker's estimate `[N]` of the defender's score (the view's check)."""
    return torch.cat([view(x[i : i + batch_size]).check.cpu() for i in range(0, len(x), batch_size)])


def _key(model_dir: str, spec: str, config: RobustnessConfig, attack: AdaptiveAttack, sources: Split,
         threshold: float, params: dict[str, Any] | None = None) -> str:
    """The cache key of one adaptive run: everything that determines its output (a randomized detector's threshold
    differs from run to run, so its runs are never reused); `params` replace the attack's own where a part of the
    run depends on fewer of them."""
    blob = json.dumps({"model": str(Path(model_dir).resolve()), "dataset": config.dataset,
                       "dataset_options": config.dataset_options, "detector": spec, "seed": config.seed,
                       "n_fit": config.n_fit, "fit_attack": config.fit_attack, "fpr": config.fpr, "eot": config.eot,
                       "threshold": f"{threshold:.9g}", "attack": attack.name,
                       "params": attack.params if params is None else params,
                       "images": hashlib.sha256(sources.x.numpy().tobytes()).hexdigest(), "labels": sources.y.tolist(),
                       "version": versions()["neuroprint"],
                       **({} if config.attacker_seed is None else {"attacker_seed": config.attacker_seed})},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
