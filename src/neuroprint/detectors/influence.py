"""Influence functions (Koh & Liang 2017, arXiv 1703.04730) for NNIF (Cohen et al. 2020, arXiv 1909.06872).

The influence of upweighting a training point z on the loss at a test input x is
I(z, x) = -grad L(x)^T H^-1 grad L(z), with H the Hessian of the mean training loss (Koh & Liang, Eq. 2). Negative
values are **helpful** (upweighting z lowers the loss at x), positive values **harmful**.

Two ways to compute it:
- `LastLayerInfluence` (the fast path): exact, with the parameters restricted to the last `nn.Linear` layer
  (embedding h `[D]` -> logits `[K]`). For softmax cross-entropy the per-example gradient is closed-form,
  (p - onehot(y)) outer [h, 1], the Hessian is sum_n (diag(p_n) - p_n p_n^T) kron [h_n, 1][h_n, 1]^T / N (exact,
  `K(D+1)` square), damped and Cholesky-factorised once; the influence of all training points on a batch of inputs
  is then a few matrix products, streamed over chunks of the training set.
- `lissa_influence` (the reference path): every parameter of the network, per-example gradients with torch.func,
  and the LiSSA stochastic inverse-Hessian-vector product (`lissa_inverse_hvp`, settings in `LissaConfig`; Agarwal
  et al. 2017) that the NNIF reference code uses. Slow: it exists to validate the fast path and to measure the
  speed-up (benchmarks/nnif_speed.py, experiments/nnif_lissa_detection.py).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from tqdm.auto import tqdm

from neuroprint.errors import ConfigError, InputError
from neuroprint.features import Pooling, pool
from neuroprint.models.classifier import Classifier, last_linear

_CHUNK = 256  # images per forward pass
_TRAIN_CHUNK = 4096  # training points per influence block: [B, K, chunk] floats at a time


@torch.no_grad()
def forward_with_embedding(
    classifier: Classifier, x: torch.Tensor, layers: tuple[str, ...] = (), pooling: Pooling = "avg"
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One gradient-free pass over `x` `[N, C, H, W]` in batches: logits `[N, K]`, the embedding (input of the last
    linear layer) `[N, D]` and the pooled activations `{layer: [N, D_layer]}` of `layers`, all float32 on the CPU."""
    classifier.eval()
    linear = last_linear(classifier)
    logits, embedding, acts = [], [], {layer: [] for layer in layers}
    hook = linear.register_forward_pre_hook(lambda _m, inputs: embedding.append(inputs[0].flatten(1).float().cpu()))
    try:
        for start in range(0, len(x), _CHUNK):
            out, raw = classifier.layer_outputs(x[start : start + _CHUNK].to(classifier.device), layers)
            logits.append(out.float().cpu())
            for layer in layers:
                acts[layer].append(pool(raw[layer], pooling).float().cpu())
    finally:
        hook.remove()
    return torch.cat(logits), torch.cat(embedding), {k: torch.cat(v) for k, v in acts.items()}


