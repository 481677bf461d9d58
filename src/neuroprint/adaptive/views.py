"""Differentiable views of detectors: what an adaptive attacker descends, and how it judges its candidates.

An attacker who knows the classifier and the detector needs a gradient of the detector's score. Athalye, Carlini &
Wagner, "Obfuscated Gradients Give a False Sense of Security" (ICML 2018, arXiv 1802.00420) give the two tools
used here: a differentiable surrogate where the score has no useful gradient (BPDA: the non-differentiable part is
computed exactly in the forward pass and replaced by something differentiable in the backward pass), and the
expectation over the detector's randomness (EOT) where the score is random.

For images `x` `[N, C, H, W]` in the classifier's bounds a `DetectorView` returns, from one forward pass where
the detector allows, a `ViewOutput`:

- `logits` `[N, K]`: the classifier's logits (with graph);
- `loss` `[N]`: a differentiable stand-in for the score (higher = more adversarial) that attacks descend;
- `check` `[N]` (no graph): the attacker's estimate of the defender's own score; an iterate whose `check` is
  at or below `threshold` (and that the classifier misclassifies) counts as evading.

How each registered detector is viewed (`VIEWS`; `gradient` in the view says the same in words):

| detector | loss | check |
|---|---|---|
| bank | the score without its caps (`z_cap` off, output term uncapped), over every fingerprint of the predicted class's bank (the exact expectation of a random draw), or EOT over `draws` random draws | the defender's score; random draws: the highest of `check_draws` draws, so a candidate counts as evading only when (nearly) every draw would pass it |
| dknn | soft nearest neighbours: at every layer, the mean squared distance to the `k` nearest training activations of the predicted class (neighbours found exactly at the current iterate; BPDA), over the layer's total variance | the detector's score |
| nnif | the detector's own head on NNIF features whose ranks and helpful/harmful sets are computed exactly at the current iterate and held constant (BPDA); the distances stay differentiable | the same value: it is the detector's score |
| any other | the detector's own `score`, which must be differentiable in `x` | the same values |

A detector with neither a differentiable score nor a registered view raises `ConfigError` naming the ways out.

Example:
    >>> view = detector_view(bank)                  # threshold from bank.calibrate(...)
    >>> out = view(x.requires_grad_())               # descend out.loss; keep iterates with out.check <= threshold
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from neuroprint.checks import check_int
from neuroprint.detectors import Detector
from neuroprint.detectors.bank import BankDetector
from neuroprint.detectors.dknn import EMBEDDING as DKNN_EMBEDDING
from neuroprint.detectors.dknn import DkNNDetector
from neuroprint.detectors.nnif import EMBEDDING as NNIF_EMBEDDING
from neuroprint.detectors.nnif import NNIFDetector
from neuroprint.detectors.ranks import ranks_and_distances
from neuroprint.errors import ConfigError, NotFittedError
from neuroprint.features import pool
from neuroprint.models.classifier import Classifier, last_linear


class ViewOutput(NamedTuple):
    """What a view returns for images `[N, C, H, W]`: logits `[N, K]`, the differentiable `loss` `[N]` and the
    attacker's estimate `check` `[N]` (no graph) of the defender's score; higher = more adversarial."""

    logits: torch.Tensor
    loss: torch.Tensor
    check: torch.Tensor


Scores = Callable[[torch.Tensor], ViewOutput]
ViewBuilder = Callable[[Detector, int | None, int], tuple[Scores, str, bool]]
VIEWS: dict[type[Detector], ViewBuilder] = {}


def register_view(detector_type: type[Detector]) -> Callable[[ViewBuilder], ViewBuilder]:
    """Decorator: `builder(detector, draws, check_draws) -> (scores, gradient, randomized)` is how attacks see
    `detector_type`."""

    def decorator(builder: ViewBuilder) -> ViewBuilder:
        VIEWS[detector_type] = builder
        return builder

    return decorator


@dataclass(frozen=True)
class DetectorView:
    """An attacker's view of a fitted detector: `view(x) -> ViewOutput(logits, loss, check)` (module docstring)."""

    detector: Detector
    threshold: float
    gradient: str
    scores: Scores
    randomized: bool = False  # True: the defender's score is random per query (a bank drawing per input)

    def __call__(self, x: torch.Tensor) -> ViewOutput:
        logits, loss, check = self.scores(x)
        if x.requires_grad and not loss.requires_grad:
            raise ConfigError(
                f"detector {self.detector.name!r} has no gradient with respect to the input and no registered "
                "surrogate; ways out: register one with neuroprint.adaptive.register_view(type) (BPDA: exact forward, "
                "differentiable backward), make its score differentiable, or attack it with the feature-matching or "
                "high-confidence attacks, which need no detector gradient")
        return ViewOutput(logits, loss, check.detach())

    def evades(self, check: torch.Tensor) -> torch.Tensor:
        """Bool `[N]`: the attacker's estimate says the defender would not flag these inputs."""
        return check <= self.threshold


def detector_view(
    detector: Detector, threshold: float | None = None, draws: int | None = None, check_draws: int = 32
) -> DetectorView:
    """The attacker's view of a fitted `detector` at `threshold` (default: the detector's `threshold_`).

    `draws` applies to randomized detectors only: None descends the exact expectation over the detector's random
    draws, an int `n` EOT over `n` random draws per step; the highest of `check_draws` random draws estimates the defender's score.
    """
    if getattr(detector, "classifier_", None) is None:
        raise NotFittedError(f"{detector.name} is not fitted: an adaptive attack needs a fitted detector")
    if threshold is None:
        threshold = getattr(detector, "threshold_", None)
        if threshold is None:
            raise NotFittedError(f"{detector.name} has no threshold: call calibrate(x_clean) first, or pass threshold=")
    if draws is not None:
        check_int("draws", draws)
    check_int("check_draws", check_draws)
    builder = next((b for t, b in VIEWS.items() if isinstance(detector, t)), _own_score)
    scores, gradient, randomized = builder(detector, draws, check_draws)
    return DetectorView(detector, float(threshold), gradient, scores, randomized)


