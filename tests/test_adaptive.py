"""Adaptive attacks: each works where it must (sanity, a simple detector, an active test), views, budgets, errors."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from neuroprint.adaptive import ADAPTIVE_ATTACKS, AdaptiveAttack, detector_view, make_adaptive_attack
from neuroprint.adaptive.orthogonal import orthogonal_to
from neuroprint.adaptive.robustness import Budget, RobustnessConfig
from neuroprint.attacks import make_attack
from neuroprint.data import DataSplits
from neuroprint.detectors import Detector, make_detector
from neuroprint.errors import ConfigError, InputError, NotFittedError
from neuroprint.evaluation.metrics import success_rate_at_threshold
from neuroprint.models import Classifier

GRADIENT_ATTACKS = ["joint", "orthogonal", "selective", "feature-matching", "high-confidence"]


class LogitDetector(Detector):
    """A test detector on the logits z: `kind="max"` scores max_j z_j (flags over-confident inputs),
    `"constant"` scores 0 (no detector at all), `"frozen"` is max_j z_j without a gradient."""

    name = "logit-test"
    needs_adversarial_examples = False

    def __init__(self, kind: str = "max") -> None:
        self.kind = kind

    def fit(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None = None) -> Detector:
        self.classifier_ = classifier
        return self

    def score(self, x: torch.Tensor) -> torch.Tensor:
        z = self.classifier_(x)
        if self.kind == "frozen":
            return z.detach().amax(1)
        return z.amax(1) if self.kind == "max" else 0.0 * z.sum(1)


class SaturationDetector(LogitDetector):
    """Deliberately breakable: scores the mean distance of the pixels to {0, 1}, min(x, 1 - x). Plain PGD lifts
    the blank background by eps and is caught, yet perturbations that push pixels towards 0 or 1 exist by
    construction, so an attacker who knows the detector must get through."""

    name = "saturation-test"

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(x, 1 - x).flatten(1).mean(1)


def sources(classifier: Classifier, digits: DataSplits, n: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    """Correctly classified digits test images `[<=n, 1, 8, 8]` and their labels."""
    x, y = digits.test.x[:n], digits.test.y[:n]
    keep = classifier.predict(x) == y
    return x[keep], y[keep]


def fitted(classifier: Classifier, digits: DataSplits, kind: str) -> LogitDetector:
    detector = LogitDetector(kind).fit(classifier, digits.val.x, digits.val.y)
    detector.calibrate(digits.val.x, fpr=0.05)
    return detector


def sr(detector: Detector, result: Any) -> float:
    with torch.no_grad():
        return success_rate_at_threshold(result.fooled.numpy(), detector.predict(result.x_adv).numpy())


@pytest.mark.parametrize("name", ["joint", "orthogonal", "selective", "high-confidence"])
def test_with_no_detector_every_attack_matches_pgd(tiny_classifier: Classifier, digits: DataSplits, name: str) -> None:
    x, y = sources(tiny_classifier, digits)
    pgd = make_attack("pgd:eps=0.3,alpha=0.03,steps=40")(tiny_classifier, x, y)
    view = detector_view(fitted(tiny_classifier, digits, "constant"), threshold=1.0)
    result = make_adaptive_attack(name, eps=0.3, steps=40)(tiny_classifier, view, x, y)
    assert result.fooled.float().mean() >= pgd.success.float().mean() - 0.02
    assert result.evades.equal(result.fooled)


def test_joint_attack_breaks_a_max_logit_threshold(tiny_classifier: Classifier, digits: DataSplits) -> None:
    """The issue's bar: >= 90% SR@5%FPR at L-inf eps 0.3 against a differentiable threshold on the max logit."""
    detector = fitted(tiny_classifier, digits, "max")
    x, y = sources(tiny_classifier, digits)
    result = make_adaptive_attack("joint", eps=0.3, steps=100)(tiny_classifier, detector_view(detector), x, y)
    assert sr(detector, result) >= 0.9


def test_active_test_a_deliberately_breakable_detector_is_broken(tiny_classifier: Classifier, digits: DataSplits) -> None:
    """Zimmermann et al. 2022 (arXiv 2206.13991): a detector that flags plain PGD but is breakable by
    construction must be broken, or the suite is too weak to judge real detectors."""
    detector = SaturationDetector().fit(tiny_classifier, digits.val.x, digits.val.y).calibrate(digits.val.x)
    x, y = sources(tiny_classifier, digits)
    plain = make_attack("pgd:eps=0.3,alpha=0.03,steps=40")(tiny_classifier, x, y)
    with torch.no_grad():
        assert float(detector.predict(plain.x_adv[plain.success]).float().mean()) >= 0.9  # non-adaptive: caught
    view = detector_view(detector)
    for name in ("joint", "orthogonal", "selective"):
        result = make_adaptive_attack(name, eps=0.3, steps=100)(tiny_classifier, view, x, y)
        assert sr(detector, result) >= 0.9, name


