"""`Guard`: a classifier and its calibrated detectors, saved as one self-describing directory.

A guard directory holds `guard.json` (the model's checkpoint path and SHA-256 digest, image shape, class count,
each detector's spec and threshold, the calibration FPR, the draw mode, what it was fit on, the clean FPR measured
on test images, versions and git hash) and `detectors/<key>/` (each detector's `config.json` + safetensors). It
never holds the model's weights: it names the checkpoint, and loading refuses a checkpoint whose digest differs.

Draws: a randomized detector (the bank with `sampling` "seeded" or "secure") is switched to the guard's `draws`
on load. "secure" seeds every `score` call from the operating system's CSPRNG (the serving default: a client
cannot replay or predict which fingerprints check it); "seeded" makes scores reproducible.

Example:
    >>> guard = Guard.load("runs/guard")
    >>> verdict = guard.score(images)          # images [N, C, H, W] in [0, 1]
    >>> verdict.labels, verdict.flagged        # [N] int64, [N] bool
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from neuroprint.checks import check_choice
from neuroprint.detectors import Detector
from neuroprint.errors import InputError
from neuroprint.features import Features, pool
from neuroprint.io import atomic_path, git_commit, read_json, versions, write_json
from neuroprint.models.checkpoint import load_checkpoint
from neuroprint.models.classifier import Classifier

GUARD_FILE, FORMAT_VERSION = "guard.json", 1
Draws = Literal["secure", "seeded"]
DRAWS: tuple[str, ...] = ("secure", "seeded")


def checkpoint_digest(directory: str | Path) -> str:
    """SHA-256 over the names and bytes of every file in a checkpoint directory (hex)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(directory).iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def set_draws(detector: Detector, draws: str) -> None:
    """Switch a randomized detector (one whose `sampling` is "seeded" or "secure") to `draws`; others keep theirs."""
    if getattr(detector, "sampling", None) in DRAWS:
        detector.sampling = draws  # type: ignore[attr-defined]


@dataclass(frozen=True)
class GuardScores:
    """One batch's verdict: `labels` `[N]` int64, `probabilities` `[N, K]` (softmax), `scores[key]` `[N]` (higher =
    more adversarial), `flags[key]` `[N]` bool (score above that detector's threshold) and `flagged` `[N]` (any)."""

    labels: torch.Tensor
    probabilities: torch.Tensor
    scores: dict[str, torch.Tensor]
    flags: dict[str, torch.Tensor]

    @property
    def flagged(self) -> torch.Tensor:
        stacked = torch.stack(list(self.flags.values())) if self.flags else torch.zeros(1, len(self.labels), dtype=torch.bool)
        return stacked.any(0)

    def __len__(self) -> int:
        return len(self.labels)

    def slice(self, start: int, stop: int) -> GuardScores:
        """Rows `start:stop` (how a micro-batch's verdict is handed back to each request)."""
        return GuardScores(self.labels[start:stop], self.probabilities[start:stop],
                           {k: v[start:stop] for k, v in self.scores.items()},
                           {k: v[start:stop] for k, v in self.flags.items()})

    def records(self, thresholds: dict[str, float], top_k: int | None = None) -> list[dict[str, Any]]:
        """One JSON-ready dict per image: label, probabilities (all, or the `top_k` largest as {class: p}),
        each detector's score and threshold, and the verdict."""
        flagged = self.flagged.tolist()
        out = []
        for i, label in enumerate(self.labels.tolist()):
            probs = self.probabilities[i]
            if top_k is None:
                probabilities: Any = [round(float(p), 6) for p in probs]
            else:
                values, classes = probs.topk(min(top_k, len(probs)))
                probabilities = {str(int(c)): round(float(v), 6) for c, v in zip(classes, values)}
            detectors = {key: {"score": float(self.scores[key][i]), "threshold": thresholds[key],
                               "flagged": bool(self.flags[key][i])} for key in self.scores}
            out.append({"label": label, "probabilities": probabilities, "detectors": detectors,
                        "flagged": flagged[i]})
        return out


