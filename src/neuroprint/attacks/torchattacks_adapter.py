"""The generic `torchattacks.<Class>` attack: any class of torchattacks (Kim 2020, "Torchattacks: A PyTorch
Repository for Adversarial Attacks", arXiv 2010.01950) on a `Classifier`.

torchattacks is optional: it declares a torchvision dependency neuroprint does not need, so it is installed on
its own with `pip install --no-deps torchattacks==3.5.1`. The named L-inf attacks (`linf.py`) do not use it.
torchattacks assumes pixels in [0, 1] and hard-codes that range in its clipping, so these attacks refuse
classifiers with other bounds instead of silently attacking the wrong box.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

from neuroprint.attacks.base import Attack
from neuroprint.checks import check_seed
from neuroprint.errors import ConfigError
from neuroprint.models.classifier import Classifier

INSTALL = "pip install --no-deps torchattacks==3.5.1"


def torchattacks_classes() -> dict[str, type]:
    """The attack classes torchattacks exports, by class name; a one-line `ConfigError` when it is missing."""
    try:
        import torchattacks
    except ImportError:
        message = f"torchattacks.<Class> attacks need the optional torchattacks package; run `{INSTALL}`"
        raise ConfigError(message) from None
    return {
        name: obj
        for name, obj in vars(torchattacks).items()
        if inspect.isclass(obj) and issubclass(obj, torchattacks.attack.Attack) and obj is not torchattacks.attack.Attack
    }


class TorchattacksAttack(Attack):
    """Any torchattacks class by name, e.g. ``make_attack("torchattacks.APGD:eps=0.3,loss=ce")``.

    Keyword arguments are passed to the class constructor (the model is supplied at call time); `params` holds
    the class name, the constructor's defaults overridden by `kwargs`, and `random_state` (default 0, used to
    seed torch's generators during the call; `None` leaves them alone). The output is clipped to [0, 1] but not
    projected (the meaning of a class's `eps` depends on its norm). Runs untargeted, in torchattacks' own modes.
    Classes that need other attacks or extra arguments (`MultiAttack`, `LGV`) cannot be built from a spec.
    """

    norm = "unknown"

    def __init__(self, class_name: str, random_state: int | None = 0, **kwargs: Any) -> None:
        classes = torchattacks_classes()
        if class_name not in classes:
            raise ConfigError(f"unknown torchattacks class {class_name!r}; available: {', '.join(sorted(classes))}")
        cls = classes[class_name]
        signature = inspect.signature(cls.__init__)
        accepted = [p for p in signature.parameters if p not in ("self", "model")]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ConfigError(
                f"unknown parameter(s) {', '.join(unknown)} for torchattacks.{class_name}; valid: {', '.join(accepted)}"
            )
        missing = [
            p for p in accepted
            if signature.parameters[p].default is inspect.Parameter.empty and p not in kwargs
            and signature.parameters[p].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        if missing:
            raise ConfigError(f"torchattacks.{class_name} needs parameter(s) {', '.join(missing)}")
        defaults = {
            p: signature.parameters[p].default
            for p in accepted
            if signature.parameters[p].default is not inspect.Parameter.empty
        }
        super().__init__(**{"class": class_name, **defaults, **kwargs, "random_state": check_seed(random_state)})
        self.name = f"torchattacks.{class_name}"
        self._cls = cls
        self._kwargs = kwargs

    def _check_classifier(self, classifier: Classifier) -> None:
        if tuple(classifier.bounds) != (0.0, 1.0):
            raise ConfigError(
                f"attack {self.name!r} uses torchattacks, which assumes pixels in [0, 1]; "
                f"the classifier's bounds are {list(classifier.bounds)}"
            )

    def _perturb(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._cls(classifier, **self._kwargs)(x, y)