@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_attacks_stay_inside_budget_and_bounds(tiny_classifier: Classifier, digits: DataSplits, name: str,
                                               norm: str, eps: float) -> None:
    x, y = sources(tiny_classifier, digits, 30)
    attack = make_adaptive_attack(name, norm=norm, eps=eps, steps=5, restarts=2)
    if name == "feature-matching":
        attack.set_guides(digits.val.x, digits.val.y)
    result = attack(tiny_classifier, detector_view(fitted(tiny_classifier, digits, "max")), x, y)
    delta = (result.x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1 and result.x_adv.shape == x.shape
    assert len(result.curve) == 10 and all(0 <= v <= 1 for v in result.curve)
    with torch.no_grad():
        assert result.fooled.equal(tiny_classifier.predict(result.x_adv) != y)


def test_stopped_images_keep_their_evading_iterate(tiny_classifier: Classifier, digits: DataSplits) -> None:
    detector = fitted(tiny_classifier, digits, "max")
    x, y = sources(tiny_classifier, digits, 30)
    result = make_adaptive_attack("joint", eps=0.3, steps=60)(tiny_classifier, detector_view(detector), x, y)
    with torch.no_grad():
        scores = detector.score(result.x_adv)
    assert bool((scores[result.evades] <= detector.threshold_ + 1e-5).all())
    assert result.curve == sorted(result.curve)  # evading images stop: the share never falls


def test_orthogonal_projection_removes_the_other_direction() -> None:
    g, other = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3)
    projected = orthogonal_to(g, other)
    torch.testing.assert_close((projected * other).flatten(1).sum(1), torch.zeros(4), atol=1e-5, rtol=0)


def test_bank_view_descends_the_uncapped_expectation_and_checks_the_defender(
    tiny_classifier: Classifier, digits: DataSplits
) -> None:
    params = {"d": 8, "n_candidates": 1500, "bank_size": 300, "k": 10, "min_adv": 5, "max_p": 0.01, "min_effect": 0.8}
    x_adv = make_attack("pgd:eps=0.3,alpha=0.075,steps=10")(tiny_classifier, digits.val.x, digits.val.y).x_adv
    n = len(digits.val.x) // 2
    bank = make_detector("bank", sampling="secure", **params)
    bank.fit(tiny_classifier, digits.val.x[:n], digits.val.y[:n], x_adv[n:]).calibrate(digits.val.x[n:])
    x = digits.test.x[:20].clone().requires_grad_(True)
    view = detector_view(bank)
    assert "expectation" in view.gradient and "uncapped" in view.gradient
    out = view(x)
    assert out.loss.requires_grad and not out.check.requires_grad
    uncapped = copy.copy(bank)
    uncapped.z_cap, uncapped.output_cap, uncapped.sampling = None, float("inf"), "all"
    with torch.no_grad():
        torch.testing.assert_close(out.loss.detach(), uncapped.score(x.detach()))
    eot = detector_view(bank, draws=4)
    assert "EOT over 4" in eot.gradient and eot(x).loss.requires_grad
    fixed = copy.copy(bank)
    fixed.sampling = "fixed"
    with torch.no_grad():
        torch.testing.assert_close(detector_view(fixed)(x.detach()).check, fixed.score(x.detach()))


@pytest.mark.parametrize("name", ["dknn", "nnif"])
def test_surrogates_give_gradients_for_non_differentiable_detectors(
    tiny_classifier: Classifier, digits: DataSplits, name: str
) -> None:
    params = {"dknn": {"layers": ["conv1", "pool"], "pooling": "flatten"}, "nnif": {}}[name]
    detector = make_detector(name, **params).set_training_data(digits.train.x, digits.train.y)
    x_adv = make_attack("pgd:eps=0.3,alpha=0.075,steps=10")(tiny_classifier, digits.val.x, digits.val.y).x_adv
    n = len(digits.val.x) // 2
    detector.fit(tiny_classifier, digits.val.x[:n], digits.val.y[:n], x_adv[n:]).calibrate(digits.val.x[n:])
    x = digits.test.x[:10].clone().requires_grad_(True)
    out = detector_view(detector)(x)
    (grad,) = torch.autograd.grad(out.loss.sum(), x)
    assert float(grad.abs().sum()) > 0
    with torch.no_grad():  # NNIF's check is the surrogate's own value: float32 distances in another order
        torch.testing.assert_close(out.check, detector.score(x.detach()), rtol=1e-4, atol=1e-4)


