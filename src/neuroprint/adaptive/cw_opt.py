"""CW-Opt: the white-box attack on NNIF of Cohen, Sapiro & Giryes (CVPR 2020, arXiv 1909.06872, Sec. 6, Eq. 2-3).

Carlini-Wagner L2 with an extra term that keeps the adversarial embedding close to the clean image's most helpful
training points, so that NNIF's nearest-neighbour features (D+, R+) look normal:

    minimise ||x - x'||_2^2 + c * (l_cw(x') + beta * sum_{i=1..M} ||DNN(x') - DNN(x_train[H+_i])||_1)

with DNN(.) the embedding (input of the last linear layer) and H+ the indices of the M most helpful training points
of the clean image x for its prediction (by the defender's influence model, which the white-box attacker can compute
from the public training set). The paper's objective has beta = 1; `beta` < 1 lets the CW term win where the pull
towards the (clean class's) helpful points would otherwise stop every misclassification. Not a registry entry: it needs the NNIF detector's influence model, so build it in
code.

Example:
    >>> attack = CWOpt(nnif_detector, c=1.0, steps=200)
    >>> result = attack(classifier, x, y)   # AttackResult; then score result.x_adv with the defender's detector
"""
from __future__ import annotations

import torch
from torch import nn

from neuroprint.attacks.base import Attack
from neuroprint.checks import check_float, check_int
from neuroprint.detectors.influence import forward_with_embedding
from neuroprint.detectors.nnif import NNIFDetector
from neuroprint.errors import NotFittedError
from neuroprint.models.classifier import Classifier, last_linear


def logits_and_embedding(classifier: Classifier, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable logits `[B, K]` and embedding `[B, D]` (the input of the last linear layer) of `x`."""
    captured: list[torch.Tensor] = []
    hook = last_linear(classifier).register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]))
    try:
        logits = classifier(x)
    finally:
        hook.remove()
    return logits, captured[-1].flatten(1)


class CWOpt(Attack):
    """CW-Opt (Cohen et al. 2020, Eq. 2-3): CW-L2 (tanh box, Adam) plus the L1 embedding distance to the clean
    image's `m` most helpful training points (default: the detector's chosen M).

    Args:
        detector: a fitted `NNIFDetector` (its influence model and training embeddings are used; its logistic head
            is not: the attacker does not know the detector's parameters).
        c: the weight of the adversarial terms (> 0), default 1.0 (CW's default 1e-3 fails on BatchNorm nets).
        kappa: CW confidence margin (>= 0), default 0. steps: Adam steps (>= 1), default 200.
        lr: Adam step size (> 0), default 0.01. m: helpful points (None = the detector's `m_`).
        beta: weight of the helpful-point term (>= 0), default 1.0 (the paper's Eq. 2).
    Untargeted L2 attack; inputs `[N, C, H, W]` in the classifier's bounds, outputs in bounds. Each image keeps the
    misclassified iterate of smallest L2 distance (the clean image where none is).
    """

    name = "cw-opt"
    norm = "l2"

    def __init__(
        self, detector: NNIFDetector, c: float = 1.0, kappa: float = 0.0, steps: int = 200, lr: float = 0.01,
        m: int | None = None, beta: float = 1.0,
    ) -> None:
        if getattr(detector, "classifier_", None) is None:
            raise NotFittedError("CW-Opt needs a fitted NNIF detector: call detector.fit(...) first")
        super().__init__(
            c=check_float("c", c, 0.0, 1e6), kappa=check_float("kappa", kappa, 0.0, 1e6, low_open=False),
            steps=check_int("steps", steps), lr=check_float("lr", lr, 0.0, 10.0),
            m=check_int("m", m if m is not None else detector.m_),
            beta=check_float("beta", beta, 0.0, 1e6, low_open=False), detector=detector.name,
        )
        self.detector = detector

    def _perturb(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c, kappa, m = self.params["c"], self.params["kappa"], self.params["m"]
        low, high = classifier.bounds
        influence = self.detector.influence_
        logits, embedding, _ = forward_with_embedding(classifier, x)
        helpful, _ = influence.top(embedding, logits, logits.argmax(1), m)
        targets = influence.train_a_[:, :-1][helpful].to(x.device)  # [B, M, D] training embeddings (bias column off)
        w = torch.atanh(((x - low) / (high - low) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6)).detach().requires_grad_(True)
        optimiser = torch.optim.Adam([w], lr=self.params["lr"])
        onehot = nn.functional.one_hot(y, classifier.num_classes).bool()
        best, best_l2 = x.clone(), torch.full((len(x),), float("inf"), device=x.device)
        for _ in range(self.params["steps"]):
            adv = low + (torch.tanh(w) + 1) / 2 * (high - low)
            logits, emb = logits_and_embedding(classifier, adv)
            real = logits[onehot]
            other = logits.masked_fill(onehot, float("-inf")).max(1).values
            l_cw = (real - other).clamp_min(-kappa)
            l_star = (emb[:, None, :] - targets).abs().sum((1, 2))
            l2 = (adv - x).flatten(1).pow(2).sum(1)
            with torch.no_grad():
                better = (logits.argmax(1) != y) & (l2.sqrt() < best_l2)
                best[better], best_l2[better] = adv.detach()[better], l2.sqrt()[better]
            loss = (l2 + c * (l_cw + self.params["beta"] * l_star)).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        return best
