"""Shared fixtures: the digits dataset and a small CNN trained on it in a few seconds."""
from __future__ import annotations

import pytest
import torch

from neuroprint.data import DataSplits, load_dataset
from neuroprint.models import Classifier, build_model
from neuroprint.models.fingerprints import FingerprintConfig
from neuroprint.models.training import TrainConfig, TrainHistory, train

# The suite runs on 2 cores with 2 pytest workers: one thread each avoids oversubscription (several times slower
# for the tiny models used here).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> DataSplits:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def tiny_classifier(digits: DataSplits) -> Classifier:
    """`small-cnn` on digits 8x8, ~95% validation accuracy, trained in a few seconds on CPU."""
    torch.manual_seed(0)
    clf = Classifier(build_model("small-cnn", in_channels=1, width=8), mean=digits.mean, std=digits.std)
    train(clf, digits.train, digits.val, TrainConfig(epochs=30, batch_size=64, lr=3e-3, lr_drop_epoch=25), progress=False)
    return clf


@pytest.fixture(scope="session")
def fp_trained(digits: DataSplits) -> tuple[Classifier, TrainHistory]:
    """A NeuralFP `small-cnn` on digits (3 fingerprints, one per step) and its training history."""
    torch.manual_seed(0)
    clf = Classifier(build_model("small-cnn", in_channels=1, width=16), mean=digits.mean, std=digits.std)
    fingerprint = FingerprintConfig(n=3, eps=0.1, per_step=1)
    config = TrainConfig(epochs=30, batch_size=64, lr=3e-3, lr_drop_epoch=25, fingerprint=fingerprint)
    return clf, train(clf, digits.train, digits.val, config, progress=False)


@pytest.fixture(scope="session")
def fp_classifier(fp_trained: tuple[Classifier, TrainHistory]) -> Classifier:
    return fp_trained[0]
