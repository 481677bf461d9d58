"""Class pivots and the pivoted (feature-distance-space) embedding of Carrara et al. 2018, "Adversarial Examples
Detection in Features Distance Spaces" (ECCV 2018 Workshops), Sect. 4.

Per layer, every class c gets one pivot in the layer's activation space, from the training activations of class c:
its *centroid* (Eq. 4, the mean) or its *medoid* (Eq. 5, the member minimising the summed L2 distance to the other
members). An activation `o` `[D]` is embedded as the vector of its distances (or cosine similarities) to the C
pivots, `[C]`.
"""
from __future__ import annotations

from typing import Literal

import torch

from neuroprint.errors import InputError

Metric = Literal["l2", "cos"]
PivotKind = Literal["medoid", "centroid"]
METRICS = ("l2", "cos")
PIVOTS = ("medoid", "centroid")

_TINY = 1e-12  # floor under squared norms before a square root or a division: keeps everything differentiable
_ROWS = 512  # candidate rows per chunk of the medoid's distance sums


def l2_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances `[N, M]` between the rows of `a` `[N, D]` and `b` `[M, D]`; differentiable in both."""
    sq = a.pow(2).sum(1, keepdim=True) - 2.0 * a @ b.T + b.pow(2).sum(1)
    return sq.clamp_min(_TINY).sqrt()


def embed(acts: torch.Tensor, pivots: torch.Tensor, metric: Metric) -> torch.Tensor:
    """The pivoted embedding `[N, C]` of activations `acts` `[N, D]` with pivots `[C, D]`: L2 distances
    (`metric="l2"`) or cosine similarities (`"cos"`) to each pivot. Differentiable in `acts`."""
    pivots = pivots.to(acts)
    if metric == "l2":
        return l2_distances(acts, pivots)
    norms = acts.pow(2).sum(1, keepdim=True).clamp_min(_TINY).sqrt()
    return (acts / norms) @ (pivots / pivots.norm(dim=1, keepdim=True).clamp_min(_TINY)).T


def medoid_index(points: torch.Tensor, max_reference: int = 10_000, generator: torch.Generator | None = None) -> int:
    """Index of the medoid of `points` `[K, D]`: argmin_i sum_j ||p_i - p_j||_2 (Carrara et al. Eq. 5).

    Exact when `K <= max_reference`: the `K x K` distance sums are computed `_ROWS` candidate rows at a time, so
    memory stays `O(_ROWS * K)`. For larger classes (a sampled approximation), every point is still a candidate
    but its distance sum runs over a seeded random sample of `max_reference` members (drawn with `generator`):
    an unbiased estimate of the sum scaled by `max_reference / K`, at cost `O(K * max_reference * D)`.
    """
    if len(points) == 0:
        raise InputError("cannot take the medoid of an empty set")
    points = points.detach().float()
    reference = points
    if len(points) > max_reference:
        reference = points[torch.randperm(len(points), generator=generator)[:max_reference]]
    chunks = range(0, len(points), _ROWS)
    sums = torch.cat([l2_distances(points[i : i + _ROWS], reference).double().sum(1) for i in chunks])
    return int(sums.argmin())


def class_pivots(
    acts: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    kind: PivotKind,
    max_reference: int = 10_000,
    random_state: int = 0,
) -> torch.Tensor:
    """Pivots `[num_classes, D]` (float32) of one layer from training activations `acts` `[N, D]` with labels `[N]`.

    `kind="centroid"`: class means; `"medoid"`: class medoids (`medoid_index`, sampled beyond `max_reference`
    members, seeded with `random_state`). Every class needs at least one training image (`InputError` otherwise).
    """
    counts = torch.bincount(labels, minlength=num_classes)
    if bool((counts == 0).any()):
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise InputError(f"the training data has no image of class(es) {empty}; every class needs a pivot")
    generator = torch.Generator().manual_seed(random_state)
    pivots = []
    for c in range(num_classes):
        members = acts[labels == c].float()
        if kind == "centroid":
            pivots.append(members.double().mean(0).float())
        else:
            pivots.append(members[medoid_index(members, max_reference, generator)])
    return torch.stack(pivots)
