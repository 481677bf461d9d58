"""Detectors: a contract test over every registered detector, plus method-specific checks of LID and Mahalanobis."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from neuroprint.attacks import make_attack
from neuroprint.data import DataSplits, load_dataset
from neuroprint.detectors import DETECTORS, Detector, make_detector
from neuroprint.detectors.lid import LIDDetector, lid_mle, pairwise_distances
from neuroprint.detectors.logistic import LogisticHead
from neuroprint.detectors.mahalanobis import NOISE_GRID, MahalanobisDetector, class_distances, tied_gaussian
from neuroprint.errors import ConfigError, InputError, NotFittedError
from neuroprint.features import extract
from neuroprint.models import Classifier

# Parameters for the 8x8 digits where a detector's defaults are sized for MNIST/CIFAR (others use their defaults).
CONTRACT_PARAMS: dict[str, dict[str, Any]] = {
    "bank": {"d": 8, "n_candidates": 1500, "bank_size": 300, "k": 10, "min_adv": 5, "max_p": 0.01, "min_effect": 0.8},
    "distance-space": {"lr": 3e-3},  # ~200 fit sequences: 2 Adam steps per epoch at the paper's lr 3e-4 is too few
    "dknn": {"layers": ["conv1", "pool"], "pooling": "flatten"},  # the tiny CNN's embedding alone: AUC ~0.80
}
# Held-out AUC each detector must exceed on digits PGD (default 0.9). DkNN is a weak baseline against this strong
# attack (0.89 with the parameters above; the NNIF paper's DkNN also trails, e.g. 86.8 AUC on CIFAR-10 PGD).
MIN_AUC: dict[str, float] = {"dknn": 0.8}
DIFFERENTIABLE = ["bank", "binary-activation", "distance-space", "kdbu", "lid", "mahalanobis", "neuralfp"]  # detectors whose docstring promises a differentiable score
OWN_MODEL = {"neuralfp"}  # detectors that need a model trained for them (the `probe_classifier` fixture)
FEATURE_MODE = {"mahalanobis": {"noise_magnitudes": [0.0]}}  # parameters under which a detector shares features


def attack_sets(classifier: Classifier, digits: DataSplits) -> dict[str, torch.Tensor]:
    """Fit set = digits validation split (clean + PGD); held-out set = digits test split (clean + PGD)."""
    pgd = make_attack("pgd:eps=0.3,alpha=0.075,steps=10")  # step 2.5 * eps / steps: every digit is misclassified
    return {
        "x": digits.val.x,
        "y": digits.val.y,
        "x_adv": pgd(classifier, digits.val.x, digits.val.y).x_adv,
        "x_test": digits.test.x,
        "x_test_adv": pgd(classifier, digits.test.x, digits.test.y).x_adv,
    }


@pytest.fixture(scope="module")
def sets(tiny_classifier: Classifier, digits: DataSplits) -> dict[str, torch.Tensor]:
    return attack_sets(tiny_classifier, digits)


@pytest.fixture(scope="module")
def probe_sets(probe_classifier: Classifier, digits: DataSplits) -> dict[str, torch.Tensor]:
    return attack_sets(probe_classifier, digits)


def build(name: str, **params: Any) -> Detector:
    """`make_detector(name)` with the digits-sized `CONTRACT_PARAMS`, overridden by `params`; a detector that
    `needs_training_data` is given the digits training split (the tiny classifier's training data)."""
    detector = make_detector(name, **{**CONTRACT_PARAMS.get(name, {}), **params})
    if detector.needs_training_data:
        train = load_dataset("digits").train
        detector.set_training_data(train.x, train.y)
    return detector


@pytest.fixture(scope="module", params=DETECTORS.available())
def detector_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def model(request: pytest.FixtureRequest, detector_name: str, tiny_classifier: Classifier) -> Classifier:
    """The classifier a detector is tested on: NeuralFP needs one trained with its probes."""
    return request.getfixturevalue("probe_classifier") if detector_name in OWN_MODEL else tiny_classifier


@pytest.fixture(scope="module")
def model_sets(
    request: pytest.FixtureRequest, detector_name: str, sets: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """`sets`, attacked on `model`."""
    return request.getfixturevalue("probe_sets") if detector_name in OWN_MODEL else sets


@pytest.fixture(scope="module")
def fitted(detector_name: str, model: Classifier, model_sets: dict[str, torch.Tensor]) -> Detector:
    return build(detector_name).fit(model, model_sets["x"], model_sets["y"], model_sets["x_adv"])


def auc(clean: torch.Tensor, adv: torch.Tensor) -> float:
    labels = np.r_[np.zeros(len(clean)), np.ones(len(adv))]
    return float(roc_auc_score(labels, torch.cat([clean, adv]).detach().numpy()))


# -- contract: every registered detector ---------------------------------------------------------------------------
def test_scores_are_finite_and_separate_held_out_attacks(fitted: Detector, model_sets: dict[str, torch.Tensor]) -> None:
    clean, adv = fitted.score(model_sets["x_test"]), fitted.score(model_sets["x_test_adv"])
    assert clean.shape == (len(model_sets["x_test"]),) and adv.shape == (len(model_sets["x_test_adv"]),)
    assert bool(torch.isfinite(clean).all()) and bool(torch.isfinite(adv).all())
    assert auc(clean, adv) > MIN_AUC.get(fitted.name, 0.9)


def test_calibrate_flags_five_percent_of_clean(fitted: Detector, model_sets: dict[str, torch.Tensor]) -> None:
    fitted.calibrate(model_sets["x"], fpr=0.05)
    flagged = fitted.predict(model_sets["x"])
    assert flagged.dtype == torch.bool
    assert abs(float(flagged.float().mean()) - 0.05) < 0.01


def test_save_load_round_trip_scores_identically(
    fitted: Detector, model: Classifier, model_sets: dict[str, torch.Tensor], tmp_path: Any
) -> None:
    fitted.calibrate(model_sets["x"])
    fitted.save(tmp_path / "det")
    loaded = Detector.load(tmp_path / "det", model)
    x = torch.cat([model_sets["x_test"][:50], model_sets["x_test_adv"][:50]])
    assert type(loaded) is type(fitted) and loaded.get_params() == fitted.get_params()
    assert torch.equal(loaded.score(x), fitted.score(x))
    assert loaded.threshold_ == fitted.threshold_


def test_fit_features_matches_fit_on_images(
    fitted: Detector, model: Classifier, model_sets: dict[str, torch.Tensor]
) -> None:
    detector = build(fitted.name, **FEATURE_MODE.get(fitted.name, {}))
    spec = detector.feature_spec
    if spec is None:
        pytest.skip(f"{fitted.name} reads images, not shared features")

    def feats(x: torch.Tensor) -> Any:
        return extract(model, x, spec.layers, spec.pooling)

    detector.fit_features(model, feats(model_sets["x"]), model_sets["y"], feats(model_sets["x_adv"]))
    twin = build(detector.name, **detector.get_params()).fit(model, model_sets["x"], model_sets["y"], model_sets["x_adv"])
    x = model_sets["x_test_adv"][:40]
    torch.testing.assert_close(detector.score_features(feats(x)), detector.score(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(detector.score(x), twin.score(x), rtol=1e-3, atol=1e-3)


def test_fits_unpaired_adversarial_sets(detector_name: str, model: Classifier, model_sets: dict[str, torch.Tensor]) -> None:
    detector = build(detector_name).fit(model, model_sets["x"][:150], model_sets["y"][:150], model_sets["x_adv"][150:])
    scores = detector.score(model_sets["x_test_adv"][:20])
    assert scores.shape == (20,) and bool(torch.isfinite(scores).all())


def test_score_before_fit_raises_not_fitted(detector_name: str, model_sets: dict[str, torch.Tensor]) -> None:
    detector = make_detector(detector_name)
    with pytest.raises(NotFittedError):
        detector.score(model_sets["x_test"][:4])
    with pytest.raises(NotFittedError):
        detector.predict(model_sets["x_test"][:4])


def _bad_images(x: torch.Tensor) -> dict[str, torch.Tensor]:
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    return {"nan": nan, "out of range": x * 2.0 + 0.5, "wrong shape": x[:, 0], "empty": x[:0], "int": x.long()}


def test_bad_inputs_raise_input_error(fitted: Detector, model: Classifier, model_sets: dict[str, torch.Tensor]) -> None:
    x, y, x_adv = model_sets["x"][:80], model_sets["y"][:80], model_sets["x_adv"][:80]
    for what, bad in _bad_images(x).items():
        with pytest.raises(InputError):
            fitted.score(bad)
        fresh = build(fitted.name)
        with pytest.raises(InputError):
            fresh.fit(model, bad, y[: len(bad)], x_adv[: len(bad)])
        with pytest.raises(InputError):
            fresh.fit(model, x, y, bad)
        assert getattr(fresh, "classifier_", None) is None, what
    if fitted.needs_adversarial_examples:
        with pytest.raises(InputError):
            build(fitted.name).fit(model, x, y)  # x_adv missing
    with pytest.raises(InputError):
        build(fitted.name).fit(model, x, y[:10], x_adv)


def test_unknown_detector_or_parameter_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="valid: .*lid"):
        make_detector("no-such-detector")
    with pytest.raises(ConfigError, match="unknown parameter"):
        make_detector("lid", kk=3)
    with pytest.raises(ConfigError, match="batch_size"):
        make_detector("lid", k=20, batch_size=20)
    with pytest.raises(ConfigError, match="noise_magnitudes"):
        make_detector("mahalanobis", noise_magnitudes=[-0.1])
    with pytest.raises(ConfigError, match="fpr"):
        make_detector("lid").calibrate(torch.zeros(1, 1, 8, 8), fpr=1.5)


def test_score_is_differentiable_in_x(fitted: Detector, model_sets: dict[str, torch.Tensor]) -> None:
    if fitted.name not in DIFFERENTIABLE:
        pytest.skip(f"{fitted.name} does not claim a differentiable score")
    x = model_sets["x_test_adv"][:16].clone().requires_grad_(True)
    fitted.score(x).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0


# -- LID -------------------------------------------------------------------------------------------------------
def test_lid_mle_matches_hand_computation() -> None:
    query = torch.zeros(1, 4)
    reference = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0]))  # distances 1, 2, 3, 4 from the origin
    dist = pairwise_distances(query, reference)
    torch.testing.assert_close(dist, torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64))
    expected = -1.0 / ((math.log(1 / 3) + math.log(2 / 3) + math.log(1)) / 3)  # k = 3
    assert float(lid_mle(dist, 3)) == pytest.approx(expected, rel=1e-9)
    excluded = dist.clone()
    excluded[0, 0] = float("inf")  # drop the nearest (as a point's own zero distance is dropped)
    expected = -1.0 / ((math.log(2 / 4) + math.log(3 / 4) + math.log(1)) / 3)
    assert float(lid_mle(excluded, 3)) == pytest.approx(expected, rel=1e-9)


