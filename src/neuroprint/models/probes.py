"""NeuralFP probes: secret input perturbations and the normalised-logit changes a model is trained to show.

Dathathri, Zheng et al., "Detecting Adversarial Examples via Neural Fingerprinting" (arXiv 1803.03870), who call the
(dx, dy) pairs "fingerprints"; neuroprint calls them *probes* (its fingerprints are the bank's neuron subsets):
- probe directions `dx[i]` `[C, H, W]`, every pixel uniform in `[-eps, eps]` (pixel units of `[0, 1]` inputs;
  section 3.1), or in `[0, eps)` as the reference code draws them (`np.random.rand(...) * eps`, `directions="positive"`);
- target changes `dy[i, j]` `[K]` for an input of class `j`: -0.235 off-class and +0.7 on class `j` (norm ~1 for
  K = 10, section 3.1), or the random-sign variant of section 3.3 (eq. 28: the same pattern times p = +-1, drawn
  per direction);
- phi(x) = logits / ||logits||_2 per example (eq. 11); F(x, dx_i) = phi(clip(x + dx_i)) - phi(x) (eq. 10);
- training loss (eq. 13–14): cross-entropy + weight * mean_i ||F(x, dx_i) - dy[i, y]||^2 on the true class only;
- detection distance (eq. 8–9): D_j(x) = mean_i ||F(x, dx_i) - dy[i, j]||_2, higher = less like a clean input.

`x + dx_i` is clipped to the model's pixel bounds in training, detection and attacks alike (`perturbed_inputs`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from neuroprint.checks import check_choice, check_float, check_int
from neuroprint.errors import ConfigError, InputError

PATTERNS = ("paper", "random-sign")
DIRECTIONS = ("symmetric", "positive")  # dx pixels uniform in [-eps, eps] (paper text) or [0, eps) (reference code)
OFF_CLASS, ON_CLASS = -0.235, 0.7  # the paper's target change of a normalised logit (section 3.1)


@dataclass(frozen=True)
class ProbeConfig:
    """How to draw and train NeuralFP probes: `n` directions of pixel amplitude `eps` in (0, 1), target
    `pattern` ("paper" or "random-sign"), `directions` ("symmetric": pixels uniform in [-eps, eps] as the paper
    says; "positive": in [0, eps) as the reference code draws them), loss `weight` (the reference code uses 1 on
    MNIST, 1 + 50/n on CIFAR).

    `per_step`: how many of the n directions each training step evaluates (a fresh uniform draw per step, an
    unbiased estimate of L_fp that costs (per_step + 1) instead of (n + 1) forward passes per batch); None = all
    n, as the reference code does.
    """

    n: int = 10
    eps: float = 0.006
    pattern: str = "paper"
    weight: float = 1.0
    seed: int = 0
    per_step: int | None = None
    directions: str = "symmetric"

    def __post_init__(self) -> None:
        check_int("probes (n)", self.n)
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not 0.0 < self.eps < 1.0:
            raise ConfigError(f"probe eps must be a number in (0, 1) (pixel units), got {self.eps!r}")
        check_choice("probe pattern", self.pattern, PATTERNS)
        check_choice("probe directions", self.directions, DIRECTIONS)
        check_float("probe loss weight", self.weight, 0.0, math.inf)
        check_int("probe seed", self.seed, minimum=0)
        if self.per_step is not None and check_int("probe directions per step", self.per_step) > self.n:
            raise ConfigError(f"probe directions per step must be <= n = {self.n}, got {self.per_step}")


@dataclass(frozen=True)
class NeuralFPProbes:
    """A model's secret NeuralFP probes: `dx` `[n, C, H, W]` (pixels) and `dy` `[n, K, K]` (`dy[i, j]`: the change of
    the normalised logits along `dx[i]` for an input of class `j`)."""

    dx: torch.Tensor
    dy: torch.Tensor
    config: ProbeConfig

    @classmethod
    def sample(cls, config: ProbeConfig, image_shape: tuple[int, int, int], num_classes: int) -> NeuralFPProbes:
        """Draw probes for `[C, H, W]` images and `num_classes` classes from `config.seed`."""
        if num_classes < 2:
            raise ConfigError(f"NeuralFP probes need at least 2 classes, got {num_classes}")
        generator = torch.Generator().manual_seed(config.seed)
        uniform = torch.rand((config.n, *image_shape), generator=generator)
        dx = (uniform if config.directions == "positive" else uniform * 2.0 - 1.0) * config.eps
        pattern = torch.full((num_classes, num_classes), OFF_CLASS)
        pattern.fill_diagonal_(ON_CLASS)
        dy = pattern.expand(config.n, num_classes, num_classes).clone()
        if config.pattern == "random-sign":
            signs = torch.randint(0, 2, (config.n, 1, 1), generator=generator).float() * 2.0 - 1.0
            dy = dy * signs
        return cls(dx, dy, config)

    @property
    def n(self) -> int:
        return int(self.dx.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.dy.shape[1])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to store beside a checkpoint (safetensors)."""
        return {"dx": self.dx.contiguous(), "dy": self.dy.contiguous()}

    def meta(self) -> dict[str, object]:
        return asdict(self.config)

    @classmethod
    def from_stored(cls, tensors: dict[str, torch.Tensor], meta: dict[str, object]) -> NeuralFPProbes:
        """Inverse of `tensors()` + `meta()`; raises `InputError` when they do not fit together."""
        if set(tensors) != {"dx", "dy"}:
            raise InputError(f"stored probes must hold tensors 'dx' and 'dy', found {sorted(tensors)}")
        try:
            config = ProbeConfig(**meta)  # type: ignore[arg-type]
        except TypeError as exc:
            raise InputError(f"stored probe settings are invalid ({exc})") from None
        dx, dy = tensors["dx"].float(), tensors["dy"].float()
        if dx.ndim != 4 or dy.ndim != 3 or len(dx) != config.n or len(dy) != config.n or dy.shape[1] != dy.shape[2]:
            raise InputError(f"stored probes have shapes dx {list(dx.shape)}, dy {list(dy.shape)}; expected "
                             f"[{config.n}, C, H, W] and [{config.n}, K, K]")
        return cls(dx, dy, config)


