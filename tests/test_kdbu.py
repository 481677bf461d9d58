"""KD+BU (Feinman et al. 2017): the kernel density and the dropout uncertainty against hand computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from neuroprint.attacks import make_attack
from neuroprint.data import DataSplits
from neuroprint.detectors import make_detector
from neuroprint.detectors.kdbu import KDBUDetector
from neuroprint.errors import ConfigError, InputError
from neuroprint.models import Classifier


@pytest.fixture(scope="module")
def fitted(tiny_classifier: Classifier, digits: DataSplits) -> KDBUDetector:
    x_adv = make_attack("pgd:eps=0.3,alpha=0.075,steps=10")(tiny_classifier, digits.val.x, digits.val.y).x_adv
    detector = KDBUDetector(mc_samples=20).set_training_data(digits.train.x, digits.train.y)
    return detector.fit(tiny_classifier, digits.val.x, digits.val.y, x_adv)


def test_kernel_density_matches_numpy(fitted: KDBUDetector) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, fitted.train_features_.shape[1]))
    predicted = np.array([0, 3, 3, 9])
    got = fitted._log_density(torch.as_tensor(z), torch.as_tensor(predicted)).numpy()
    train, labels, h = fitted.train_features_.double().numpy(), fitted.train_labels_.numpy(), fitted.bandwidth
    for i, c in enumerate(predicted):
        sq = ((train[labels == c] - z[i]) ** 2).sum(1)
        expected = np.log(np.mean(np.exp(-(sq - sq.min()) / (2 * h * h)))) - sq.min() / (2 * h * h)
        assert got[i] == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_uncertainty_is_the_variance_of_masked_softmax_outputs(fitted: KDBUDetector) -> None:
    assert fitted.layer_ == "fc1" and fitted.final_ == "logits" and fitted.masks_.shape == (20, 64)
    assert set(torch.unique(fitted.masks_).tolist()) <= {0.0, 2.0}  # inverted dropout with rate 0.5
    final = nn.Linear(64, 10)
    z = torch.randn(3, 64)
    probs = torch.stack([torch.softmax(final(z * m), 1) for m in fitted.masks_]).double()  # [T, B, K]
    mean = probs.mean(0)
    expected = torch.stack([(probs[:, b] * probs[:, b]).sum(1).mean() - mean[b] @ mean[b] for b in range(3)])
    torch.testing.assert_close(fitted._uncertainty(z, final), expected)


def test_features_and_head_direction(fitted: KDBUDetector, digits: DataSplits) -> None:
    features = fitted.features(digits.test.x[:10])
    assert features.shape == (10, 2) and bool(torch.isfinite(features).all())
    assert float(fitted.head_.coef_[0]) < 0  # adversarial inputs have a lower density in their predicted class


def test_bad_configuration(tiny_classifier: Classifier, digits: DataSplits) -> None:
    for params, match in (({"bandwidth": 0}, "bandwidth"), ({"dropout": 1.0}, "dropout"), ({"mc_samples": 1}, "mc_samples"),
                          ({"layer": ""}, "layer"), ({"cv_folds": 1}, "cv_folds")):
        with pytest.raises(ConfigError, match=match):
            make_detector("kdbu", **params)
    x, y = digits.val.x[:40], digits.val.y[:40]
    for layer, match in (("conv1", "input of the final layer"), ("logits", "hidden layer"), ("nope", "unknown layer")):
        detector = KDBUDetector(layer=layer).set_training_data(digits.train.x, digits.train.y)
        with pytest.raises(ConfigError, match=match):
            detector.fit(tiny_classifier, x, y, x)
    with pytest.raises(InputError, match="set_training_data"):
        KDBUDetector().fit(tiny_classifier, x, y, x)
    assert math.isclose(KDBUDetector().bandwidth, 1.2)
