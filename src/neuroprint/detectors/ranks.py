"""Nearest-neighbour ranks of chosen training points, without sorting the training set per query.

NNIF (Cohen et al. 2020, arXiv 1909.06872, Alg. 1 NNFEATURES) needs, for an input x and a few chosen training points
j, the rank of j among x's neighbours in the training set (how many training points are closer to x than j) and the
L2 distance. Sorting all N distances per query costs O(N log N) and the reference code asks a k-NN model for all N
neighbours. Here the exact squared distances to all training points come from faiss's brute-force kernel
(`faiss.pairwise_distances`, BLAS), the S chosen distances are sorted (S << N) and every training distance is
bucketed among them (O(N log S)); a cumulative histogram of the buckets gives every chosen point's rank.
"""
from __future__ import annotations

import faiss
import numpy as np
import torch

_QUERY_CHUNK = 64  # queries per block: the [chunk, N] float32 distance block bounds the memory


def squared_distances(queries: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Exact squared L2 distances `[B, N]` (float32) from `queries` `[B, D]` to `reference` `[N, D]`, by faiss."""
    q = np.ascontiguousarray(queries.detach().cpu().numpy(), dtype=np.float32)
    r = np.ascontiguousarray(reference.detach().cpu().numpy(), dtype=np.float32)
    return torch.from_numpy(faiss.pairwise_distances(q, r)).clamp_min_(0.0)


def ranks_and_distances(
    queries: torch.Tensor, reference: torch.Tensor, chosen: torch.Tensor, chunk: int = _QUERY_CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks `[B, S]` (int64, 1 = nearest) and L2 distances `[B, S]` (float32) of the training points `chosen`
    `[B, S]` (indices into `reference` `[N, D]`) among the neighbours of each query `[B, D]`.

    rank = 1 + the number of training points strictly closer to the query than the chosen point, so without
    ties it is the chosen point's 1-based position in the query's sorted neighbour list. Memory: `[chunk, N]`.
    """
    ranks, dists = [], []
    for start in range(0, len(queries), chunk):
        d = squared_distances(queries[start : start + chunk], reference)  # [b, N]
        sel = d.gather(1, chosen[start : start + chunk])  # [b, S]
        sorted_sel, order = sel.sort(dim=1)
        b, s = sel.shape
        # bucket of each training distance: how many chosen distances are <= it (0..S)
        bucket = torch.searchsorted(sorted_sel, d, right=True)  # [b, N]
        counts = torch.zeros(b, s + 1, dtype=torch.long)
        counts.scatter_add_(1, bucket, torch.ones_like(bucket))
        # points strictly closer than the j-th smallest chosen distance: buckets 0..j
        closer_sorted = counts.cumsum(1)[:, :s]
        closer = torch.empty_like(closer_sorted).scatter_(1, order, closer_sorted)
        ranks.append(closer + 1)
        dists.append(sel.sqrt())
    return torch.cat(ranks), torch.cat(dists)