def test_papers_attacks_run_under_the_common_interface(probe_classifier: Classifier, digits: DataSplits,
                                                      tmp_path: Path) -> None:
    detector = make_detector("neuralfp").fit(probe_classifier, digits.val.x, digits.val.y).calibrate(digits.val.x)
    x, y = sources(probe_classifier, digits, 12)
    attack = make_adaptive_attack("neuralfp-cw", norm="l2", eps=2.0, steps=10, search_steps=1)
    attack.store_inner(tmp_path / "inner.safetensors")
    result = attack(probe_classifier, detector_view(detector), x, y)
    assert float((result.x_adv - x).flatten(1).norm(dim=1).max()) <= 2.0 + 1e-5
    assert result.image_steps == len(x) * 10
    # the paper's output before projection does not depend on the budget: a second budget reuses it, projected
    other = make_adaptive_attack("neuralfp-cw", norm="linf", eps=0.1, steps=10, search_steps=1)
    other.store_inner(tmp_path / "inner.safetensors")
    reused = other(probe_classifier, detector_view(detector), x, y)
    stored = load_file(str(tmp_path / "inner.safetensors"))["x_adv"]
    assert reused.image_steps == 0
    assert torch.equal(reused.x_adv, (x + (stored - x).clamp(-0.1, 0.1)).clamp(*probe_classifier.bounds))
    with pytest.raises(ConfigError, match="applies to neuralfp only"):
        attack(probe_classifier, detector_view(fitted(probe_classifier, digits, "max")), x, y)


def test_bad_input_gives_one_line_errors(tiny_classifier: Classifier, digits: DataSplits) -> None:
    with pytest.raises(ConfigError, match="unknown adaptive attack 'nope'; valid: .*joint"):
        make_adaptive_attack("nope")
    with pytest.raises(ConfigError, match="unknown parameter.*valid: c, kappa"):
        make_adaptive_attack("joint:cc=1")
    with pytest.raises(ConfigError, match=r"eps must be in \(0.0, 1.0\]"):
        make_adaptive_attack("joint", eps=1.5)
    with pytest.raises(ConfigError, match="norm must be one of linf, l2"):
        make_adaptive_attack("orthogonal", norm="l1")
    with pytest.raises(NotFittedError, match="not fitted"):
        detector_view(make_detector("mahalanobis"))
    with pytest.raises(NotFittedError, match="no threshold"):
        detector_view(LogitDetector().fit(tiny_classifier, digits.val.x, digits.val.y))
    frozen = detector_view(fitted(tiny_classifier, digits, "frozen"))
    x, y = sources(tiny_classifier, digits, 5)
    with pytest.raises(ConfigError, match="no gradient .* ways out: register one .*high-confidence") as info:
        make_adaptive_attack("joint", steps=2)(tiny_classifier, frozen, x, y)
    assert "\n" not in str(info.value)
    result = make_adaptive_attack("high-confidence", steps=2)(tiny_classifier, frozen, x, y)  # a way out that works
    assert result.x_adv.shape == x.shape
    with pytest.raises(ConfigError, match="needs guide images"):
        make_adaptive_attack("feature-matching", steps=2)(tiny_classifier, frozen, x, y)
    with pytest.raises(InputError, match="DetectorView"):
        make_adaptive_attack("joint")(tiny_classifier, "bank", x, y)  # type: ignore[arg-type]


def test_budgets_and_config_are_checked_before_any_work() -> None:
    assert Budget.parse("0.3") == Budget("linf", 0.3) and str(Budget.parse("l2:2")) == "l2:2"
    for bad, message in [("l1:0.3", "unknown norm 'l1'"), ("linf:2", r"linf eps must be in \(0, 1.0\]"),
                         ("l2:x", "no number"), ("l2:0", r"l2 eps must be in \(0, inf\]")]:
        with pytest.raises(ConfigError, match=message):
            Budget.parse(bad)
    with pytest.raises(ConfigError, match="unknown detector 'nope'"):
        RobustnessConfig(detectors=["nope"], dataset="digits")
    with pytest.raises(ConfigError, match="unknown adaptive attack"):
        RobustnessConfig(detectors=["lid"], attacks=["pgd"], dataset="digits")
    config = RobustnessConfig(detectors=["lid"], dataset="digits")
    assert config.suite("nnif")[-1] == "cw-opt" and "cw-opt" not in config.suite("lid")