def test_lid_reference_points_do_not_count_themselves(tiny_classifier: Classifier, sets: dict[str, torch.Tensor]) -> None:
    detector = LIDDetector(k=5, batch_size=30, layers=["fc1"]).fit(tiny_classifier, sets["x"], sets["y"], sets["x_adv"])
    index = detector.reference_index_
    assert len(index) == 30 and len(set(index.tolist())) == 30
    acts = extract(tiny_classifier, sets["x"][index], ["fc1"], "flatten")
    fit_time = detector._lids(acts, detector._self_columns(len(sets["x"]))[index])
    for i in (0, 7):
        others = torch.cat([detector.reference_["fc1"][:i], detector.reference_["fc1"][i + 1 :]])
        by_hand = lid_mle(pairwise_distances(acts["fc1"][i : i + 1], others), 5)
        torch.testing.assert_close(fit_time[i, 0], by_hand[0].float())
    assert bool((detector._lids(acts, None) < 0.5 * fit_time).all())  # a zero self-distance would drag LID down


def test_lid_averages_over_reference_batches(tiny_classifier: Classifier, sets: dict[str, torch.Tensor]) -> None:
    detector = LIDDetector(k=5, batch_size=20, n_batches=3, layers=["fc1"])
    detector.fit(tiny_classifier, sets["x"], sets["y"], sets["x_adv"])
    assert len(set(detector.reference_index_.tolist())) == 60
    acts = extract(tiny_classifier, sets["x_test"][:10], ["fc1"], "flatten")["fc1"]
    batches = detector.reference_["fc1"].view(3, 20, -1)
    by_hand = torch.stack([lid_mle(pairwise_distances(acts, batch), 5) for batch in batches]).mean(0)
    torch.testing.assert_close(detector.lid(sets["x_test"][:10])[:, 0], by_hand.float())


