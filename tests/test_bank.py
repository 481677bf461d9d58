"""The randomized fingerprint bank: selection rule, score, per-input draws, fallback, persistence, bad input."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from neuroprint.data import DataSplits
from neuroprint.detectors.bank import BankDetector, authors_default_layers
from neuroprint.detectors.base import Detector
from neuroprint.errors import ConfigError, InputError, NotFittedError
from neuroprint.models import Classifier


def pixel_classifier() -> Classifier:
    """Features of layer `flat` are the 4 pixels themselves; class 1 when pixel 0 > 0.5."""
    linear = nn.Linear(4, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.0, 0, 0, 0], [10.0, 0, 0, 0]]))
        linear.bias.copy_(torch.tensor([0.0, -5.0]))
    return Classifier(nn.Sequential(OrderedDict(flat=nn.Flatten(), logits=linear)), layers=["flat"])


def test_selection_rule_matches_scipy_welch_and_cohens_d() -> None:
    gen = torch.Generator().manual_seed(0)
    clean = torch.randn(60, 40, generator=gen)
    adv = torch.randn(50, 40, generator=gen)
    adv[:, :10] += torch.linspace(0.2, 3.0, 10)  # neurons 0..9 shift by growing amounts
    det = BankDetector(d=1, n_candidates=400, bank_size=1000, k=1, max_p=1e-3, min_effect=1.5)
    bank = det._build_bank(clean, adv, [40], torch.Generator().manual_seed(1))
    kept = set(bank["index"].flatten().tolist())
    expected = set()
    for j in range(40):
        p = stats.ttest_ind(adv[:, j].numpy(), clean[:, j].numpy(), equal_var=False).pvalue
        pooled = np.sqrt((59 * clean[:, j].var().item() + 49 * adv[:, j].var().item()) / 108)
        effect = (adv[:, j].mean().item() - clean[:, j].mean().item()) / pooled
        if p < 1e-3 and abs(effect) >= 1.5:
            expected.add(j)
    assert kept == expected and 0 < len(expected) < 10
    assert (bank["effect"].abs().diff() <= 0).all()  # best |d| first
    assert torch.allclose(bank["mu_adv"], adv[:, bank["index"].flatten().long()].mean(0), atol=1e-5)


def test_bank_keeps_at_most_bank_size() -> None:
    clean, adv = torch.zeros(30, 20) + torch.randn(30, 20) * 0.1, torch.ones(30, 20) + torch.randn(30, 20) * 0.1
    det = BankDetector(d=3, n_candidates=500, bank_size=25, k=5)
    bank = det._build_bank(clean, adv, [20], torch.Generator().manual_seed(0))
    assert len(bank["index"]) == 25
    assert all(len(set(row.tolist())) == 3 for row in bank["index"])  # distinct neurons within a fingerprint


def fitted_by_hand(sampling: str = "all", score_kind: str = "lr") -> BankDetector:
    det = BankDetector(layers=["flat"], d=2, k=2, bank_size=2, sampling=sampling, score_kind=score_kind)  # type: ignore[arg-type]
    det.classifier_ = pixel_classifier()
    det.layers_ = ["flat"]
    det.fit_report_ = {}
    banks = [
        {"index": torch.tensor([[0, 1], [2, 3]], dtype=torch.int32), "mu_clean": torch.tensor([0.0, 0.0]),
         "sd_clean": torch.tensor([1.0, 0.5]), "mu_adv": torch.tensor([1.0, 2.0]), "sd_adv": torch.tensor([2.0, 1.0]),
         "effect": torch.tensor([2.0, 1.9])},
        {"index": torch.tensor([[1, 2]], dtype=torch.int32), "mu_clean": torch.tensor([0.5]),
         "sd_clean": torch.tensor([0.1]), "mu_adv": torch.tensor([0.0]), "sd_adv": torch.tensor([0.2]),
         "effect": torch.tensor([-3.0])},
    ]
    det._set_banks(banks)
    return det


def log_normal(v: float, mu: float, sd: float) -> float:
    return -0.5 * ((v - mu) / sd) ** 2 - np.log(sd)


def test_score_against_hand_computation() -> None:
    x = torch.tensor([[[[0.2, 0.4], [0.6, 1.0]]]])  # predicted class 0 (pixel 0 <= 0.5)
    v = [(0.2 + 0.4) / 2, (0.6 + 1.0) / 2]
    lr = (log_normal(v[0], 1, 2) - log_normal(v[0], 0, 1)) + (log_normal(v[1], 2, 1) - log_normal(v[1], 0, 0.5))
    assert fitted_by_hand().score(x).item() == pytest.approx(lr, rel=1e-5)
    anomaly = -(log_normal(v[0], 0, 1) + log_normal(v[1], 0, 0.5))
    assert fitted_by_hand(score_kind="anomaly").score(x).item() == pytest.approx(anomaly, rel=1e-5)
    # |z| clean vs adversarial: fp0 0.3/1 < 0.7/2 -> clean closer; fp1 0.8/0.5 > 1.2/1 -> adversarial closer
    assert fitted_by_hand(score_kind="vote").score(x).item() == pytest.approx(0.5)


def test_score_ignores_padding_of_smaller_banks() -> None:
    x = torch.tensor([[[[0.9, 0.4], [0.5, 1.0]]]])  # predicted class 1, whose bank has one fingerprint
    v = (0.4 + 0.5) / 2
    expected = log_normal(v, 0.0, 0.2) - log_normal(v, 0.5, 0.1)
    assert fitted_by_hand().score(x).item() == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def fitted_bank(tiny_classifier: Classifier, digits: DataSplits) -> tuple[BankDetector, torch.Tensor]:
    from neuroprint.attacks import build_adversarial_set, make_attack

    adv = build_adversarial_set(tiny_classifier, make_attack("pgd:eps=0.3,steps=10"), digits.val.x[:150],
                                digits.val.y[:150]).successful()
    det = BankDetector(d=8, n_candidates=1500, bank_size=300, k=10, min_adv=5, max_p=0.01, min_effect=0.8)
    det.fit(tiny_classifier, digits.val.x[150:], digits.val.y[150:], adv.x_adv)
    return det, digits.test.x[:64]


def test_per_input_draws_differ_and_are_reproducible(fitted_bank: tuple[BankDetector, torch.Tensor]) -> None:
    det, _ = fitted_bank
    pred = torch.zeros(50, dtype=torch.long)
    draws = det.draw(pred)
    assert draws.shape == (50, det.k)
    assert len({tuple(sorted(r)) for r in draws.tolist()}) > 45  # a fresh subset per input
    assert all(len(set(r)) == det.k for r in draws.tolist())  # without replacement
    assert int(draws.max()) < int(det.bank_sizes_[0])  # never padding
    assert torch.equal(draws, det.draw(pred))  # seeded: reproducible
    det.sampling = "secure"
    try:
        assert not torch.equal(det.draw(pred), det.draw(pred))  # CSPRNG-seeded: unpredictable
    finally:
        det.sampling = "seeded"


def test_fixed_and_all_sampling(fitted_bank: tuple[BankDetector, torch.Tensor]) -> None:
    det, _ = fitted_bank
    pred = torch.tensor([0, 0, 3])
    det.sampling = "fixed"
    try:
        assert torch.equal(det.draw(pred), torch.arange(det.k).expand(3, det.k))
        det.sampling = "all"
        assert det.draw(pred).shape == (3, det.index_.shape[1])
    finally:
        det.sampling = "seeded"


def test_scores_are_finite_differentiable_and_round_trip(
    fitted_bank: tuple[BankDetector, torch.Tensor], tmp_path: Path
) -> None:
    det, x = fitted_bank
    scores = det.score(x)
    assert scores.shape == (len(x),) and torch.isfinite(scores).all()
    xg = x.clone().requires_grad_(True)
    det.score(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    det.save(tmp_path / "bank")
    again = Detector.load(tmp_path / "bank", det.classifier_)
    assert torch.equal(again.score(x), scores.detach())
    assert again.fit_report_ == det.fit_report_


def test_fallback_for_classes_without_adversarial_examples(tiny_classifier: Classifier, digits: DataSplits) -> None:
    from neuroprint.attacks import build_adversarial_set, make_attack

    adv = build_adversarial_set(tiny_classifier, make_attack("pgd:eps=0.3,steps=10"), digits.val.x[:150],
                                digits.val.y[:150]).successful()
    missing = int(adv.adv_pred.mode().values)  # drop every example attacked to the most common class
    x_adv = adv.x_adv[adv.adv_pred != missing]
    det = BankDetector(d=8, n_candidates=800, bank_size=200, k=10, min_adv=5, max_p=0.01, min_effect=0.5)
    det.fit(tiny_classifier, digits.val.x[150:], digits.val.y[150:], x_adv)
    assert missing in det.fit_report_["fallback_classes"]
    assert det.fit_report_["classes"][str(missing)]["n_adv"] == 0
    assert torch.isfinite(det.score(digits.test.x[:20])).all()


def test_constant_fingerprints_give_finite_scores() -> None:
    det = fitted_by_hand()
    det.sd_clean_.zero_()
    det.sd_adv_.zero_()
    clean, adv = torch.zeros(20, 4), torch.zeros(20, 4)  # every neuron constant: std 0
    bank = det._build_bank(clean, adv, [4], torch.Generator().manual_seed(0))
    assert len(bank["index"]) == 0  # no difference -> nothing kept, and no NaN in the statistics
    adv[:, 0] = 1.0  # constant but different: infinite effect without the variance floor
    bank = BankDetector(d=1, k=1, n_candidates=50)._build_bank(clean, adv, [4], torch.Generator().manual_seed(0))
    assert len(bank["index"]) > 0 and torch.isfinite(bank["sd_clean"]).all() and (bank["sd_clean"] > 0).all()


def test_authors_default_layers(tiny_classifier: Classifier) -> None:
    # small-cnn width 8: conv2 (1,168 params) and fc1 (2,112) have more than 1,000 parameters
    assert authors_default_layers(tiny_classifier) == ["conv2", "fc1"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"d": 0}, "d must be"),
        ({"k": 50, "bank_size": 10}, "k .* must be <= bank_size"),
        ({"score_kind": "mean"}, "unknown score_kind"),
        ({"sampling": "random"}, "unknown sampling"),
        ({"max_p": 0.0}, "max_p"),
        ({"min_effect": -1.0}, "min_effect"),
    ],
)
def test_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        BankDetector(**kwargs)


def test_d_larger_than_layer_and_too_few_fingerprints(tiny_classifier: Classifier, digits: DataSplits) -> None:
    x, y = digits.val.x[:60], digits.val.y[:60]
    with pytest.raises(ConfigError, match="exceeds every chosen layer"):
        BankDetector(layers=["fc1", "logits"], subset="layer", d=100).fit(tiny_classifier, x, y, x)
    with pytest.raises(ConfigError, match="exceeds the concatenated layers"):
        BankDetector(layers=["fc1", "logits"], subset="concat", d=100).fit(tiny_classifier, x, y, x)
    with pytest.raises(InputError, match="fingerprints pass the selection rule"):
        BankDetector(d=4, n_candidates=200, k=5).fit(tiny_classifier, x, y, x)  # "adversarial" = clean: no signal


def test_detector_aware_pgd_lowers_the_bank_score(fitted_bank: tuple[BankDetector, torch.Tensor], digits: DataSplits) -> None:
    from neuroprint.attacks import make_attack
    from neuroprint.attacks.adaptive import DetectorAwarePGD

    det, _ = fitted_bank
    x, y = digits.test.x[:40], digits.test.y[:40]
    plain = make_attack("pgd:eps=0.3,alpha=0.05,steps=10")(det.classifier_, x, y)
    adaptive = DetectorAwarePGD(det, eps=0.3, alpha=0.05, steps=10, c=0.05)(det.classifier_, x, y)
    assert float((adaptive.x_adv - x).abs().max()) <= 0.3 + 1e-6 and adaptive.x_adv.min() >= 0 and adaptive.x_adv.max() <= 1
    assert adaptive.success.any()
    with torch.no_grad():
        assert det.score(adaptive.x_adv[adaptive.success]).mean() < det.score(plain.x_adv[plain.success]).mean()
    with pytest.raises(NotFittedError):
        DetectorAwarePGD(BankDetector())
