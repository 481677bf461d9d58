"""`Attack` base class and `AttackResult`: what every attack shares, so subclasses write only the per-batch loop.

The base checks inputs, puts the classifier in eval mode with its parameters frozen (attacks need input gradients
only), never mutates the caller's tensors or model, batches with an optional progress bar, seeds every batch of
a stochastic attack by its position in the set (so a torchrun job sharding the batches across ranks,
`neuroprint.distributed`, gets exactly a single process's result), projects onto the L-inf ball when the attack has an `eps`, clips to the classifier's bounds, and
recomputes success and perturbation norms from the classifier itself (a library's own success flag is never
trusted: foolbox CW/EAD return all-zero images where they fail and call them success).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from tqdm.auto import tqdm

from neuroprint.distributed import SINGLE, Ranks, batch_seed
from neuroprint.errors import ConfigError, InputError
from neuroprint.models.classifier import Classifier, input_gradients_only
from neuroprint.registry import ATTACKS

A = TypeVar("A", bound="Attack")


@dataclass
class AttackResult:
    """The outcome of attacking `N` images; every tensor is on the CPU.

    Attributes:
        x_adv: adversarial images `[N, C, H, W]`, float, inside the classifier's bounds.
        success: `[N]` bool, recomputed as ``classifier(x_adv).argmax(1) != y`` (untargeted misclassification).
        adv_pred: `[N]` int64 labels predicted on `x_adv`.
        clean_pred: `[N]` int64 labels predicted on the clean images.
        l2: `[N]` float, L2 norm of ``x_adv - x`` in pixel units.
        linf: `[N]` float, L-inf norm of ``x_adv - x`` in pixel units.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    adv_pred: torch.Tensor
    clean_pred: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor

    @property
    def success_rate(self) -> float:
        """Share of images whose prediction the attack changed away from the true label."""
        return float(self.success.float().mean()) if len(self.success) else 0.0


class Attack(ABC):
    """An evasion attack on a `Classifier`: ``attack(classifier, x, y) -> AttackResult``.

    Subclasses store their hyperparameters through ``super().__init__(**params)`` (the full resolved parameters,
    JSON-serialisable, kept in `params`) and implement `_perturb` for one batch already on `classifier.device`.
    A subclass whose params contain `eps` and whose `norm` is ``"linf"`` is projected onto that L-inf ball;
    a `random_state` param (an int) seeds torch's generators for every batch (`distributed.batch_seed`).
    """

    name: str = "attack"
    norm: ClassVar[str] = "linf"  # the distance the attack bounds or minimises: linf, l2, l1 or l0

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = params

    @abstractmethod
    def _perturb(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial versions of one batch `x` `[B, C, H, W]` with true labels `y` `[B]` (both on the device)."""

    def _check_classifier(self, classifier: Classifier) -> None:
        """Hook: raise `ConfigError` when the attack cannot run on `classifier` (e.g. bounds a library ignores)."""

    def __call__(
        self,
        classifier: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int = 256,
        progress: bool = False,
        ranks: Ranks = SINGLE,
    ) -> AttackResult:
        """Attack images `x` `[N, C, H, W]` (pixels in `classifier.bounds`) with true labels `y` `[N]` (int).

        Every image is attacked, including ones the classifier already gets wrong (their `success` is then
        trivially true); `build_adversarial_set` filters to correctly classified images first. Batches of
        `batch_size` images run on `classifier.device`; `progress` shows a tqdm bar. Bad images or labels raise
        `InputError`, a bad `batch_size` or a classifier the attack cannot handle `ConfigError`. With `ranks` of
        a torchrun job, every rank attacks its block of batches and every rank returns the gathered whole.
        """
        if not isinstance(classifier, Classifier):
            raise InputError(f"classifier must be a neuroprint Classifier, got {type(classifier).__name__}")
        classifier.check_input(x)
        y = check_labels(y, len(x), classifier.num_classes)
        batch_size = _check_batch_size(batch_size)
        self._check_classifier(classifier)
        x = x.detach().cpu()
        device = classifier.device
        was_training = classifier.training
        classifier.eval()
        seed = self.params.get("random_state")
        x_adv, adv_pred, clean_pred = [x[:0]], [y[:0]], [y[:0]]
        try:
            with input_gradients_only(classifier), torch.enable_grad():
                for number in tqdm(ranks.batches(len(x), batch_size), desc=self.name, unit="batch",
                                   disable=not progress or not ranks.main):
                    start = number * batch_size
                    xb = x[start : start + batch_size].to(device)
                    yb = y[start : start + batch_size].to(device)
                    with _seeded(None if seed is None else batch_seed(seed, start), device):
                        adv = self._perturb(classifier, xb.clone(), yb).detach()
                    x_adv.append(self._project(xb, adv, classifier.bounds).cpu())
                    adv_pred.append(classifier.predict(x_adv[-1], batch_size))
                    clean_pred.append(classifier.predict(xb, batch_size))
        finally:
            classifier.train(was_training)
        x_adv, adv_pred, clean_pred = (ranks.gather_rows(torch.cat(parts)) for parts in (x_adv, adv_pred, clean_pred))
        delta = (x_adv - x).flatten(1)
        return AttackResult(
            x_adv=x_adv,
            success=adv_pred != y,
            adv_pred=adv_pred,
            clean_pred=clean_pred,
            l2=delta.norm(dim=1),
            linf=delta.abs().amax(dim=1),
        )

    def _project(self, x: torch.Tensor, x_adv: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
        if x_adv.shape != x.shape or not torch.isfinite(x_adv).all():
            raise RuntimeError(f"attack {self.name!r} returned an invalid batch of shape {list(x_adv.shape)}")
        eps = self.params.get("eps")
        if self.norm == "linf" and eps is not None:
            x_adv = x + (x_adv - x).clamp(-eps, eps)
        return x_adv.clamp(*bounds)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def check_labels(y: Any, n: int, num_classes: int, name: str = "y") -> torch.Tensor:
    """Return `y` as a CPU int64 tensor `[n]` with values in ``[0, num_classes)``, else raise `InputError`."""
    if not isinstance(y, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor of int labels, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InputError(f"{name} must hold integer labels, got dtype {y.dtype}")
    if y.shape != (n,):
        raise InputError(f"{name} must have shape [{n}] (one label per image), got {list(y.shape)}")
    y = y.detach().cpu().long()
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InputError(f"{name} has labels in [{int(y.min())}, {int(y.max())}]; valid: 0..{num_classes - 1}")
    return y


def register_attack(name: str) -> Callable[[type[A]], type[A]]:
    """Class decorator: set `cls.name` and register the class in `ATTACKS` (which rejects unknown parameters)."""

    def decorator(cls: type[A]) -> type[A]:
        cls.name = name
        ATTACKS.register(name)(cls)
        return cls

    return decorator


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's generators with `seed` inside the block and restore their state after (no-op for None)."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
