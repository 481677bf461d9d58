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
- `neuroprint.detectors.lissa.lissa_influence` (the reference path): every parameter of the network, with the
  LiSSA inverse-Hessian-vector product that the NNIF reference code uses.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

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