def _own_score(detector: Detector, draws: int | None, check_draws: int) -> tuple[Scores, str, bool]:
    def scores(x: torch.Tensor) -> ViewOutput:
        score = detector.score(x)
        return ViewOutput(detector.classifier_(x), score, score.detach())

    return scores, "the detector's own score (exact gradient)", False


@register_view(BankDetector)
def _bank(bank: BankDetector, draws: int | None, check_draws: int) -> tuple[Scores, str, bool]:
    if bank.score_kind == "vote":
        raise ConfigError("bank score_kind='vote' counts fingerprints and has no gradient; attack it through a bank of "
                          "the same fingerprints with score_kind=shift (register_view), or with feature-matching or "
                          "high-confidence, which need no detector gradient")
    randomized = bank.sampling in ("seeded", "secure")  # the attacker does not exploit a seeded draw's seed
    surrogate = copy.copy(bank)
    surrogate.z_cap = None
    surrogate.output_cap = math.inf if bank.output_cap is not None else None
    checker = copy.copy(bank)
    n_loss, n_check = 1, 1
    if randomized:
        checker.sampling, n_check = "secure", check_draws
        surrogate.sampling, n_loss = ("all", 1) if draws is None else ("secure", draws)
    if randomized:
        how = "over every fingerprint (the expectation over draws)" if draws is None else f"EOT over {draws} draws"
    else:
        how = "over every fingerprint" if bank.sampling == "all" else f"over the defender's fixed {bank.k} fingerprints"

    def scores(x: torch.Tensor) -> ViewOutput:
        logits, feats = bank.activations(x)
        on_cpu = logits.cpu(), feats.cpu()  # the bank's tensors live on the CPU
        loss = torch.stack([surrogate.score_activations(*on_cpu) for _ in range(n_loss)]).mean(0)
        with torch.no_grad():
            check = torch.stack([checker.score_activations(*on_cpu) for _ in range(n_check)]).amax(0)
        return ViewOutput(logits, loss.to(logits.device), check.to(logits.device))

    return scores, f"uncapped score, {how}", bank.sampling == "secure"


def differentiable_activations(
    classifier: Classifier, x: torch.Tensor, layers: tuple[str, ...], pooling: str, embedding_name: str
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits `[N, K]` and pooled activations `{layer: [N, D]}` with gradients; the layer named `embedding_name`
    is the input of the classifier's last linear layer."""
    captured: list[torch.Tensor] = []
    hook = last_linear(classifier).register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]))
    named = tuple(layer for layer in layers if layer != embedding_name)
    try:
        logits, raw = classifier.layer_outputs(x, named)
    finally:
        hook.remove()
    acts = {name: pool(out, pooling) for name, out in raw.items()}  # type: ignore[arg-type]
    acts[embedding_name] = captured[-1].flatten(1)
    return logits, acts


@register_view(DkNNDetector)
def _dknn(det: DkNNDetector, draws: int | None, check_draws: int) -> tuple[Scores, str, bool]:
    scale = {layer: float(det.train_acts_[layer].var(0).sum()) for layer in det.layers_}

    def scores(x: torch.Tensor) -> ViewOutput:
        logits, acts = differentiable_activations(det.classifier_, x, det.layers_, det.pooling, DKNN_EMBEDDING)
        pred = logits.argmax(1).cpu()
        loss = torch.zeros(len(x))
        for layer in det.layers_:
            query, train = acts[layer].cpu(), det.train_acts_[layer]
            for c in pred.unique().tolist():
                rows, own = pred == c, train[det.train_labels_ == c]
                with torch.no_grad():
                    nearest = torch.cdist(query[rows].detach(), own).topk(det.k_, largest=False).indices
                close = (query[rows][:, None, :] - own[nearest]).pow(2).sum(-1).mean(1) / scale[layer]
                loss = loss.index_put((rows.nonzero().flatten(),), close, accumulate=True)
        with torch.no_grad():
            check = det.score(x.detach())
        return ViewOutput(logits, loss, check)

    return scores, "soft nearest neighbours of the predicted class at every layer (BPDA)", False


@register_view(NNIFDetector)
def _nnif(det: NNIFDetector, draws: int | None, check_draws: int) -> tuple[Scores, str, bool]:
    def scores(x: torch.Tensor) -> ViewOutput:
        logits, acts = differentiable_activations(det.classifier_, x, det.layers_, det.pooling, NNIF_EMBEDDING)
        embedding, m = acts[NNIF_EMBEDDING].cpu(), det.m_
        with torch.no_grad():
            helpful, harmful = det.influence_.top(embedding.detach(), logits.detach().cpu(), logits.argmax(1).cpu(), m)
            chosen = torch.cat([helpful, harmful], dim=1)
        columns = []
        for layer in det.layers_:
            query, train = acts[layer].cpu(), det.train_acts_[layer]
            with torch.no_grad():
                ranks, _ = ranks_and_distances(query.detach(), train, chosen)
            dists = (query[:, None, :] - train[chosen]).pow(2).sum(-1).clamp_min(1e-12).sqrt()
            columns += [ranks[:, :m].float().mean(1), dists[:, :m].mean(1), ranks[:, m:].float().mean(1),
                        dists[:, m:].mean(1)]
        loss = det.head_(torch.stack(columns, 1))
        return ViewOutput(logits, loss, loss.detach())  # the same features the detector computes: its score

    return scores, "the detector's head with ranks and influence sets held constant (BPDA)", False