def normalized_logits(logits: torch.Tensor) -> torch.Tensor:
    """phi(x) (eq. 11): logits `[B, K]` divided by their L2 norm per example (guarded against a zero norm)."""
    return logits / logits.norm(dim=1, keepdim=True).clamp_min(1e-12)


def perturbed_inputs(
    x: torch.Tensor, probes: NeuralFPProbes, bounds: tuple[float, float], directions: torch.Tensor | None = None
) -> torch.Tensor:
    """`[(m + 1) * B, C, H, W]`: the batch `x` `[B, C, H, W]` followed by clip(x + dx_i) for the m `directions`
    (indices into the n probes; default all), direction-major."""
    if tuple(x.shape[1:]) != tuple(probes.dx.shape[1:]):
        raise InputError(f"images have shape {list(x.shape[1:])}, the probes were drawn for "
                         f"{list(probes.dx.shape[1:])}")
    dx = probes.dx if directions is None else probes.dx[directions]
    dx = dx.to(device=x.device, dtype=x.dtype)
    shifted = (x.unsqueeze(0) + dx.unsqueeze(1)).clamp(*bounds)  # [n, B, C, H, W]
    return torch.cat([x, shifted.flatten(0, 1)])


def probe_responses(
    model: torch.nn.Module,
    x: torch.Tensor,
    probes: NeuralFPProbes,
    bounds: tuple[float, float],
    directions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass over x and its perturbed copies; returns (logits `[B, K]`, F `[B, m, K]`, eq. 10) for the
    m `directions` (default all n). Differentiable in `x` and in the model's parameters.
    """
    logits = model(perturbed_inputs(x, probes, bounds, directions))
    batch = len(x)
    phi = normalized_logits(logits)
    clean_phi = phi[:batch]
    shifted_phi = phi[batch:].view(-1, batch, phi.shape[1]).transpose(0, 1)  # [B, m, K]
    return logits[:batch], shifted_phi - clean_phi.unsqueeze(1)


def probe_loss(
    responses: torch.Tensor, y: torch.Tensor, probes: NeuralFPProbes, directions: torch.Tensor | None = None
) -> torch.Tensor:
    """L_fp (eq. 13), averaged over the batch: mean over examples of mean_i ||F(x, dx_i) - dy[i, y]||_2^2.

    `responses` `[B, m, K]` from `probe_responses` (same `directions`); `y` `[B]` the classes whose
    probe targets must match.
    """
    dy = probes.dy if directions is None else probes.dy[directions]
    targets = dy.to(responses.device)[:, y].transpose(0, 1)  # [B, m, K]
    return (responses - targets).pow(2).sum(dim=2).mean()


def probe_distances(responses: torch.Tensor, probes: NeuralFPProbes) -> torch.Tensor:
    """D (eq. 8–9): `[B, K]`, entry (b, j) = mean_i ||F(x_b, dx_i) - dy[i, j]||_2 (higher = worse match)."""
    dy = probes.dy.to(responses.device)  # [n, K(class j), K(logit)]
    diff = responses.unsqueeze(2) - dy.unsqueeze(0)  # [B, n, K(class j), K(logit)]
    return diff.norm(dim=3).mean(dim=1)
