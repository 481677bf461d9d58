"""The fingerprint bank's score kinds: per drawn fingerprint, a number that is higher the more adversarial the
input looks (Fisher, Shahar, Resheff, arXiv 2411.04533, for "lr"; "shift", "anomaly" and "vote" are ours).

Every function takes the drawn fingerprints' values and fitted moments, each `[N, k]`, and returns `[N, k]`; with
z_c = (v - mu_clean) / sd_clean, z_a = (v - mu_adv) / sd_adv and s = sign(mu_adv - mu_clean):

- "shift": min(max(s z_c, 0) + back_weight * max(-s z_c, 0), z_cap): a move away from the clean mean, counted in
  full in the direction the fit attack moved the fingerprint; z_cap (None: none) bounds one fingerprint's share.
- "lr": log N(v; mu_adv, sd_adv) - log N(v; mu_clean, sd_clean), the authors' likelihood-ratio test.
- "anomaly": -log N(v; mu_clean, sd_clean).
- "vote": 1 where v is closer, in z-score, to the adversarial than to the clean distribution, else 0.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Drawn:
    """Values `[N, k]` of the fingerprints drawn for N inputs and their fitted moments (each `[N, k]`)."""

    values: torch.Tensor
    mu_clean: torch.Tensor
    sd_clean: torch.Tensor
    mu_adv: torch.Tensor
    sd_adv: torch.Tensor

    @property
    def z_clean(self) -> torch.Tensor:
        return (self.values - self.mu_clean) / self.sd_clean

    @property
    def z_adv(self) -> torch.Tensor:
        return (self.values - self.mu_adv) / self.sd_adv


def shift(drawn: Drawn, back_weight: float, z_cap: float | None) -> torch.Tensor:
    toward = torch.sign(drawn.mu_adv - drawn.mu_clean) * drawn.z_clean
    per = toward.clamp(min=0) + back_weight * (-toward).clamp(min=0)
    return per if z_cap is None else per.clamp(max=z_cap)


def likelihood_ratio(drawn: Drawn, back_weight: float, z_cap: float | None) -> torch.Tensor:
    return (-0.5 * drawn.z_adv**2 - drawn.sd_adv.log()) - (-0.5 * drawn.z_clean**2 - drawn.sd_clean.log())


def anomaly(drawn: Drawn, back_weight: float, z_cap: float | None) -> torch.Tensor:
    return 0.5 * drawn.z_clean**2 + drawn.sd_clean.log()


def vote(drawn: Drawn, back_weight: float, z_cap: float | None) -> torch.Tensor:
    return (drawn.z_adv.abs() < drawn.z_clean.abs()).float()


#: score kind -> function(drawn, back_weight, z_cap) -> `[N, k]` (parameters a kind does not use are ignored)
SCORE_FUNCTIONS: dict[str, Callable[[Drawn, float, float | None], torch.Tensor]] = {
    "lr": likelihood_ratio, "anomaly": anomaly, "vote": vote, "shift": shift}
