"""The randomized fingerprint bank: selection rule, score, per-input draws, fallback, persistence, bad input."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy import stats
from torch import nn

from neuroprint.data import DataSplits
from neuroprint.detectors.bank import BankDetector, authors_default_layers
from neuroprint.detectors.base import Detector
from neuroprint.detectors.whitening import whiten, within_class_whiteners
from neuroprint.errors import ConfigError, InputError
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
    bank = det.build_bank(clean, adv, [40], torch.Generator().manual_seed(1))
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
    bank = det.build_bank(clean, adv, [20], torch.Generator().manual_seed(0))
    assert len(bank["index"]) == 25
    assert all(len(set(row.tolist())) == 3 for row in bank["index"])  # distinct neurons within a fingerprint


def fitted_by_hand(sampling: str = "all", score_kind: str = "lr", back_weight: float = 0.3,
                   z_cap: float | None = 3.0, output_cap: float | None = None) -> BankDetector:
    det = BankDetector(layers=["flat"], d=2, k=2, bank_size=2, sampling=sampling, score_kind=score_kind,  # type: ignore[arg-type]
                       back_weight=back_weight, z_cap=z_cap, output_cap=output_cap)
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
    det.set_banks(banks)
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


def test_shift_score_against_hand_computation() -> None:
    x = torch.tensor([[[[0.2, 0.4], [0.6, 1.0]]]])  # class 0; both fingerprints moved up (+) at fit time
    z = [((0.2 + 0.4) / 2 - 0) / 1, ((0.6 + 1.0) / 2 - 0) / 0.5]  # both above the clean mean: counted in full
    assert fitted_by_hand(score_kind="shift").score(x).item() == pytest.approx(sum(z), rel=1e-5)
    # class 1: the fingerprint moved down (mu_adv 0 < mu_clean 0.5); a value of 0.45 is z = -0.5, i.e. +0.5 "toward"
    toward = torch.tensor([[[[0.9, 0.4], [0.5, 1.0]]]])
    assert fitted_by_hand(score_kind="shift").score(toward).item() == pytest.approx(0.5, rel=1e-5)
    # a value of 0.9 is z = +4 *against* the fitted direction: weighted by back_weight
    against = torch.tensor([[[[0.9, 0.9], [0.9, 1.0]]]])
    assert fitted_by_hand(score_kind="shift", back_weight=0.3).score(against).item() == pytest.approx(1.2, rel=1e-5)
    assert fitted_by_hand(score_kind="shift", back_weight=0.0).score(against).item() == pytest.approx(0.0, abs=1e-6)
    # z_cap bounds every fingerprint's contribution: min(0.3, 1) + min(1.6, 1); min(0.3 * 4, 1); no cap: 1.2
    assert fitted_by_hand(score_kind="shift", z_cap=1.0).score(x).item() == pytest.approx(1.3, rel=1e-5)
    assert fitted_by_hand(score_kind="shift", z_cap=1.0).score(against).item() == pytest.approx(1.0, rel=1e-5)
    assert fitted_by_hand(score_kind="shift", z_cap=None).score(against).item() == pytest.approx(1.2, rel=1e-5)


def test_output_term_against_hand_computation() -> None:
    x = torch.tensor([[[[0.2, 0.4], [0.6, 1.0]]]])  # logits (0, 10 * 0.2 - 5) = (0, -3): class 0; shift score 0.3 + 1.6
    det = fitted_by_hand(score_kind="shift", output_cap=2.0)
    det.output_whitener_ = torch.eye(2)
    det.output_means_ = torch.tensor([[0.0, -4.0], [0.0, 4.0]])  # D = ((0 - 0)^2 + (-3 + 4)^2) / 2 = 0.5
    det.output_norm_ = torch.tensor([0.5, 2.0, 0.25, 0.5])  # shift per fingerprint (1.9 / 2 - 0.5) / 2 = 0.225
    assert det.score(x).item() == pytest.approx(0.225 + 0.5, rel=1e-5)  # D: (0.5 - 0.25) / 0.5 = 0.5
    det.output_norm_ = torch.tensor([0.5, 2.0, -10.0, 0.5])  # D term (0.5 + 10) / 0.5 = 21, capped at 2
    assert det.score(x).item() == pytest.approx(0.225 + 2.0, rel=1e-5)


def test_output_term_is_fit_on_the_clean_inputs(fitted_bank: tuple[BankDetector, torch.Tensor],
                                                tiny_classifier: Classifier, digits: DataSplits) -> None:
    det, _ = fitted_bank
    x, y = digits.val.x[150:], digits.val.y[150:]
    with torch.no_grad():
        logits = tiny_classifier(x)
    white = logits @ det.output_whitener_
    for c in range(tiny_classifier.num_classes):  # row c: class c's whitened logit mean; all classes' when too few
        rows = white[y == c] if int((y == c).sum()) >= det.min_adv else white
        assert torch.allclose(det.output_means_[c], rows.mean(0), atol=1e-4)
    assert int(torch.bincount(y).min()) < det.min_adv  # digits' small validation split exercises that fallback
    assert torch.allclose(det.output_whitener_, within_class_whiteners(logits, y, [10], 10, det.shrinkage)[0])  # the clean fit logits'
    distance = det.output_distance(logits, logits.argmax(1))
    assert det.output_norm_[2:].tolist() == pytest.approx([distance.mean().item(), distance.std().item()], rel=1e-4)


def test_max_uses_keeps_the_greedy_least_reused_fingerprints() -> None:
    gen = torch.Generator().manual_seed(0)
    clean, adv = torch.randn(60, 12, generator=gen), torch.randn(60, 12, generator=gen)
    adv[:, :6] += torch.linspace(1.0, 3.0, 6)  # neurons 0..5 separate, the strongest most
    ranked = BankDetector(d=2, n_candidates=300, bank_size=1000, k=1).build_bank(clean, adv, [12], torch.Generator().manual_seed(1))
    bank = BankDetector(d=2, n_candidates=300, bank_size=8, k=1, max_uses=2).build_bank(
        clean, adv, [12], torch.Generator().manual_seed(1))
    uses, expected = [0] * 12, []
    for row in ranked["index"].tolist():  # the rule by hand: best |d| first, each neuron in at most 2 kept
        if all(uses[j] < 2 for j in row) and len(expected) < 8:
            expected.append(row)
            for j in row:
                uses[j] += 1
    assert bank["index"].tolist() == expected and 0 < len(expected) <= 8
    assert max(np.bincount(bank["index"].flatten().numpy(), minlength=12)) <= 2
    assert max(np.bincount(ranked["index"][:8].flatten().numpy(), minlength=12)) > 2  # plain top |d|: reuse


def test_whiteners_decorrelate_the_clean_classes() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 2
    mix = torch.tensor([[1.0, 0.9, 0.0], [0.0, 0.4, 0.0], [0.0, 0.0, 2.0]])
    f = torch.randn(400, 5, generator=gen)
    f[:, :3] = f[:, :3] @ mix + 3.0 * y[:, None]  # layer A (3 neurons): correlated, class-shifted; layer B: 2 neurons
    det = BankDetector(whiten=True, shrinkage=0.0)
    det.whiteners_ = within_class_whiteners(f, y, [3, 2], 2, shrinkage=0.0)
    assert [tuple(w.shape) for w in det.whiteners_] == [(3, 3), (2, 2)]
    assert torch.allclose(det.whiteners_[0], det.whiteners_[0].T, atol=1e-5)  # ZCA: symmetric
    white = whiten(f, det.whiteners_)
    centred = torch.cat([white[y == c] - white[y == c].mean(0) for c in (0, 1)])
    cov = centred.T @ centred / (400 - 2)  # within-class covariance: identity inside each layer
    assert torch.allclose(cov[:3, :3], torch.eye(3), atol=1e-4) and torch.allclose(cov[3:, 3:], torch.eye(2), atol=1e-4)
    shrunk = within_class_whiteners(f, y, [3, 2], 2, shrinkage=1.0)[0]
    assert torch.allclose(shrunk, torch.diag(torch.diag(shrunk)))  # full shrinkage: per-neuron scaling only


def test_score_ignores_padding_of_smaller_banks() -> None:
    x = torch.tensor([[[[0.9, 0.4], [0.5, 1.0]]]])  # predicted class 1, whose bank has one fingerprint
    v = (0.4 + 0.5) / 2
    expected = log_normal(v, 0.0, 0.2) - log_normal(v, 0.5, 0.1)
    assert fitted_by_hand().score(x).item() == pytest.approx(expected, rel=1e-5)


def test_fingerprint_scores_per_slot_with_a_padding_mask() -> None:
    det = fitted_by_hand(score_kind="shift")
    x = torch.tensor([[[[0.2, 0.4], [0.6, 1.0]]], [[[0.9, 0.4], [0.5, 1.0]]]])  # classes 0 and 1
    with torch.no_grad():
        logits, feats = det.activations(x)
    scores, valid = det.fingerprint_scores(logits.argmax(1), feats, torch.tensor([[0, 1], [0, 1]]))
    assert torch.allclose(scores[0], torch.tensor([0.3, 1.6]), atol=1e-5)  # z of both fingerprints of class 0
    assert scores[1, 0].item() == pytest.approx(0.5, rel=1e-5) and valid.tolist() == [[1, 1], [1, 0]]


def test_a_secure_draw_is_an_unbiased_estimate_of_every_fingerprint(fitted_bank: tuple[BankDetector, torch.Tensor]) -> None:
    det, x = fitted_bank
    with torch.no_grad():
        logits, feats = det.activations(x)
    pred = logits.argmax(1)
    every = det.fingerprint_scores(pred, feats, torch.arange(det.index_.shape[1]).expand(len(x), -1))
    mean_every = (every[0] * every[1]).sum(1) / every[1].sum(1)
    det.sampling = "secure"
    try:
        draws = torch.stack([det.fingerprint_score(pred, feats, per_fingerprint=True) for _ in range(400)])
    finally:
        det.sampling = "seeded"
    assert (draws.std(0) > 0).all()  # the draw moves the score ...
    assert torch.allclose(draws.mean(0), mean_every, atol=4 * float(draws.std(0).max()) / 20)  # ... around this mean


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


def test_secure_draws_are_seeded_from_the_os_csprng(fitted_bank: tuple[BankDetector, torch.Tensor],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    det, x = fitted_bank
    calls: list[int] = []

    def randbits(k: int) -> int:
        calls.append(k)
        return 12345

    monkeypatch.setattr("neuroprint.detectors.bank.secrets.randbits", randbits)
    det.sampling = "secure"
    try:
        det.score(x)
        det.score(x)
    finally:
        det.sampling = "seeded"
    assert calls == [63, 63]  # one CSPRNG seed per call, none from random_state


def test_secure_threshold_pools_draws_and_varies_less(fitted_bank: tuple[BankDetector, torch.Tensor],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import neuroprint.detectors.bank as bank_module

    det, x = fitted_bank
    assert det.calibration_scores(x).shape == (len(x),)  # seeded: one (reproducible) draw per image
    det.sampling = "secure"
    try:
        assert det.calibration_scores(x).shape == (bank_module.CALIBRATION_DRAWS * len(x),)
        pooled = torch.tensor([det.calibrate(x).threshold_ for _ in range(15)])
        monkeypatch.setattr(bank_module, "CALIBRATION_DRAWS", 1)
        single = torch.tensor([det.calibrate(x).threshold_ for _ in range(15)])
    finally:
        det.sampling = "seeded"
    assert pooled.std() < single.std()


def test_secret_key_bank_cannot_be_rebuilt_and_is_stored_nowhere(
    tiny_classifier: Classifier, digits: DataSplits, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    from neuroprint.attacks import build_adversarial_set, make_attack

    adv = build_adversarial_set(tiny_classifier, make_attack("pgd:eps=0.3,steps=10"), digits.val.x[:150],
                                digits.val.y[:150]).successful()
    params: dict[str, Any] = {"d": 8, "n_candidates": 800, "bank_size": 200, "k": 10, "min_adv": 5, "max_p": 0.01,
                              "min_effect": 0.8}

    def fit(**extra: Any) -> BankDetector:
        return BankDetector(**params, **extra).fit(tiny_classifier, digits.val.x[150:], digits.val.y[150:], adv.x_adv)

    assert torch.equal(fit().index_, fit().index_)  # seeded: anyone with the seed rebuilds the bank
    assert not torch.equal(fit(secret_key=True).index_, fit(secret_key=True).index_)
    key = 0x5EC2E7C0FFEE1234  # what the CSPRNG hands out here; it must not appear anywhere afterwards
    monkeypatch.setattr("neuroprint.detectors.bank.secrets.randbits", lambda k: key)
    det = fit(secret_key=True)
    det.save(tmp_path / "bank")
    stored = b"".join(f.read_bytes() for f in (tmp_path / "bank").rglob("*") if f.is_file())
    written = capsys.readouterr()
    for form in (str(key).encode(), hex(key)[2:].encode(), key.to_bytes(8, "little"), key.to_bytes(8, "big")):
        assert form not in stored and form.decode(errors="ignore") not in written.out + written.err
    again = Detector.load(tmp_path / "bank", tiny_classifier)
    assert torch.equal(again.index_, det.index_) and again.get_params()["secret_key"] is True


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
    tensors = load_file(str(tmp_path / "bank" / "state.safetensors"))
    save_file({k: v for k, v in tensors.items() if not k.startswith("output_")}, str(tmp_path / "bank" / "state.safetensors"))
    with pytest.raises(InputError, match="no output term .* refit it"):
        Detector.load(tmp_path / "bank", det.classifier_)  # a bank saved before the output term existed


def test_whitened_decorrelated_shift_bank_fits_scores_and_round_trips(
    fitted_bank: tuple[BankDetector, torch.Tensor], tiny_classifier: Classifier, digits: DataSplits, tmp_path: Path
) -> None:
    from neuroprint.attacks import build_adversarial_set, make_attack

    adv = build_adversarial_set(tiny_classifier, make_attack("pgd:eps=0.3,steps=10"), digits.val.x[:150],
                                digits.val.y[:150]).successful()
    det = BankDetector(d=2, n_candidates=1500, bank_size=300, k=10, min_adv=5, max_p=0.01, min_effect=0.8,
                       whiten=True, score_kind="shift", max_uses=20, output_cap=None)
    det.fit(tiny_classifier, digits.val.x[150:], digits.val.y[150:], adv.x_adv)
    assert len(det.whiteners_) == len(det.layers_)
    for c, size in enumerate(det.bank_sizes_.tolist()):
        counts = np.bincount(det.index_[c, :size].flatten().numpy())
        assert counts.max() <= 20
    x = fitted_bank[1]
    xg = x.clone().requires_grad_(True)
    scores = det.score(xg)
    assert scores.shape == (len(x),) and torch.isfinite(scores).all() and (scores >= 0).all()
    scores.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    det.save(tmp_path / "bank")
    again = Detector.load(tmp_path / "bank", det.classifier_)
    assert len(again.whiteners_) == len(det.whiteners_) and torch.equal(again.score(x), scores.detach())


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
    bank = det.build_bank(clean, adv, [4], torch.Generator().manual_seed(0))
    assert len(bank["index"]) == 0  # no difference -> nothing kept, and no NaN in the statistics
    adv[:, 0] = 1.0  # constant but different: infinite effect without the variance floor
    bank = BankDetector(d=1, k=1, n_candidates=50).build_bank(clean, adv, [4], torch.Generator().manual_seed(0))
    assert len(bank["index"]) > 0 and torch.isfinite(bank["sd_clean"]).all() and (bank["sd_clean"] > 0).all()


def test_authors_default_layers(tiny_classifier: Classifier) -> None:
    # small-cnn width 8: conv2 (1,168 params) and fc1 (2,112) have more than 1,000 parameters
    assert authors_default_layers(tiny_classifier) == ["conv2", "fc1"]


def test_default_reads_every_classifier_layer_and_authors_gives_the_authors_rule(
    fitted_bank: tuple[BankDetector, torch.Tensor], tiny_classifier: Classifier
) -> None:
    from neuroprint.detectors import make_detector
    from neuroprint.models import build_model

    det, _ = fitted_bank  # built with layers=None
    assert det.layers_ == list(tiny_classifier.layers) and len(det.layers_) > len(authors_default_layers(tiny_classifier))
    default = BankDetector()  # the setting measured on MNIST (BENCHMARKS.md)
    assert (default.layers, default.whiten, default.score_kind, default.k, default.max_uses) == (None, True, "shift", 100, 30)
    assert (default.d, default.pooling, default.subset, default.bank_size, default.n_candidates) == (3, "stats", "layer", 2000, 10000)
    assert default.z_cap == 3.0 and make_detector("bank:z_cap=none").z_cap is None and make_detector("bank:z_cap=0").z_cap is None
    assert default.output_cap == 5.0 and make_detector("bank:output_cap=none").output_cap is None
    assert make_detector("bank:output_cap=0").output_cap is None
    mnist = Classifier(build_model("mnist-net"))
    assert BankDetector().feature_layers(mnist) == ["conv1", "conv2", "conv3", "conv4", "fc1", "fc2", "logits"]
    for spec in ("bank:layers=authors", "bank:layers=authors,max_uses=none", "bank:layers=authors,max_uses=0"):
        authors = make_detector(spec)
        assert authors.layers == ["authors"] and authors.feature_layers(mnist) == authors_default_layers(mnist)
        assert authors_default_layers(mnist) == ["conv3", "conv4", "fc1", "fc2", "logits"]
    assert make_detector("bank:layers=authors,max_uses=none").max_uses is None
    assert make_detector("bank:layers=authors,max_uses=0").max_uses is None  # 0: no cap
    assert make_detector("bank:layers=fc1").layers == ["fc1"]  # one name from a spec: one layer, not its letters


def test_wide_layers_are_scaled_per_neuron_instead_of_whitened() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    f = torch.randn(300, 4 + 4100, generator=gen) * torch.linspace(0.5, 3.0, 4104)
    det = BankDetector()
    det.whiteners_ = within_class_whiteners(f, y, [4, 4100], 3, det.shrinkage)
    assert tuple(det.whiteners_[0].shape) == (4, 4) and tuple(det.whiteners_[1].shape) == (4100,)
    white = whiten(f, det.whiteners_)[:, 4:]
    centred = torch.cat([white[y == c] - white[y == c].mean(0) for c in range(3)])
    assert torch.allclose((centred**2).sum(0) / (300 - 3), torch.ones(4100), atol=1e-3)  # unit within-class variance


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"d": 0}, "d must be"),
        ({"k": 50, "bank_size": 10}, "k .* must be <= bank_size"),
        ({"score_kind": "mean"}, "unknown score_kind"),
        ({"sampling": "random"}, "unknown sampling"),
        ({"max_p": 0.0}, "max_p"),
        ({"min_effect": -1.0}, "min_effect"),
        ({"score_kind": "shift", "back_weight": 1.5}, "back_weight must be in"),
        ({"shrinkage": -0.1}, "shrinkage must be in"),
        ({"whiten": "yes"}, "whiten must be true or false"),
        ({"secret_key": 1}, "secret_key must be true or false"),
        ({"max_uses": -1}, "max_uses must be"),
        ({"z_cap": -1.0}, "z_cap must be in"),
        ({"output_cap": -1.0}, "output_cap must be in"),
        ({"pooling": "max"}, "unknown pooling 'max'; valid: avg, stats, flatten"),
        ({"layers": []}, "layers must be a non-empty list"),
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
