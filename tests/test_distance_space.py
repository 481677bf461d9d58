"""Distance-space detector (Carrara et al. 2018): pivots against brute force, embedding shapes, all eight variants."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from neuroprint.attacks import make_attack
from neuroprint.data import DataSplits
from neuroprint.detectors import make_detector
from neuroprint.detectors.distance_space import DistanceSpaceDetector
from neuroprint.detectors.pivots import class_pivots, embed, medoid_index
from neuroprint.errors import ConfigError, InputError
from neuroprint.features import extract
from neuroprint.models import Classifier


def brute_force_medoid(points: torch.Tensor) -> int:
    sums = [sum(float((p - q).double().norm()) for q in points) for p in points]
    return min(range(len(points)), key=sums.__getitem__)


def test_medoid_matches_brute_force_and_chunks() -> None:
    generator = torch.Generator().manual_seed(0)
    for n, d in ((1, 3), (7, 2), (60, 5), (700, 4)):  # 700 rows span two chunks of the exact computation
        points = torch.randn(n, d, generator=generator) * torch.rand(1, d, generator=generator) * 5
        if n <= 60:
            assert medoid_index(points) == brute_force_medoid(points)
        else:
            sums = torch.cdist(points.double(), points.double()).sum(1)
            assert medoid_index(points) == int(sums.argmin())


def test_sampled_medoid_is_a_member_close_to_the_exact_one() -> None:
    generator = torch.Generator().manual_seed(1)
    points = torch.randn(400, 3, generator=generator)
    exact = medoid_index(points)
    approx = medoid_index(points, max_reference=100, generator=torch.Generator().manual_seed(0))
    sums = torch.cdist(points, points).sum(1)
    assert 0 <= approx < 400 and float(sums[approx]) <= float(sums[exact]) * 1.05
    with pytest.raises(InputError, match="empty"):
        medoid_index(points[:0])


def test_class_pivots_centroids_and_medoids() -> None:
    generator = torch.Generator().manual_seed(2)
    acts, labels = torch.randn(90, 4, generator=generator), torch.arange(90) % 3
    centroids = class_pivots(acts, labels, 3, "centroid")
    torch.testing.assert_close(centroids, torch.stack([acts[labels == c].mean(0) for c in range(3)]))
    medoids = class_pivots(acts, labels, 3, "medoid")
    for c in range(3):
        members = acts[labels == c]
        assert torch.equal(medoids[c], members[brute_force_medoid(members)])
    with pytest.raises(InputError, match=r"class\(es\) \[3\]"):
        class_pivots(acts, labels, 4, "medoid")


def test_embedding_l2_and_cosine() -> None:
    generator = torch.Generator().manual_seed(3)
    acts, pivots = torch.randn(6, 5, generator=generator), torch.randn(4, 5, generator=generator)
    torch.testing.assert_close(embed(acts, pivots, "l2"), torch.cdist(acts, pivots), rtol=1e-4, atol=1e-4)
    cos = F.cosine_similarity(acts[:, None], pivots[None], dim=2)
    torch.testing.assert_close(embed(acts, pivots, "cos"), cos, rtol=1e-5, atol=1e-5)
    zero = torch.zeros(1, 5, requires_grad=True)  # finite gradients even at a pivot or at the origin
    (embed(zero, torch.zeros(1, 5), "l2").sum() + embed(zero, pivots, "cos").sum()).backward()
    assert zero.grad is not None and bool(torch.isfinite(zero.grad).all())


@pytest.fixture(scope="module")
def fit_data(tiny_classifier: Classifier, digits: DataSplits) -> dict[str, torch.Tensor]:
    pgd = make_attack("pgd:eps=0.3,alpha=0.075,steps=10")
    return {"x": digits.val.x, "y": digits.val.y, "x_adv": pgd(tiny_classifier, digits.val.x, digits.val.y).x_adv}


@pytest.mark.parametrize(("head", "pivot", "metric"), list(itertools.product(("lstm", "mlp"), ("medoid", "centroid"), ("l2", "cos"))))
def test_every_variant_embeds_and_scores(
    head: str, pivot: str, metric: str, tiny_classifier: Classifier, digits: DataSplits, fit_data: dict[str, torch.Tensor]
) -> None:
    detector = DistanceSpaceDetector(head=head, pivot=pivot, metric=metric, epochs=3, patience=2)  # type: ignore[arg-type]
    detector.set_training_data(digits.train.x, digits.train.y).fit(tiny_classifier, **fit_data)
    layers = tiny_classifier.layers
    assert detector.layers_ == layers and detector.shift_.shape == (len(layers), 10)
    train_acts = extract(tiny_classifier, digits.train.x, layers, "avg")
    for layer in layers:
        pivots = detector.pivots_[layer]
        assert pivots.shape == (10, train_acts[layer].shape[1])
        if pivot == "medoid":  # every medoid is the activation of a training image of its class
            for c in range(10):
                members = train_acts[layer][digits.train.y == c]
                assert bool(((members - pivots[c]).abs().amax(1) < 1e-5).any())
    x = digits.test.x[:9]
    sequences = detector.embedding(x).detach()
    assert sequences.shape == (9, len(layers), 10)
    if metric == "cos":
        assert float(sequences.abs().max()) <= 1.0 + 1e-5
    else:
        assert float(sequences.min()) >= 0.0
    scores = detector.score(x)
    assert scores.shape == (9,) and bool(torch.isfinite(scores).all())
    assert 1 <= detector.best_epoch_ <= detector.epochs_run_ <= 3


def test_model_selection_keeps_the_best_validation_epoch(
    tiny_classifier: Classifier, digits: DataSplits, fit_data: dict[str, torch.Tensor]
) -> None:
    detector = DistanceSpaceDetector(lr=3e-3, epochs=40, patience=5).set_training_data(digits.train.x, digits.train.y)
    detector.fit(tiny_classifier, **fit_data)
    assert detector.epochs_run_ <= 40 and detector.epochs_run_ - detector.best_epoch_ <= 5
    assert detector.val_auc_ > 0.9
    twin = DistanceSpaceDetector(lr=3e-3, epochs=40, patience=5).set_training_data(digits.train.x, digits.train.y)
    x = digits.test.x[:20]
    assert torch.equal(twin.fit(tiny_classifier, **fit_data).score(x), detector.score(x))  # seeded


def test_bad_configuration_and_missing_training_data(tiny_classifier: Classifier, fit_data: dict[str, torch.Tensor]) -> None:
    for params, match in (({"head": "gru"}, "head must be one of lstm, mlp"), ({"pivot": "mean"}, "pivot"),
                          ({"metric": "l1"}, "metric"), ({"epochs": 0}, "epochs"), ({"layers": []}, "layers"),
                          ({"validation_fraction": 0.9}, "validation_fraction")):
        with pytest.raises(ConfigError, match=match):
            make_detector("distance-space", **params)
    with pytest.raises(InputError, match="set_training_data"):
        DistanceSpaceDetector().fit(tiny_classifier, **fit_data)
    detector = DistanceSpaceDetector().set_training_data(fit_data["x"][:20], fit_data["y"][:20])
    with pytest.raises(InputError, match="validation split"):
        detector.fit(tiny_classifier, fit_data["x"][:4], fit_data["y"][:4], fit_data["x_adv"][:4])