class Guard:
    """A classifier with calibrated detectors (keyed by unique names such as "bank", "mahalanobis", "bank-2").

    `meta` is what `guard.json` records beyond the detectors (see the module doc). Build one with
    `neuroprint.guard.fit_guard`, or `Guard.load(directory)`.
    """

    def __init__(self, classifier: Classifier, detectors: dict[str, Detector], meta: dict[str, Any],
                 draws: Draws = "secure") -> None:
        missing = [key for key, det in detectors.items() if getattr(det, "threshold_", None) is None]
        if missing:
            raise InputError(f"detector(s) {missing} have no threshold: calibrate them before building a guard")
        self.classifier = classifier.eval()
        self.detectors = detectors
        self.meta = meta
        self.draws: Draws = check_choice("draws", draws, DRAWS)  # type: ignore[assignment]
        for detector in detectors.values():
            set_draws(detector, self.draws)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """`(C, H, W)` of the images the model takes."""
        c, h, w = self.meta["image_shape"]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    @property
    def thresholds(self) -> dict[str, float]:
        """Each detector's threshold (scores above it are flagged)."""
        return {key: float(det.threshold_) for key, det in self.detectors.items()}  # type: ignore[arg-type]

    def check_images(self, x: torch.Tensor, name: str = "images") -> None:
        """Raise `InputError` unless `x` is `[N, C, H, W]` of this guard's image shape, finite, in [0, 1]."""
        self.classifier.check_input(x, name)
        if tuple(x.shape[1:]) != self.image_shape:
            raise InputError(f"{name} must have shape [N, {', '.join(map(str, self.image_shape))}] "
                             f"(the model's input), got {list(x.shape)}")

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> GuardScores:
        """Classify and score images `x` `[N, C, H, W]` (pixels in [0, 1]) with every detector.

        One forward pass serves the classification and every detector that reads shared activations (its
        `feature_spec`); a detector that reads the images themselves runs its own."""
        self.check_images(x)
        specs = {key: det.feature_spec for key, det in self.detectors.items()}
        layers = list(dict.fromkeys(layer for spec in specs.values() if spec is not None
                                    for layer in (spec.layers or self.classifier.layers)))
        logits, raw = self.classifier.layer_outputs(x, layers)
        scores = {}
        for key, det in self.detectors.items():
            spec = specs[key]
            if spec is None:
                scores[key] = det.score(x).detach().float().cpu()
            else:
                pooled = {layer: pool(raw[layer], spec.pooling) for layer in spec.layers or self.classifier.layers}
                scores[key] = det.score_features(Features(logits, pooled)).detach().float().cpu()
        flags = {key: scores[key] > det.threshold_ for key, det in self.detectors.items()}
        return GuardScores(logits.argmax(1).cpu(), logits.softmax(1).float().cpu(), scores, flags)

    # -- persistence -------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write `guard.json` and every detector under `directory`, atomically (all or nothing)."""
        entries = [{"key": key, "name": det.name, "params": det.get_params(), "threshold": float(det.threshold_)}  # type: ignore[arg-type]
                   for key, det in self.detectors.items()]
        record = {"versions": versions(), "git": git_commit(), **self.meta, "format_version": FORMAT_VERSION,
                  "detectors": entries}
        with atomic_path(directory, directory=True) as tmp:
            for key, det in self.detectors.items():
                det.save(tmp / "detectors" / key)
            write_json(tmp / GUARD_FILE, record)

    @staticmethod
    def load(directory: str | Path, checkpoint: str | Path | None = None, draws: Draws = "secure") -> Guard:
        """Load a guard; `checkpoint` overrides the model path it names (when the checkpoint has moved). A model
        whose digest differs from the one the guard was fit on is refused in one line."""
        directory = Path(directory)
        if not (directory / GUARD_FILE).is_file():
            raise InputError(f"expected a guard directory with {GUARD_FILE} at {directory} (made by `neuroprint fit`)")
        meta = read_json(directory / GUARD_FILE)
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            found = meta.get("format_version") if isinstance(meta, dict) else None
            raise InputError(f"{directory / GUARD_FILE}: unsupported guard format {found!r} (expected {FORMAT_VERSION})")
        for field in ("model", "image_shape", "detectors"):
            if field not in meta:
                raise InputError(f"{directory / GUARD_FILE} lacks the field {field!r}; is it a neuroprint guard?")
        model_dir = Path(checkpoint) if checkpoint is not None else Path(meta["model"]["checkpoint"])
        classifier, _ = load_checkpoint(model_dir)
        digest = checkpoint_digest(model_dir)
        if digest != meta["model"]["sha256"]:
            raise InputError(f"the model at {model_dir} is not the one this guard was fit on (SHA-256 "
                             f"{digest[:12]}, expected {meta['model']['sha256'][:12]}); refit the guard or pass "
                             f"the right --checkpoint")
        detectors = {entry["key"]: Detector.load(directory / "detectors" / entry["key"], classifier)
                     for entry in meta.pop("detectors")}
        return Guard(classifier, detectors, meta, draws)
