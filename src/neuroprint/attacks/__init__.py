"""Attacks: named evasion attacks (`ATTACKS`), any torchattacks class by name, and adversarial sets on disk.

Named attacks: `fgsm`, `bim-a`, `bim-b`, `pgd`, `mifgsm` (L-inf, eps 0.3, step 0.01; plain torch), `cw`,
`deepfool` (L2; foolbox), `ead` (elastic net; foolbox), `jsma` (L0), `lbfgs` (L2; scipy). Build one with
`make_attack("pgd:eps=0.1,steps=20")`, or with the optional torchattacks package
(`pip install --no-deps torchattacks==3.5.1`) `make_attack("torchattacks.APGD:eps=0.3,loss=ce")`; attack
correctly classified images with `build_adversarial_set`.
"""
from __future__ import annotations

from neuroprint.attacks import bim_a as _bim_a  # noqa: F401  (each module registers its attacks)
from neuroprint.attacks import foolbox_attacks as _foolbox_attacks  # noqa: F401
from neuroprint.attacks import jsma as _jsma  # noqa: F401
from neuroprint.attacks import lbfgs as _lbfgs  # noqa: F401
from neuroprint.attacks import linf as _linf  # noqa: F401
from neuroprint.attacks.adversarial_set import AdversarialSet, build_adversarial_set
from neuroprint.attacks.base import Attack, AttackResult
from neuroprint.attacks.torchattacks_adapter import TorchattacksAttack
from neuroprint.errors import ConfigError
from neuroprint.registry import ATTACKS
from neuroprint.specs import parse_spec

_TORCHATTACKS_PREFIX = "torchattacks."


def make_attack(spec: str) -> Attack:
    """Build an attack from `"name"` or `"name:key=value,..."` (values parsed as bool, None, int, float or str).

    `name` is a registered attack (see `ATTACKS.available()`) or `torchattacks.<Class>` for any torchattacks
    class. Unknown names or parameters and bad values raise `ConfigError`.

    Example:
        >>> make_attack("pgd:eps=0.1,steps=20").params["steps"]
        20
    """
    name, kwargs = parse_spec(spec)
    if name.startswith(_TORCHATTACKS_PREFIX):
        return TorchattacksAttack(name[len(_TORCHATTACKS_PREFIX) :], **kwargs)
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS.available())}, or torchattacks.<Class>")
    return ATTACKS.create(name, **kwargs)


__all__ = ["ATTACKS", "AdversarialSet", "Attack", "AttackResult", "TorchattacksAttack", "build_adversarial_set", "make_attack"]