def test_lid_needs_more_clean_images_than_k(tiny_classifier: Classifier, sets: dict[str, torch.Tensor]) -> None:
    with pytest.raises(InputError, match="k=20"):
        LIDDetector().fit(tiny_classifier, sets["x"][:15], sets["y"][:15], sets["x_adv"][:15])


# -- Mahalanobis ----------------------------------------------------------------------------------------------------
def test_mahalanobis_tied_covariance_and_confidence_match_numpy() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(3, 4))
    labels = rng.integers(0, 3, size=300)
    a = rng.normal(size=(4, 4))
    feats = centres[labels] + rng.normal(size=(300, 4)) @ a
    classes, means, cov = tied_gaussian(torch.as_tensor(feats), torch.as_tensor(labels))
    np_means = np.stack([feats[labels == c].mean(0) for c in range(3)])
    centred = feats - np_means[labels]
    np_cov = centred.T @ centred / len(feats)
    np.testing.assert_allclose(means.numpy(), np_means, rtol=1e-10)
    np.testing.assert_allclose(cov.numpy(), np_cov, rtol=1e-10)
    assert classes.tolist() == [0, 1, 2]
    precision = np.linalg.pinv(np_cov)
    queries = rng.normal(scale=3.0, size=(5, 4))
    np_conf = np.array([max(-(q - m) @ precision @ (q - m) for m in np_means) for q in queries])
    dist = class_distances(torch.as_tensor(queries), means, torch.as_tensor(precision))
    np.testing.assert_allclose((-dist.min(1).values).numpy(), np_conf, rtol=1e-8)


