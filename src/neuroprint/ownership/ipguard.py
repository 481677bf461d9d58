"""IPGuard baseline (Cao, Jia and Gong 2019, "IPGuard: Protecting Intellectual Property of Deep Neural Networks via
Fingerprinting the Classification Boundary", AsiaCCS 2021, arXiv 1910.12903).

IPGuard's query set (with which the paper fingerprints a model) holds data points near its classification
boundary: starting from a benign image of class i and a random other class j, Adam minimises
``ReLU(g_i(x) - g_j(x) + k) + ReLU(max_{t != i,j} g_t(x) - g_i(x))`` over the logits g, which puts x on j's
side of the i/j boundary with logit margin k and i as the runner-up. Inputs stay in the pixel box (IPGuard has no
L-inf budget). The target label of a query is the source's prediction j; verification is the matching rate, which
is CAEAcc on this query set (`verify.cae_accuracy`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from neuroprint.checks import check_float, check_int
from neuroprint.errors import InputError
from neuroprint.models.classifier import Classifier, check_images, input_gradients_only
from neuroprint.ownership import settings
from neuroprint.ownership.queries import QuerySet


@dataclass(frozen=True)
class IPGuardConfig:
    """`k`: logit margin (larger = farther from the boundary, more robust, less unique); Adam `lr` in pixel units."""

    k: float = 0.5
    steps: int = 300
    lr: float = 0.01
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        check_float("k", self.k, 0.0, 1e3, low_open=False)
        check_int("steps", self.steps)
        check_float("lr", self.lr, 0.0, 1.0)
        check_int("batch_size", self.batch_size)
        check_int("seed", self.seed, minimum=0)


def ipguard_loss(logits: torch.Tensor, i: torch.Tensor, j: torch.Tensor, k: float) -> torch.Tensor:
    """Per-input IPGuard loss `[N]` for logits `[N, K]`, runner-up class `i` `[N]` and target class `j` `[N]`; 0
    exactly when j leads i by at least `k` and i beats every other class."""
    g_i = logits.gather(1, i[:, None]).squeeze(1)
    g_j = logits.gather(1, j[:, None]).squeeze(1)
    others = logits.scatter(1, i[:, None], float("-inf")).scatter(1, j[:, None], float("-inf"))
    return torch.relu(g_i - g_j + k) + torch.relu(others.max(1).values - g_i)


def generate_ipguard_queries(
    source: Classifier, x: torch.Tensor, size: int = settings.SIZE, config: IPGuardConfig | None = None, progress: bool = True
) -> QuerySet:
    """An IPGuard query set of at most `size` inputs grown from the first images of `x` `[N, C, H, W]`.

    Only points on which the optimisation converged (loss 0: the source predicts j) are kept.
    """
    config = config or IPGuardConfig()
    check_images(x, source.bounds)
    size = check_int("size", size)
    generator = torch.Generator().manual_seed(config.seed)
    lo, hi = source.bounds
    source.eval()
    kept_x, kept_t = [], []
    n_tried = 0
    bar = tqdm(total=size, desc="IPGuard", unit="point", disable=not progress)
    for start in range(0, len(x), config.batch_size):
        x0 = x[start : start + config.batch_size].to(source.device)
        i = source.predict(x0).to(source.device)
        j = (i + torch.randint(1, source.num_classes, i.shape, generator=generator).to(i.device)) % source.num_classes
        x_query = x0.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x_query], lr=config.lr)
        with input_gradients_only(source):
            for _ in range(config.steps):
                loss = ipguard_loss(source(x_query), i, j, config.k)
                optimizer.zero_grad()
                loss.sum().backward()
                optimizer.step()
                with torch.no_grad():
                    x_query.clamp_(lo, hi)
        with torch.no_grad():
            logits = source(x_query)
            done = (ipguard_loss(logits, i, j, config.k) == 0) & (logits.argmax(1) == j)  # k = 0 allows ties
        kept_x.append(x_query.detach()[done].cpu())
        kept_t.append(j[done].cpu())
        n_tried += len(x0)
        bar.update(min(int(done.sum()), size - bar.n))
        if sum(len(t) for t in kept_t) >= size:
            break
    bar.close()
    query_x, query_t = torch.cat(kept_x)[:size], torch.cat(kept_t)[:size]
    if len(query_x) == 0:
        raise InputError(f"IPGuard converged on none of {n_tried} images; raise steps or lr, or lower k")
    return QuerySet(query_x, query_t, "ipguard", {"ipguard": asdict(config), "n_tried": n_tried, "n_converged": len(query_x)})
