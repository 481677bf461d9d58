"""Binary activation detector (Metzen et al. 2017): separation, dense and conv layers, seeding, errors."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from test_detectors import attack_sets, auc
from torch import nn

from neuroprint.data import DataSplits
from neuroprint.detectors import make_detector
from neuroprint.detectors.binary_activation import BinaryActivationDetector
from neuroprint.errors import ConfigError, InputError
from neuroprint.models import Classifier


@pytest.fixture(scope="module")
def sets(tiny_classifier: Classifier, digits: DataSplits) -> dict[str, torch.Tensor]:
    return attack_sets(tiny_classifier, digits)


def fit(classifier: Classifier, sets: dict[str, torch.Tensor], **params: Any) -> BinaryActivationDetector:
    return BinaryActivationDetector(**params).fit(classifier, sets["x"], sets["y"], sets["x_adv"])


def test_default_layer_separates_held_out_pgd(
    tiny_classifier: Classifier, sets: dict[str, torch.Tensor]
) -> None:
    detector = fit(tiny_classifier, sets)
    assert detector.layer_ == "conv2" and detector.shape_ == (16, 8, 8)  # 2nd of the 4 layers
    assert 0.5 < detector.val_auc_ <= 1.0
    assert auc(detector.score(sets["x_test"]), detector.score(sets["x_test_adv"])) > 0.9


@pytest.mark.parametrize(("layer", "first"), [("fc1", nn.Linear), ("conv1", nn.Conv2d)])
def test_dense_and_conv_layers_work(
    tiny_classifier: Classifier, sets: dict[str, torch.Tensor], layer: str, first: type[nn.Module]
) -> None:
    detector = fit(tiny_classifier, sets, layer=layer)
    assert isinstance(detector.net_[0], first)
    assert auc(detector.score(sets["x_test"]), detector.score(sets["x_test_adv"])) > 0.85
    x = sets["x_test_adv"][:8].clone().requires_grad_(True)
    detector.score(x).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0


def test_same_seed_gives_identical_scores(tiny_classifier: Classifier, sets: dict[str, torch.Tensor]) -> None:
    x = torch.cat([sets["x_test"][:40], sets["x_test_adv"][:40]])
    first, again = (fit(tiny_classifier, sets, epochs=5, random_state=3).score(x) for _ in range(2))
    assert torch.equal(first, again)
    assert not torch.equal(first, fit(tiny_classifier, sets, epochs=5, random_state=4).score(x))


def test_held_out_split_is_stratified_and_keeps_pairs_together() -> None:
    train, val = BinaryActivationDetector()._split(100, 100)
    assert len(val) == 40 and len(set(train.tolist()) | set(val.tolist())) == 200
    clean_val = val[val < 100]
    assert len(clean_val) == 20 and torch.equal(clean_val + 100, val[val >= 100])
    _, val = BinaryActivationDetector()._split(100, 50)
    assert int((val < 100).sum()) == 20 and int((val >= 100).sum()) == 10


def test_bad_layer_raises_config_error_naming_valid_layers(
    tiny_classifier: Classifier, sets: dict[str, torch.Tensor]
) -> None:
    detector = BinaryActivationDetector(layer="conv9")
    with pytest.raises(ConfigError, match="valid: conv1, conv2, fc1, logits") as info:
        detector.fit(tiny_classifier, sets["x"], sets["y"], sets["x_adv"])
    assert "\n" not in str(info.value) and "conv9" in str(info.value)
    assert getattr(detector, "classifier_", None) is None


@pytest.mark.parametrize(
    ("params", "match"),
    [({"layer": ""}, "layer"), ({"hidden": 0}, "hidden must be an integer >= 1"), ({"epochs": 1.5}, "epochs"),
     ({"lr": 0.0}, r"lr must be in \(0.0, 10.0\]"), ({"batch_size": 0}, "batch_size"),
     ({"weight_decay": -1e-3}, "weight_decay"), ({"random_state": -1}, "random_state")],
)
def test_bad_hyperparameters_raise_config_error(params: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        make_detector("binary-activation", **params)
    assert "\n" not in str(info.value) and repr(next(iter(params.values()))) in str(info.value)


def test_too_few_images_raise_input_error(tiny_classifier: Classifier, sets: dict[str, torch.Tensor]) -> None:
    with pytest.raises(InputError, match=">= 5"):
        BinaryActivationDetector().fit(tiny_classifier, sets["x"][:4], sets["y"][:4], sets["x_adv"][:4])


def test_fit_leaves_the_classifier_alone(tiny_classifier: Classifier, sets: dict[str, torch.Tensor]) -> None:
    before = {k: v.clone() for k, v in tiny_classifier.state_dict().items()}
    training, grads = tiny_classifier.training, [p.grad for p in tiny_classifier.parameters()]
    fit(tiny_classifier, sets, epochs=3)
    after = tiny_classifier.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert tiny_classifier.training == training
    assert all(p.grad is g for p, g in zip(tiny_classifier.parameters(), grads))