def test_mahalanobis_selects_noise_from_the_grid_on_held_out_data(fitted: Detector) -> None:
    if not isinstance(fitted, MahalanobisDetector):
        pytest.skip("mahalanobis only")
    assert sorted(fitted.noise_auc_) == sorted(NOISE_GRID)
    assert fitted.noise_ == max(NOISE_GRID, key=lambda e: (fitted.noise_auc_[e], -e))
    assert all(0.5 <= a <= 1.0 for a in fitted.noise_auc_.values())


def test_mahalanobis_feature_mode_is_refused_with_preprocessing(tiny_classifier: Classifier) -> None:
    detector = MahalanobisDetector()
    assert detector.feature_spec is None
    with pytest.raises(ConfigError, match="noise_magnitudes"):
        detector.fit_features(tiny_classifier, None, torch.zeros(0), None)  # type: ignore[arg-type]


def test_logistic_head_is_differentiable_and_round_trips() -> None:
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(200, 3, generator=generator)
    labels = (feats[:, 0] + 0.1 * torch.randn(200, generator=generator) > 0).long()
    head = LogisticHead(random_state=0).fit(feats, labels)
    f = feats[:5].clone().requires_grad_(True)
    head(f).sum().backward()
    assert f.grad is not None and float(f.grad[:, 0].min()) > 0  # label 1 grows with feature 0
    clone = LogisticHead().load_state(head.state_dict())
    assert torch.equal(clone(feats), head(feats))
