"""The reference path of influence functions for NNIF (Cohen et al. 2020, arXiv 1909.06872): every parameter of the
network, per-example gradients with torch.func, and the LiSSA stochastic inverse-Hessian-vector product (Agarwal et
al. 2017; settings in `LissaConfig`) that the NNIF reference code uses.

I(z, x) = -grad L(x)^T H^-1 grad L(z) as in `neuroprint.detectors.influence` (negative = helpful). Slow: it exists
to validate the exact last-layer path (`LastLayerInfluence`) and to measure its speed-up (benchmarks/nnif_speed.py,
experiments/nnif_lissa_detection.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from tqdm.auto import tqdm

from neuroprint.errors import ConfigError
from neuroprint.models.classifier import Classifier


def _loss_fn(classifier: Classifier) -> Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]:
    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(classifier, params, (x,))
        return nn.functional.cross_entropy(logits, y)

    return loss


def _flat(tree: dict[str, torch.Tensor], batched: bool = False) -> torch.Tensor:
    return torch.cat([t.flatten(1) if batched else t.flatten() for t in tree.values()], dim=-1)


def _unflat(vector: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, t in like.items():
        out[name] = vector[start : start + t.numel()].view_as(t)
        start += t.numel()
    return out


def per_example_gradients(classifier: Classifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Full-network per-example loss gradients `[N, P]` (all P parameters, float32), with torch.func.vmap.

    The classifier must be in eval mode (BatchNorm uses its running statistics).
    """
    classifier.eval()
    params = {k: v.detach() for k, v in classifier.named_parameters()}
    loss = _loss_fn(classifier)
    one = vmap(grad(lambda p, xi, yi: loss(p, xi[None], yi[None])), in_dims=(None, 0, 0))
    return torch.cat([_flat(one(params, x[i : i + batch_size], y[i : i + batch_size]), batched=True)
                      for i in range(0, len(x), batch_size)])


def hessian_vector_products(
    classifier: Classifier,
    vectors: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    params: dict[str, torch.Tensor] | None = None,
    loss: Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """H v `[B, P]` for full-network vectors `[B, P]`, H the Hessian of the mean cross-entropy loss on (x, y)
    (forward-over-reverse with torch.func; cost about 2-3 backward passes over `x` per vector)."""
    params = params if params is not None else {k: v.detach() for k, v in classifier.named_parameters()}
    loss = loss if loss is not None else _loss_fn(classifier)

    def one(v: torch.Tensor) -> torch.Tensor:
        return _flat(jvp(lambda p: grad(loss)(p, x, y), (params,), (_unflat(v, params),))[1])

    return vmap(one)(vectors)


@dataclass(frozen=True)
class LissaConfig:
    """Settings of the LiSSA inverse-Hessian-vector product (Agarwal et al. 2017), as the NNIF reference code uses it.

    H (the Hessian of the mean training loss over all parameters) is estimated on seeded minibatches of
    `batch_size` training points (all of them, without sampling, when `batch_size` >= the training set). The
    recursion is h_j = v + h_{j-1} - (H + damping I) h_{j-1} / scale for `depth` steps, and s = h / scale. `damping`
    means what it means in `LastLayerInfluence` (the reference code's recursion damps by `damping * scale` instead).
    `scale=None` sets it to twice the largest Hessian eigenvalue (20 steps of power iteration) plus `damping`:
    LiSSA converges only when scale exceeds half of the largest eigenvalue of H + damping I, at a rate of
    1 - (smallest eigenvalue + damping) / scale per step, so `depth` must be several times
    scale / (smallest eigenvalue + damping); a truncated recursion acts like a larger damping, about scale / depth.
    Cost: `depth` Hessian-vector products on `batch_size` images per vector, `vectors_per_pass` vectors at a time.
    """

    damping: float = 0.01
    scale: float | None = None
    depth: int = 100
    batch_size: int = 50
    vectors_per_pass: int = 8
    random_state: int = 0

    def __post_init__(self) -> None:
        if not self.damping >= 0:
            raise ConfigError(f"LiSSA damping must be >= 0, got {self.damping}")
        if self.scale is not None and not self.scale > 0:
            raise ConfigError(f"LiSSA scale must be > 0 (or None to estimate it), got {self.scale}")
        for name, value, minimum in (("depth", self.depth, 0), ("batch_size", self.batch_size, 1),
                                     ("vectors_per_pass", self.vectors_per_pass, 1)):
            if value < minimum:
                raise ConfigError(f"LiSSA {name} must be >= {minimum}, got {value}")


def lissa_inverse_hvp(
    classifier: Classifier,
    vectors: torch.Tensor,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    config: LissaConfig = LissaConfig(),
    progress: bool = False,
) -> torch.Tensor:
    """LiSSA (Agarwal et al. 2017) estimates of s = (H + damping I)^-1 v `[B, P]` for full-network vectors `[B, P]`
    (settings in `LissaConfig`). The classifier must be in eval mode."""
    damping, batch_size = config.damping, config.batch_size
    classifier.eval()
    params = {k: v.detach() for k, v in classifier.named_parameters()}
    loss = _loss_fn(classifier)
    generator = torch.Generator().manual_seed(config.random_state)

    def minibatch() -> tuple[torch.Tensor, torch.Tensor]:
        if batch_size >= len(x_train):
            return x_train, y_train
        index = torch.randint(len(x_train), (batch_size,), generator=generator)
        return x_train[index], y_train[index]

    scale = config.scale
    if scale is None:
        v = torch.randn(1, vectors.shape[1], generator=generator)
        for _ in range(20):
            v = hessian_vector_products(classifier, v / v.norm(), *minibatch(), params, loss)
        scale = 2.0 * float(v.norm()) + damping
    solved = []
    per_pass = config.vectors_per_pass
    for start in tqdm(range(0, len(vectors), per_pass), desc="lissa", disable=not progress, unit="pass"):
        v = vectors[start : start + per_pass]
        h = v.clone()
        for _ in range(config.depth):
            h = v + (1.0 - damping / scale) * h - hessian_vector_products(classifier, h, *minibatch(), params, loss) / scale
        solved.append(h / scale)
    return torch.cat(solved)


def lissa_influence(
    classifier: Classifier,
    x: torch.Tensor,
    labels: torch.Tensor,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    config: LissaConfig = LissaConfig(),
    progress: bool = False,
) -> torch.Tensor:
    """Full-network influence I(z, x) `[B, N_train]` of the training points `x_train` on inputs `x` labelled
    `labels`, the NNIF reference way: s = (H + damping I)^-1 grad L(x) by `lissa_inverse_hvp` (settings in
    `config`), then I(z, x) = -s . grad L(z) with per-example training gradients. Each s is scaled to unit
    norm (as in the fast path). Cost: the LiSSA recursion per input, then one full-network gradient per training
    point, shared by all inputs.
    """
    tests = per_example_gradients(classifier, x, labels)
    s = lissa_inverse_hvp(classifier, tests, x_train, y_train, config, progress)
    s = s / s.norm(dim=1, keepdim=True)
    blocks = []
    for start in tqdm(range(0, len(x_train), 256), desc="train gradients", disable=not progress, unit="chunk"):
        g = per_example_gradients(classifier, x_train[start : start + 256], y_train[start : start + 256])
        blocks.append(-(s @ g.T))
    return torch.cat(blocks, dim=1)
