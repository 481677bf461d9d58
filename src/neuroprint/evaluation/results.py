"""What one evaluation measured, as plain dataclasses that serialise to the JSON record (`EvalReport.to_json`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from neuroprint.evaluation.examples import Example
from neuroprint.io import git_commit, versions

if TYPE_CHECKING:
    from neuroprint.evaluation.protocol import EvalConfig


@dataclass
class AttackSummary:
    """One attack on one split: how often it succeeded and how large its perturbations were (pixel units)."""

    name: str
    spec: str
    params: dict[str, Any]
    split: str
    n_attacked: int
    n_success: int
    success_rate: float
    mean_l2: float
    mean_linf: float
    seconds: float


@dataclass
class DetectionResult:
    """Metrics of one detector on one test attack (AUC, TPR and FPR as fractions in [0, 1]); `auc_ci95` is the
    AUC's 95% bootstrap interval over the test images (`metrics.auc_interval`).

    `threshold` is the detector's threshold (5% FPR on held-out clean validation images); `clean_scores` and
    `adv_scores` the scores of every clean and adversarial test image (6 significant digits, higher = more
    adversarial); `example_scores` the scores of the attack's example images (`EvalReport.examples`), under
    "clean" (their sources) and "adversarial". When the detector could not be fit, `error` says why and the
    metrics are None.
    """

    detector: str
    attack: str
    fit_attacks: list[str]
    auc: float | None = None
    auc_ci95: tuple[float, float] | None = None
    tpr_at_fpr05: float | None = None
    fpr_at_tpr95: float | None = None
    fpr_at_tpr99: float | None = None
    detection_accuracy: float | None = None
    n_clean: int = 0
    n_adv: int = 0
    fit_seconds: float | None = None
    score_seconds_per_image: float | None = None
    error: str | None = None
    threshold: float | None = None
    clean_scores: list[float] = field(repr=False, default_factory=list)
    adv_scores: list[float] = field(repr=False, default_factory=list)
    example_scores: dict[str, list[float]] = field(repr=False, default_factory=dict)
    roc: tuple[list[float], list[float]] = field(repr=False, default=([], []))


@dataclass
class EvalReport:
    """Everything one `run_evaluation` measured: the model's clean accuracy, attack summaries (val and test),
    results, a few example images per attack, and the command line that asked for it (set by the CLI)."""

    config: EvalConfig
    clean_accuracy: float
    model_dir: str
    attacks: list[AttackSummary]
    results: list[DetectionResult]
    examples: list[Example] = field(default_factory=list)
    command: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        """The machine-readable record: kind, dataset, seed, versions, git, command, config, model, attacks[],
        results[] (with per-image scores; the ROC points are not stored: they follow from the scores), examples[]."""
        test_attacks = [a for a in self.attacks if a.split == "test"]
        val = {a.spec: a for a in self.attacks if a.split == "val"}
        return {
            "kind": "evaluation",
            "dataset": self.config.dataset,
            "seed": self.config.seed,
            "versions": versions(),
            "git": git_commit(),
            "command": self.command,
            "config": {
                "n_fit": self.config.n_fit,
                "n_test": self.config.n_test,
                "fit_attacks": self.config.fit_attacks,
                "train": asdict(self.config.train),
            },
            "model": {"name": self.config.model, "dir": self.model_dir, "clean_accuracy": self.clean_accuracy},
            "attacks": [
                {**asdict(a), "val": asdict(val[a.spec]) if a.spec in val else None} for a in test_attacks
            ],
            "results": [{k: v for k, v in r.__dict__.items() if k != "roc"} for r in self.results],
            "examples": [asdict(e) for e in self.examples],
        }
