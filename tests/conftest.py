"""Shared fixtures: the digits dataset and a small CNN trained on it in a few seconds."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from neuroprint.data import DataSplits, load_dataset
from neuroprint.guard import GuardConfig, fit_guard
from neuroprint.models import Classifier, build_model
from neuroprint.models.checkpoint import save_checkpoint
from neuroprint.models.probes import ProbeConfig
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
def probe_trained(digits: DataSplits) -> tuple[Classifier, TrainHistory]:
    """A NeuralFP `small-cnn` on digits (3 probes, one per step) and its training history."""
    torch.manual_seed(0)
    clf = Classifier(build_model("small-cnn", in_channels=1, width=16), mean=digits.mean, std=digits.std)
    probes = ProbeConfig(n=3, eps=0.1, per_step=1)
    config = TrainConfig(epochs=30, batch_size=64, lr=3e-3, lr_drop_epoch=25, probes=probes)
    return clf, train(clf, digits.train, digits.val, config, progress=False)


@pytest.fixture(scope="session")
def probe_classifier(probe_trained: tuple[Classifier, TrainHistory]) -> Classifier:
    return probe_trained[0]


@pytest.fixture(scope="session")
def guard_checkpoint(tiny_classifier: Classifier, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_classifier` saved as a checkpoint directory (digits, 1x8x8 images, 10 classes)."""
    directory = tmp_path_factory.mktemp("guard") / "model"
    save_checkpoint(tiny_classifier, directory, {"architecture": "small-cnn", "arch_kwargs": {"in_channels": 1, "width": 8},
                                                 "dataset": "digits", "clean_accuracy": None})
    return directory


@pytest.fixture(scope="session")
def guard_dir(guard_checkpoint: Path) -> Path:
    """A guard (bank + mahalanobis at 5% FPR, fit on PGD) of `guard_checkpoint`, saved next to it."""
    config = GuardConfig(checkpoint=guard_checkpoint, detectors=["bank", "mahalanobis"],
                         attacks=["pgd:eps=0.3,steps=10"], n_fit=240, n_test=100)
    directory = guard_checkpoint.parent / "guard"
    fit_guard(config, progress=False, log=lambda _: None).save(directory)
    return directory


@pytest.fixture(scope="session")
def guard_url(guard_dir: Path) -> Iterator[str]:
    """Base URL of a real `neuroprint serve` process serving `guard_dir` (secure draws, no API key)."""
    from guard_server import running_server

    with running_server(guard_dir) as url:
        yield url