def test_every_registered_attack_declares_its_paper() -> None:
    for name in ADAPTIVE_ATTACKS.available():
        doc = __import__(ADAPTIVE_ATTACKS.get(name).__module__, fromlist=["x"]).__doc__
        assert "arXiv" in doc, name
        assert issubclass(ADAPTIVE_ATTACKS.get(name), AdaptiveAttack)


def test_success_rate_at_threshold_counts_fooled_and_unflagged() -> None:
    assert success_rate_at_threshold([True, True, False, True], [False, True, False, False]) == 0.5
    with pytest.raises(InputError, match="equal length"):
        success_rate_at_threshold([True], [True, False])


def test_layering_standard_attacks_and_detectors_never_import_the_layers_above() -> None:
    """Data moves one way (DESIGN.md): attacks know no detector; neither knows the adaptive package or the CLI."""
    import ast

    import neuroprint

    root = Path(neuroprint.__file__).parent
    forbidden = {"attacks": ("neuroprint.detectors", "neuroprint.adaptive", "neuroprint.cli"),
                 "detectors": ("neuroprint.adaptive", "neuroprint.cli")}
    for package, banned in forbidden.items():
        for path in (root / package).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                assert not any(n.startswith(banned) for n in names), f"{path.name} imports {names}"


def test_random_restarts_are_seeded(tiny_classifier: Classifier, digits: DataSplits) -> None:
    x, y = sources(tiny_classifier, digits, 20)
    view = detector_view(fitted(tiny_classifier, digits, "max"))
    runs = [make_adaptive_attack("selective", norm="l2", eps=1.0, steps=3, restarts=3, random_state=seed)(
        tiny_classifier, view, x, y).x_adv for seed in (4, 4, 5)]
    assert runs[0].equal(runs[1]) and not runs[0].equal(runs[2])


def test_joint_attack_raises_c_where_the_detector_still_flags(tiny_classifier: Classifier, digits: DataSplits) -> None:
    """An image misclassified but still flagged at the end of a round gets ten times the detector weight."""
    detector = fitted(tiny_classifier, digits, "max")
    x, y = sources(tiny_classifier, digits, 10)
    attack = make_adaptive_attack("joint", steps=4, search_rounds=2)
    view = detector_view(detector, threshold=-1e9)  # nothing passes: every image stays active
    state = attack.prepare(tiny_classifier, view, x, y)
    state["was_wrong"][:5] = True
    for _ in range(2):
        attack.direction(tiny_classifier, view, x, y, state)
    assert state["c"][:5].tolist() == [10.0] * 5
    never_wrong = tiny_classifier.predict(x[5:]) == y[5:]  # clean, correctly classified sources: c falls
    torch.testing.assert_close(state["c"][5:], torch.where(never_wrong, 0.1, 10.0))


def test_joined_table_keeps_the_fuller_suite_and_marks_partial_cells() -> None:
    from neuroprint.adaptive.report import joined_table, joined_wall_times
    from neuroprint.adaptive.robustness import SUITE, AttackOutcome, DetectorOutcome, RobustnessReport

    def report(attacks: tuple[str, ...], worst: float, model: str = "mnist-net") -> RobustnessReport:
        outcome = DetectorOutcome("lid", fpr_test=0.05, worst_case={"linf:0.3": worst}, no_detector={"linf:0.3": 1.0},
                                  attacks=[AttackOutcome("lid", "linf:0.3", a, 100, 1.0, 1.0, worst, 60.0) for a in attacks])
        config = RobustnessConfig(["lid"], budgets=["linf:0.3"], model=model, steps=300)
        return RobustnessReport(config, 0.99, model, [outcome], 1.0)

    partial, full = report(("joint",), 0.4), report(SUITE, 0.9)
    table = joined_table([full, partial], ["linf:0.1", "linf:0.3"])
    assert "| lid | – | **90.0** (100) | 300 | 5.0–5.0 |" in table and "†" not in table
    table = joined_table([partial, report(SUITE, 0.9, "runs/other-model")], ["linf:0.3"])
    assert "| lid | **40.0**† (100) |" in table and "| lid (other-model) | **90.0** (100) |" in table
    assert "lid at linf:0.3: joint" in table
    assert f"| lid | – | {len(SUITE):.1f} |" in joined_wall_times([partial, full], ["linf:0.1", "linf:0.3"])
