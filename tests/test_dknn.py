"""DkNN: nonconformity and p-values by hand, the neighbour search against a full sort, calibration split, bad input."""
from __future__ import annotations

import pytest
import torch

from neuroprint.data import DataSplits
from neuroprint.detectors.dknn import DkNNDetector, neighbours, nonconformity, p_values
from neuroprint.errors import ConfigError, InputError
from neuroprint.models import Classifier


def test_nonconformity_and_p_values_by_hand() -> None:
    labels = torch.tensor([[[0, 0, 1], [0, 2, 2]]])  # one input, 2 layers, 3 neighbours each, 3 classes
    alpha = nonconformity(labels, k=3, num_classes=3)
    assert alpha.tolist() == [[(3 - 2) + (3 - 1), (3 - 1) + 3, 3 + (3 - 2)]]
    assert nonconformity(labels, k=1, num_classes=3).tolist() == [[0, 2, 2]]
    distances = torch.tensor([[[1.0, 1.0, 9.0], [3.0, 3.0, 9.0]]])  # mean over 2 nearest of both layers: 2
    torch.testing.assert_close(nonconformity(labels, 2, 3, distances), torch.tensor([[1 + 2 / 3, 4 + 2 / 3, 3 + 2 / 3]],
                               dtype=torch.float64))
    calibration = torch.tensor([0.0, 1.0, 3.0, 3.0, 5.0])  # sorted
    p = p_values(torch.tensor([[0.0, 3.0, 6.0]]), calibration)
    assert p.tolist() == [[1.0, pytest.approx(0.6), 0.0]]


def test_neighbour_labels_match_a_full_sort() -> None:
    generator = torch.Generator().manual_seed(0)
    reference, queries = torch.randn(300, 5, generator=generator), torch.randn(8, 5, generator=generator)
    labels = torch.randint(0, 4, (300,), generator=generator)
    order = torch.cdist(queries, reference).argsort(1)[:, :7]
    found, distances = neighbours(queries, reference, labels, 7)
    assert torch.equal(found, labels[order])
    torch.testing.assert_close(distances, torch.cdist(queries, reference).gather(1, order), rtol=1e-4, atol=1e-4)


def test_dknn_calibrates_on_a_third_and_chooses_k(tiny_classifier: Classifier, digits: DataSplits) -> None:
    x, y = digits.val.x[:90], digits.val.y[:90]
    x_adv = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    det = DkNNDetector(k_grid=[5, 15]).set_training_data(digits.train.x, digits.train.y).fit(tiny_classifier, x, y, x_adv)
    assert len(det.calibration_) == 30 and bool((det.calibration_[1:] >= det.calibration_[:-1]).all())
    assert sorted(det.k_auc_) == [5, 15] and det.k_ in (5, 15)
    p = det.dknn_features(digits.test.x[:6])
    assert p.shape == (6, 10) and bool((p[:, :-1] >= p[:, 1:]).all()) and bool(((p >= 0) & (p <= 1)).all())


def test_dknn_bad_configuration_and_data(tiny_classifier: Classifier, digits: DataSplits) -> None:
    x, y = digits.val.x[:30], digits.val.y[:30]
    with pytest.raises(InputError, match="set_training_data"):
        DkNNDetector().fit(tiny_classifier, x, y, x)
    with pytest.raises(InputError, match="k_grid"):
        DkNNDetector(k_grid=[100]).set_training_data(digits.train.x[:50], digits.train.y[:50]).fit(tiny_classifier, x, y, x)
    for bad in ({"k_grid": []}, {"k_grid": [-1]}, {"layers": "fc1"}, {"pooling": "max"},
                {"calibration_fraction": 1.0}, {"calibration_fraction": 0.0}, {"tie_break": "yes"}, {"cv_folds": 0}):
        with pytest.raises(ConfigError):
            DkNNDetector(**bad)
