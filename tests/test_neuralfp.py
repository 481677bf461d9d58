"""NeuralFP: probes, the training loss (against a hand computation), the detector, checkpoints, bad input."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from neuroprint.adaptive.neuralfp_cw import AdaptiveCWNeuralFP
from neuroprint.data import DataSplits
from neuroprint.detectors import Detector, make_detector
from neuroprint.errors import ConfigError, InputError
from neuroprint.io import read_json
from neuroprint.models import Classifier
from neuroprint.models.checkpoint import PROBES, load_checkpoint, model_key, save_checkpoint
from neuroprint.models.probes import (
    OFF_CLASS,
    ON_CLASS,
    NeuralFPProbes,
    ProbeConfig,
    perturbed_inputs,
    probe_distances,
    probe_loss,
    probe_responses,
)
from neuroprint.models.training import TrainConfig, TrainHistory


def linear_classifier() -> Classifier:
    """A 2x2-pixel, 3-class linear model with fixed weights: logits = W x + b."""
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, 1.0, -1.0], [2.0, 0.0, -1.0, 1.0]]))
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return Classifier(nn.Sequential(nn.Flatten(), layer))


def hand_probes() -> NeuralFPProbes:
    dx = torch.tensor([[[[0.1, -0.1], [0.0, 0.2]]], [[[-0.3, 0.0], [0.1, 0.1]]]])  # [2, 1, 2, 2]
    dy = torch.stack([torch.eye(3) * 0.5, -torch.eye(3) * 0.25])  # [2 directions, 3 classes, 3 logits]
    return NeuralFPProbes(dx, dy, ProbeConfig(n=2, eps=0.3))


def test_loss_and_distances_match_a_hand_computation() -> None:
    clf, probes = linear_classifier(), hand_probes()
    x = torch.tensor([[[[0.5, 0.2], [0.9, 0.05]]], [[[0.0, 1.0], [0.3, 0.7]]]])
    y = torch.tensor([2, 0])
    weight, bias = clf.module[1].weight.detach(), clf.module[1].bias.detach()

    def phi(image: torch.Tensor) -> torch.Tensor:
        z = weight @ image.flatten() + bias
        return z / math.sqrt(float((z**2).sum()))

    expected_loss, expected_d = 0.0, torch.zeros(2, 3)
    for b in range(2):
        for i in range(2):
            shifted = (x[b] + probes.dx[i]).clamp(0, 1)  # clipped to the pixel bounds
            f = phi(shifted) - phi(x[b])
            expected_loss += float(((f - probes.dy[i, y[b]]) ** 2).sum()) / 4  # mean over 2 examples x 2 directions
            for j in range(3):
                expected_d[b, j] += float((f - probes.dy[i, j]).norm()) / 2
    logits, responses = probe_responses(clf, x, probes, clf.bounds)
    assert responses.shape == (2, 2, 3)
    torch.testing.assert_close(logits, clf(x))
    assert float(probe_loss(responses, y, probes).detach()) == pytest.approx(expected_loss, rel=1e-5)
    torch.testing.assert_close(probe_distances(responses, probes), expected_d, rtol=1e-5, atol=1e-6)
    detector = make_detector("neuralfp").fit(_with(clf, probes), x, y)
    torch.testing.assert_close(detector.score(x), expected_d.min(1).values, rtol=1e-5, atol=1e-6)
    predicted = clf(x).argmax(1)
    by_prediction = make_detector("neuralfp:score_kind=predicted").fit(clf, x, y).score(x)
    torch.testing.assert_close(by_prediction, expected_d[torch.arange(2), predicted], rtol=1e-5, atol=1e-6)


def test_a_subset_of_directions_uses_their_own_targets() -> None:
    clf, probes = linear_classifier(), hand_probes()
    x, y = torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 2])
    _, every = probe_responses(clf, x, probes, clf.bounds)
    second = torch.tensor([1])
    _, only = probe_responses(clf, x, probes, clf.bounds, second)
    torch.testing.assert_close(only[:, 0], every[:, 1])
    expected = float(((every[:, 1] - probes.dy[1, y]) ** 2).sum(1).mean().detach())
    assert float(probe_loss(only, y, probes, second).detach()) == pytest.approx(expected, rel=1e-5)


def _with(clf: Classifier, probes: NeuralFPProbes) -> Classifier:
    clf.probes = probes
    return clf


def test_sampled_probes_follow_the_paper() -> None:
    probes = NeuralFPProbes.sample(ProbeConfig(n=6, eps=0.01, seed=3), (1, 28, 28), 10)
    assert probes.dx.shape == (6, 1, 28, 28) and probes.dy.shape == (6, 10, 10)
    assert float(probes.dx.abs().max()) <= 0.01 and float(probes.dx.min()) < -0.009 and float(probes.dx.max()) > 0.009
    torch.testing.assert_close(probes.dy[:, 4, 4], torch.full((6,), ON_CLASS))
    assert float(probes.dy[2, 4, 5]) == pytest.approx(OFF_CLASS)
    assert float(probes.dy[0, 0].norm()) == pytest.approx(1.0, abs=0.01)  # unit norm (section 3.1)
    again = NeuralFPProbes.sample(ProbeConfig(n=6, eps=0.01, seed=3), (1, 28, 28), 10)
    assert torch.equal(probes.dx, again.dx)  # seeded
    signed = NeuralFPProbes.sample(ProbeConfig(n=40, eps=0.01, pattern="random-sign"), (1, 4, 4), 10)
    signs = torch.sign(signed.dy[:, 0, 0])
    assert set(signs.tolist()) == {-1.0, 1.0}  # eq. 28: p = +-1 per direction, shared by its classes
    paper = NeuralFPProbes.sample(ProbeConfig(n=40, eps=0.01), (1, 4, 4), 10).dy
    assert torch.equal(signed.dy, signs.view(-1, 1, 1) * paper)
    positive = NeuralFPProbes.sample(ProbeConfig(n=6, eps=0.01, directions="positive"), (1, 28, 28), 10)
    assert float(positive.dx.min()) >= 0.0 and 0.0099 < float(positive.dx.max()) < 0.01  # the reference code's [0, eps)


def test_probe_settings_without_directions_read_as_symmetric() -> None:
    probes = NeuralFPProbes.sample(ProbeConfig(n=3, eps=0.01), (1, 4, 4), 10)
    meta = {k: v for k, v in probes.meta().items() if k != "directions"}
    assert NeuralFPProbes.from_stored(probes.tensors(), meta).config.directions == "symmetric"


def test_probe_settings_are_part_of_the_model_cache_key() -> None:
    """A NeuralFP model has its own key, and so does each probe setting (here `directions`)."""
    keys = {d: model_key("small-cnn", "digits", TrainConfig(probes=ProbeConfig(n=3, directions=d)), {})
            for d in ("symmetric", "positive")}
    assert len({*keys.values(), model_key("small-cnn", "digits", TrainConfig(), {})}) == 3


def test_perturbed_inputs_are_clipped_and_direction_major() -> None:
    probes = hand_probes()
    x = torch.tensor([[[[0.0, 1.0], [0.95, 0.5]]]])
    batch = perturbed_inputs(x, probes, (0.0, 1.0))
    assert batch.shape == (3, 1, 2, 2)
    assert torch.equal(batch[0], x[0])
    assert torch.equal(batch[1], (x[0] + probes.dx[0]).clamp(0, 1))
    assert float(batch.min()) >= 0.0 and float(batch.max()) <= 1.0


def test_probes_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    clf = _with(linear_classifier(), hand_probes())
    meta = {"architecture": "small-cnn", "arch_kwargs": {}}
    save_checkpoint(clf, tmp_path / "ckpt", meta)
    assert (tmp_path / "ckpt" / PROBES).is_file()
    stored = _reload_probes(tmp_path / "ckpt")
    assert torch.equal(stored.dx, clf.probes.dx) and torch.equal(stored.dy, clf.probes.dy)
    assert stored.config == clf.probes.config


def _reload_probes(directory: Path) -> NeuralFPProbes:
    meta = read_json(directory / "model.json")["probes"]
    return NeuralFPProbes.from_stored(load_file(str(directory / PROBES)), meta)


def test_trained_model_keeps_its_probes(probe_classifier: Classifier, tmp_path: Path) -> None:
    meta = {"architecture": "small-cnn", "arch_kwargs": {"in_channels": 1, "width": 16}}
    save_checkpoint(probe_classifier, tmp_path / "ckpt", meta)
    loaded, saved_meta = load_checkpoint(tmp_path / "ckpt")
    assert loaded.probes is not None and saved_meta["probes"]["n"] == probe_classifier.probes.n
    assert torch.equal(loaded.probes.dx, probe_classifier.probes.dx)
    (tmp_path / "ckpt" / PROBES).write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="probes.safetensors"):
        load_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / PROBES).unlink()
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "ckpt")


def test_training_learns_the_probes(probe_trained: tuple[Classifier, TrainHistory], digits: DataSplits) -> None:
    probe_classifier, history = probe_trained
    assert history.probe_loss[-1] < 0.8 * history.probe_loss[0]
    assert history.val_accuracy[-1] > 0.9
    detector = make_detector("neuralfp").fit(probe_classifier, digits.val.x, digits.val.y)
    noise = (digits.test.x + 0.3 * torch.randn_like(digits.test.x)).clamp(0, 1)
    with torch.no_grad():
        assert float(detector.score(noise).mean()) > float(detector.score(digits.test.x).mean())


def test_detector_refuses_a_model_without_probes(tiny_classifier: Classifier, digits: DataSplits) -> None:
    with pytest.raises(ConfigError, match="--probes"):
        make_detector("neuralfp").fit(tiny_classifier, digits.val.x, digits.val.y)


def test_detector_refuses_images_of_another_shape(probe_classifier: Classifier) -> None:
    detector = make_detector("neuralfp")
    with pytest.raises(InputError, match="shape"):
        detector.fit(probe_classifier, torch.rand(4, 1, 9, 9), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize(
    ("settings", "match"),
    [({"n": 0}, "n"), ({"eps": 0.0}, "eps"), ({"eps": 1.0}, "eps"), ({"eps": -0.1}, "eps"),
     ({"pattern": "zigzag"}, "paper, random-sign"), ({"directions": "both"}, "symmetric, positive"),
     ({"weight": 0.0}, "weight"), ({"per_step": 7}, "per step")],
)
def test_bad_probe_settings_raise_config_error(settings: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ProbeConfig(**{"n": 5, **settings})  # type: ignore[arg-type]


def test_detector_save_load_keeps_scores(probe_classifier: Classifier, digits: DataSplits, tmp_path: Path) -> None:
    detector = make_detector("neuralfp").fit(probe_classifier, digits.val.x, digits.val.y).calibrate(digits.val.x)
    detector.save(tmp_path / "det")
    loaded = Detector.load(tmp_path / "det", probe_classifier)
    torch.testing.assert_close(loaded.score(digits.test.x[:20]), detector.score(digits.test.x[:20]))


def test_adaptive_attack_reaches_its_target_inside_the_box(probe_classifier: Classifier, digits: DataSplits) -> None:
    x, y = digits.test.x[:24], digits.test.y[:24]
    detector = make_detector("neuralfp").fit(probe_classifier, digits.val.x, digits.val.y).calibrate(digits.val.x)
    result = AdaptiveCWNeuralFP(threshold=detector.threshold_, steps=30, search_steps=2, lr=0.05)(probe_classifier, x, y)
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    assert result.success_rate > 0.5
    with pytest.raises(ConfigError, match="threshold"):
        AdaptiveCWNeuralFP(threshold=float("nan"))


def test_adaptive_attack_refuses_a_model_without_probes(tiny_classifier: Classifier, digits: DataSplits) -> None:
    with pytest.raises(ConfigError, match="--probes"):
        AdaptiveCWNeuralFP(threshold=1.0)(tiny_classifier, digits.test.x[:4], digits.test.y[:4])
