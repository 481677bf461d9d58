"""NNIF: last-layer influence against brute-force autograd and LiSSA, ranks against a full sort, bad input."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from neuroprint.data import DataSplits
from neuroprint.detectors.influence import LastLayerInfluence, forward_with_embedding
from neuroprint.detectors.lissa import LissaConfig, lissa_influence
from neuroprint.detectors.nnif import M_GRID, NNIFDetector
from neuroprint.detectors.ranks import ranks_and_distances, squared_distances
from neuroprint.errors import ConfigError, InputError
from neuroprint.models import Classifier


def brute_force_influence(
    h_train: torch.Tensor, y_train: torch.Tensor, h_test: torch.Tensor, y_test: torch.Tensor,
    theta: torch.Tensor, damping: float,
) -> torch.Tensor:
    """-grad L(x)^T (H + damping I)^-1 grad L(z) `[B, N]` by autograd, for logits = theta @ [h, 1] (float64)."""
    def loss(t: torch.Tensor, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1)
        return nn.functional.cross_entropy(a @ t.view(theta.shape).T, y)

    flat = theta.flatten()
    hessian = torch.autograd.functional.hessian(lambda t: loss(t, h_train, y_train), flat)
    hessian = hessian + damping * torch.eye(len(flat), dtype=flat.dtype)

    def grads(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.autograd.grad(loss(flat.requires_grad_(True), h[i : i + 1], y[i : i + 1]), flat)[0]
                            for i in range(len(h))])

    return -grads(h_test, y_test) @ torch.linalg.solve(hessian, grads(h_train, y_train).T)


def unit_rows(t: torch.Tensor) -> torch.Tensor:
    return t / t.norm(dim=1, keepdim=True)


def test_last_layer_influence_matches_autograd(tiny_classifier: Classifier, digits: DataSplits) -> None:
    logits, h, _ = forward_with_embedding(tiny_classifier, digits.train.x[:150])
    y = digits.train.y[:150]
    inf = LastLayerInfluence(damping=0.01, chunk=37).fit(h, logits, y)
    test_logits, test_h, _ = forward_with_embedding(tiny_classifier, digits.test.x[:6])
    pred = test_logits.argmax(1)
    fast = inf.influence(test_h, test_logits, pred)
    linear = tiny_classifier.module.logits
    theta = torch.cat([linear.weight, linear.bias[:, None]], 1).detach().double()
    exact = brute_force_influence(h.double(), y, test_h.double(), pred, theta, damping=0.01)
    # the fast path scales each input's direction to unit norm: compare directions
    torch.testing.assert_close(unit_rows(fast.double()), unit_rows(exact), rtol=0, atol=2e-4)
    helpful, harmful = inf.top(test_h, test_logits, pred, m=10)
    assert torch.equal(helpful, fast.argsort(1)[:, :10]) and torch.equal(harmful, fast.argsort(1, descending=True)[:, :10])


def test_lissa_converges_to_the_exact_influence_of_a_linear_model(digits: DataSplits) -> None:
    torch.manual_seed(0)
    linear = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), mean=digits.mean, std=digits.std)
    x_train, y_train = digits.train.x[:120], digits.train.y[:120]
    logits, h, _ = forward_with_embedding(linear, x_train)
    test_logits, test_h, _ = forward_with_embedding(linear, digits.test.x[:4])
    pred = test_logits.argmax(1)
    fast = LastLayerInfluence(damping=1.0).fit(h, logits, y_train).influence(test_h, test_logits, pred)
    lissa = lissa_influence(linear, digits.test.x[:4], pred, x_train, y_train, LissaConfig(damping=1.0, depth=300, batch_size=200))
    torch.testing.assert_close(lissa, fast, rtol=0, atol=2e-3)


@pytest.mark.parametrize("bad", [{"damping": -0.1}, {"scale": 0.0}, {"depth": -1}, {"batch_size": 0},
                                 {"vectors_per_pass": 0}])
def test_lissa_rejects_bad_settings(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        LissaConfig(**bad)


def test_ranks_match_a_full_sort() -> None:
    generator = torch.Generator().manual_seed(0)
    reference, queries = torch.randn(500, 7, generator=generator), torch.randn(9, 7, generator=generator)
    chosen = torch.stack([torch.randperm(500, generator=generator)[:20] for _ in range(9)])
    ranks, dists = ranks_and_distances(queries, reference, chosen, chunk=4)
    d = squared_distances(queries, reference)
    position = d.argsort(1).argsort(1) + 1  # 1-based place of every training point in the sorted neighbour list
    assert torch.equal(ranks, position.gather(1, chosen))
    torch.testing.assert_close(dists, torch.cdist(queries, reference).gather(1, chosen), rtol=1e-4, atol=1e-4)


def test_ranks_count_only_strictly_closer_points() -> None:
    reference = torch.tensor([[0.0], [1.0], [1.0], [2.0], [3.0]])
    ranks, _ = ranks_and_distances(torch.zeros(1, 1), reference, torch.tensor([[2, 4, 0, 1]]))
    assert ranks.tolist() == [[2, 5, 1, 2]]  # ties share a rank; the point itself never counts


def test_nnif_chooses_m_by_cross_validation(tiny_classifier: Classifier, digits: DataSplits) -> None:
    x, y = digits.val.x[:120], digits.val.y[:120]
    x_adv = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    det = NNIFDetector(m_grid=[5, 20], embedding_only=True).set_training_data(digits.train.x, digits.train.y)
    det.fit(tiny_classifier, x, y, x_adv)
    assert sorted(det.m_auc_) == [5, 20] and det.m_ in (5, 20) and det.layers_ == ("embedding",)
    features = det.nnif_features(digits.test.x[:7])
    assert features.shape == (7, 4) and bool((features[:, [0, 2]] >= 1).all())
    # sets from another influence method (the LiSSA reference path) replace the fast path's: its own sets agree
    logits, embedding, _ = forward_with_embedding(tiny_classifier, digits.test.x[:7])
    helpful, harmful = det.influence_.top(embedding, logits, logits.argmax(1), det.m_)
    torch.testing.assert_close(det.nnif_features(digits.test.x[:7], helpful, harmful), features)
    reversed_sets = det.nnif_features(digits.test.x[:7], harmful, helpful)
    torch.testing.assert_close(reversed_sets, features[:, [2, 3, 0, 1]])
    with pytest.raises(InputError, match="both"):
        det.nnif_features(digits.test.x[:7], helpful)
    with pytest.raises(InputError, match=r"\[7, M="):
        det.nnif_features(digits.test.x[:7], helpful[:, :2], harmful[:, :2])


def test_nnif_bad_configuration_and_data(tiny_classifier: Classifier, digits: DataSplits) -> None:
    x, y = digits.val.x[:40], digits.val.y[:40]
    with pytest.raises(InputError, match="set_training_data"):
        NNIFDetector().fit(tiny_classifier, x, y, x)
    small = NNIFDetector(m_grid=[30]).set_training_data(digits.train.x[:50], digits.train.y[:50])
    with pytest.raises(InputError, match="2M"):
        small.fit(tiny_classifier, x, y, x)
    for bad in ({"m_grid": []}, {"m_grid": [0, 10]}, {"m_grid": 10}, {"layers": "fc1"}, {"pooling": "max"},
                {"embedding_only": True, "layers": ["fc1"]}, {"damping": -1.0}, {"cv_folds": 1}):
        with pytest.raises(ConfigError):
            NNIFDetector(**bad)
    assert NNIFDetector(m_grid=["10", "20"]).m_grid == [10, 20]  # as a spec "m_grid=10+20" gives them
    assert max(M_GRID) == 500 and len(M_GRID) == 18
