"""Adversarial training (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018,
arXiv 1706.06083): every training batch is replaced by its adversarial examples, so the model learns to classify
inside the attack's budget.

Example:
    >>> perturb = adversarial_training("pgd:eps=0.3,alpha=0.1,steps=5")
    >>> train(classifier, data.train, data.val, TrainConfig(), perturb=perturb)   # neuroprint.models.training
"""
from __future__ import annotations

import torch

from neuroprint.attacks import ATTACKS, make_attack
from neuroprint.models.classifier import Classifier
from neuroprint.models.training import Perturb
from neuroprint.specs import parse_spec


def adversarial_training(spec: str) -> Perturb:
    """The `Perturb` of `models.training.train` that attacks each batch `[B, C, H, W]` (true labels `[B]`) with
    attack `spec` (e.g. "pgd:eps=0.3,alpha=0.1,steps=5", eps in pixel units of [0, 1] images) and returns every
    adversarial example, successful or not. A registered attack with a `random_state` draws fresh random starts for
    every batch unless the spec fixes one. Bad specs raise `ConfigError` now, not at the first batch."""
    name, params = parse_spec(spec)
    if name in ATTACKS and "random_state" in ATTACKS.parameters(name):
        attack = ATTACKS.create(name, **{"random_state": None, **params})
    else:
        attack = make_attack(spec)

    def perturb(classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return attack(classifier, x, y, batch_size=len(x)).x_adv.to(x.device)

    return perturb
