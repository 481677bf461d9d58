"""Is the adversarially trained mnist-net of `experiments.bank_designs` robust, or does it only mask gradients?
The checks of Athalye, Carlini & Wagner (arXiv 1802.00420) and Carlini et al. ("On Evaluating Adversarial
Robustness", arXiv 1902.06705) on 300 MNIST test images: white-box PGD-100 accuracy must fall as eps grows and
reach 0 beyond the training budget; a transfer attack from the plain model must do no better than white-box; random
restarts must not change much; AutoAttack's APGD (torchattacks, optional) should agree with PGD.

Run: OMP_NUM_THREADS=1 .venv/bin/python experiments/robust_model_check.py   # ~15 min on one core (APGD last)
"""
from __future__ import annotations

import time

import torch

from neuroprint.attacks import make_attack
from neuroprint.data import load_dataset
from neuroprint.models.checkpoint import load_checkpoint
from neuroprint.models.classifier import Classifier

ROBUST = "runs/models/mnist-net-pgd-0.3"  # experiments.bank_designs.ADVERSARIAL_MODEL
PLAIN = "src/neuroprint/models/weights/mnist-net-mnist-4f4256786a"  # the shipped plain mnist-net


def main() -> None:
    torch.manual_seed(0)
    test = load_dataset("mnist").test
    x, y = test.x[:300], test.y[:300]
    robust, _ = load_checkpoint(ROBUST)
    plain, _ = load_checkpoint(PLAIN)

    def accuracy(model: Classifier, images: torch.Tensor) -> float:
        return float((model.predict(images) == y).float().mean())

    print("clean", accuracy(robust, x), accuracy(plain, x))
    for eps in (0.1, 0.2, 0.3, 0.4, 0.5):
        start = time.time()
        adv = make_attack(f"pgd:eps={eps},alpha=0.01,steps=100")(robust, x, y).x_adv
        print(f"white-box PGD-100 eps {eps}: robust acc {accuracy(robust, adv):.3f} ({time.time() - start:.0f}s)",
              flush=True)
    adv_plain = make_attack("pgd:eps=0.3,alpha=0.01,steps=100")(plain, x, y).x_adv
    print("transfer from plain eps 0.3: robust acc", accuracy(robust, adv_plain), "plain acc",
          accuracy(plain, adv_plain), flush=True)
    held = torch.ones(len(x), dtype=torch.bool)
    for restart in range(5):
        adv = make_attack(f"pgd:eps=0.3,alpha=0.02,steps=100,random_state={restart}")(robust, x, y).x_adv
        held &= robust.predict(adv) == y
    print("PGD-100 x 5 random restarts eps 0.3: robust acc", float(held.float().mean()), flush=True)
    adv = make_attack("torchattacks.APGD:eps=0.3,loss=ce,steps=100,n_restarts=1")(robust, x, y).x_adv
    print("APGD-CE eps 0.3: robust acc", accuracy(robust, adv), flush=True)
    adv = make_attack("torchattacks.APGDT:eps=0.3,steps=100,n_restarts=1")(robust, x, y).x_adv
    print("APGD-T (DLR) eps 0.3: robust acc", accuracy(robust, adv), flush=True)


if __name__ == "__main__":
    main()
