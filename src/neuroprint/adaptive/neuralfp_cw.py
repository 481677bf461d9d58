"""Adaptive-CW-L2 against NeuralFP (Dathathri, Zheng et al., arXiv 1803.03870, section 3.4, eq. 29).

A white-box attacker who knows the model, its probes (dx, dy), the distance D and the threshold tau solves

    min_{x'}  ||x' - x||_2^2 + gamma * (L_CW(x', t) + L_fp(x', t))

for a target class t != y, with L_CW = max(max_{j != t} Z_j(x') - Z_t(x'), -kappa) on the logits Z, and
L_fp(x', t) = mean_i ||F(x', dx_i) - dy[i, t]||_2^2, the probe loss the model was trained with, evaluated with
the detector's own per-example normalisation and pixel clipping (`neuroprint.models.probes`). Aimed
correctly: the attacker matches the probe targets of its *target* class, which the prediction on x' will be (the
reference code first used the true class, a mistake it fixed late).

x' = low + (high - low) * (tanh(w) + 1) / 2 keeps the box; Adam on w; a per-example bisection over gamma in
[1e-3, 1e6] (`search_steps` rounds) keeps the smallest perturbation that reaches t *and* stays under tau; where
none does, the iterate reaching t with the lowest probe distance (the clean image when t is never reached).
Not a registry entry: it needs the defender's threshold, so build it in code.

Example:
    >>> detector = NeuralFPDetector().fit(clf, x_val, y_val).calibrate(x_val_clean, fpr=0.05)
    >>> result = AdaptiveCWNeuralFP(threshold=detector.threshold_, random_state=0)(clf, x, y)
    >>> detector.predict(result.x_adv[result.success])      # the defender's verdict on the successful attacks
"""
from __future__ import annotations

import math

import torch

from neuroprint.attacks.base import Attack
from neuroprint.checks import check_float, check_int, check_seed
from neuroprint.detectors.neuralfp import model_probes
from neuroprint.errors import ConfigError
from neuroprint.models.classifier import Classifier
from neuroprint.models.probes import probe_distances, probe_responses

GAMMA_RANGE = (1e-3, 1e6)  # the paper's bisection range


class AdaptiveCWNeuralFP(Attack):
    """Targeted CW-L2 that also matches the target class's NeuralFP probes (see the module docstring).

    Args:
        threshold: the defender's tau (`NeuralFPDetector.threshold_`); success needs D_t(x') <= tau, which keeps
            x' under tau for both of the detector's scores (min_j D_j <= D_t, and t is the prediction).
        steps: Adam steps per bisection round. search_steps: bisection rounds over gamma.
        initial_const: first gamma. lr: Adam step size on the tanh-space variable. kappa: CW confidence margin.
        random_state: seeds the target classes (uniform over the classes != y).
    """

    name = "adaptive-cw-neuralfp"
    norm = "l2"

    def __init__(
        self,
        threshold: float,
        steps: int = 100,
        search_steps: int = 4,
        initial_const: float = 1.0,
        lr: float = 0.01,
        kappa: float = 0.0,
        random_state: int | None = 0,
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ConfigError(f"threshold must be a finite number (the detector's threshold_), got {threshold!r}")
        super().__init__(
            threshold=float(threshold),
            steps=check_int("steps", steps),
            search_steps=check_int("search_steps", search_steps),
            initial_const=check_float("initial_const", initial_const, *GAMMA_RANGE, low_open=False),
            lr=check_float("lr", lr, 0.0, 1.0),
            kappa=check_float("kappa", kappa, 0.0, 1e3, low_open=False),
            random_state=check_seed(random_state),
        )

    def _check_classifier(self, classifier: Classifier) -> None:
        model_probes(classifier)  # ConfigError unless the model was trained with probes

    def _perturb(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        probes = model_probes(classifier)
        low, high = classifier.bounds
        k = classifier.num_classes
        target = (y + torch.randint(1, k, y.shape, device=y.device)) % k  # uniform over the classes != y
        w0 = torch.atanh(((x - low) / (high - low) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        gamma = torch.full((len(x),), self.params["initial_const"], device=x.device)
        lower, upper = torch.full_like(gamma, GAMMA_RANGE[0]), torch.full_like(gamma, math.inf)
        best = x.clone()
        best_l2 = torch.full_like(gamma, math.inf)  # smallest perturbation that reached t undetected
        best_distance = torch.full_like(gamma, math.inf)  # fallback: lowest D among iterates that reached t
        dy_target = probes.dy.to(x.device)[:, target].transpose(0, 1)  # [B, n, K]
        is_target = torch.nn.functional.one_hot(target, k).bool()  # [B, K]
        for _ in range(self.params["search_steps"]):
            w = w0.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([w], lr=self.params["lr"])
            succeeded = torch.zeros_like(gamma, dtype=torch.bool)
            for _ in range(self.params["steps"]):
                adv = low + (high - low) * (torch.tanh(w) + 1) / 2
                logits, responses = probe_responses(classifier, adv, probes, classifier.bounds)
                l2 = (adv - x).flatten(1).pow(2).sum(1)
                target_logit = logits.gather(1, target[:, None]).squeeze(1)
                other = logits.masked_fill(is_target, -math.inf).amax(1)
                cw = (other - target_logit).clamp_min(-self.params["kappa"])
                fp = (responses - dy_target).pow(2).sum(2).mean(1)
                loss = (l2 + gamma * (cw + fp)).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    distance = probe_distances(responses, probes).gather(1, target[:, None]).squeeze(1)
                    reached = logits.argmax(1) == target
                    undetected = reached & (distance <= self.params["threshold"])
                    succeeded |= undetected
                    better = undetected & (l2.sqrt() < best_l2)
                    fallback = reached & torch.isinf(best_l2) & (distance < best_distance)
                    update = better | fallback
                    best[update] = adv.detach()[update]
                    best_l2[better] = l2.sqrt()[better]
                    best_distance[fallback] = distance[fallback]
            lower = torch.where(succeeded, lower, gamma)
            upper = torch.where(succeeded, torch.minimum(upper, gamma), upper)
            gamma = torch.where(torch.isinf(upper), gamma * 10, (lower + upper) / 2).clamp(*GAMMA_RANGE)
        return best