def loss_gradient_factors(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`r = p - onehot(labels)` `[N, K]` in float64, the logit-side factor of the last-layer loss gradient.

    p is the softmax of `logits` `[N, K]`; the labelled entry is written as minus the sum of the others, so a
    confident prediction keeps an exact (tiny, non-zero) gradient direction instead of rounding to zero.
    """
    p = torch.softmax(logits.double(), dim=1)
    rows = torch.arange(len(p))
    p[rows, labels] = 0.0
    p[rows, labels] = -p.sum(1)
    return p


def _augment(embedding: torch.Tensor) -> torch.Tensor:
    """`[h, 1]` `[N, D + 1]`: the embedding with a constant for the bias."""
    return torch.cat([embedding, torch.ones(len(embedding), 1, dtype=embedding.dtype)], dim=1)


class LastLayerInfluence:
    """Exact influence functions restricted to the last linear layer, for a whole training set at once.

    `fit(embedding [N, D], logits [N, K], labels [N])` stores the training points' gradient factors and factorises
    the damped Hessian `H + damping * I` (float64, `K(D+1)` square); `influence(embedding, logits, labels)` gives
    I(z, x) `[B, N]` and `top(...)` the indices of the `m` most helpful and most harmful training points without
    materialising more than `[B, chunk]` influences.

    Example:
        >>> inf = LastLayerInfluence(damping=0.01).fit(h_train, logits_train, y_train)
        >>> helpful, harmful = inf.top(h_test, logits_test, logits_test.argmax(1), m=50)  # [B, 50] each
    """

    def __init__(self, damping: float = 0.01, chunk: int = _TRAIN_CHUNK) -> None:
        if not damping >= 0:
            raise ConfigError(f"damping must be >= 0, got {damping}")
        self.damping = damping
        self.chunk = chunk

    def fit(self, embedding: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> LastLayerInfluence:
        """Hessian of the mean training loss of the last layer, damped and Cholesky-factorised."""
        if embedding.ndim != 2 or logits.shape != (len(embedding), logits.shape[1]) or labels.shape != (len(embedding),):
            raise InputError(f"need embedding [N, D], logits [N, K], labels [N]; got {list(embedding.shape)}, "
                             f"{list(logits.shape)}, {list(labels.shape)}")
        k = logits.shape[1]
        self.train_a_ = _augment(embedding.float())  # [N, D + 1]
        self.train_r_ = loss_gradient_factors(logits, labels).float()  # [N, K]
        p = torch.softmax(logits.double(), dim=1)
        d1 = self.train_a_.shape[1]
        hessian = torch.zeros(k, d1, k, d1, dtype=torch.float64)
        for start in range(0, len(p), self.chunk):
            a = self.train_a_[start : start + self.chunk]
            pc = p[start : start + self.chunk]
            for i in range(k):
                for j in range(i, k):
                    w = (pc[:, i] * (float(i == j) - pc[:, j])).float()  # (diag(p) - p p^T)[i, j]
                    block = ((a * w[:, None]).T @ a).double()
                    hessian[i, :, j] += block
                    if j != i:
                        hessian[j, :, i] += block
        hessian = hessian.view(k * d1, k * d1) / len(p)
        hessian += self.damping * torch.eye(k * d1, dtype=torch.float64)
        factor, info = torch.linalg.cholesky_ex(hessian)
        if int(info) != 0:
            raise InputError(f"the last-layer Hessian is singular: raise damping above {self.damping}")
        self.cholesky_ = factor
        return self

    def directions(self, embedding: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """`s = H^-1 grad L(x)` `[B, K, D + 1]`, each scaled to unit norm (scale never changes a ranking)."""
        g = loss_gradient_factors(logits, labels)[:, :, None] * _augment(embedding.double())[:, None, :]
        g = g / g.flatten(1).norm(dim=1).clamp_min(1e-300)[:, None, None]
        s = torch.cholesky_solve(g.flatten(1).T, self.cholesky_).T.reshape(g.shape)
        return (s / s.flatten(1).norm(dim=1)[:, None, None]).float()

    def _blocks(self, s: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield `(start, I[B, chunk])`: -s . (r_z kron a_z) for consecutive chunks of training points z."""
        b, k, d1 = s.shape
        flat = s.reshape(b * k, d1)
        for start in range(0, len(self.train_a_), self.chunk):
            t = (flat @ self.train_a_[start : start + self.chunk].T).view(b, k, -1)  # [B, K, chunk]
            yield start, -(t * self.train_r_[start : start + self.chunk].T[None]).sum(1)

    def influence(self, embedding: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """I(z, x) `[B, N]` for every training point z (up to one positive factor per input x)."""
        return torch.cat([block for _, block in self._blocks(self.directions(embedding, logits, labels))], dim=1)

    def top(
        self, embedding: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, m: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices `[B, m]` of the `m` most helpful (most negative I, first = most helpful) and the `m` most
        harmful (most positive I) training points for inputs labelled `labels`, streamed chunk by chunk."""
        if m > len(self.train_a_):
            raise InputError(f"m={m} exceeds the {len(self.train_a_)} training points")
        s = self.directions(embedding, logits, labels)
        best: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for start, block in self._blocks(s):
            for kind, signed in (("helpful", -block), ("harmful", block)):
                values, index = signed.topk(min(m, block.shape[1]), dim=1)
                if kind in best:
                    values = torch.cat([best[kind][0], values], dim=1)
                    index = torch.cat([best[kind][1], index + start], dim=1)
                    values, keep = values.topk(m, dim=1)
                    index = index.gather(1, keep)
                else:
                    index = index + start
                best[kind] = (values, index)
        return best["helpful"][1], best["harmful"][1]


# -- the reference path: full network, LiSSA --------------------------------------------------------------------
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
