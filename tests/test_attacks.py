"""Attacks: every registered attack on correctly classified digits, the plain-torch L-inf attacks against
torchattacks, the optional torchattacks adapter, specs, bad input, adversarial sets on disk."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from neuroprint.attacks import ATTACKS, AdversarialSet, AttackResult, build_adversarial_set, make_attack
from neuroprint.attacks.base import Attack
from neuroprint.attacks.foolbox_attacks import restore_failures
from neuroprint.data import DataSplits
from neuroprint.errors import ConfigError, InputError
from neuroprint.models import Classifier
from neuroprint.specs import parse_spec

# Small step counts keep the file fast; the bounds are what these settings reach on the tiny digits model.
SPECS = {
    "fgsm": "fgsm",
    "bim-a": "bim-a",
    "bim-b": "bim-b:steps=30",
    "pgd": "pgd:steps=20,alpha=0.03",
    "mifgsm": "mifgsm:steps=20,alpha=0.03",
    "cw": "cw:binary_search_steps=3,steps=50",
    "deepfool": "deepfool:steps=20",
    "jsma": "jsma:gamma=0.2",
    "ead": "ead:binary_search_steps=3,steps=50",
    "lbfgs": "lbfgs:search_steps=3,max_iter=50",
}
MIN_SUCCESS = {"fgsm": 0.5, "bim-a": 0.9, "bim-b": 0.9, "pgd": 0.9, "mifgsm": 0.9, "cw": 0.9, "deepfool": 0.9,
               "jsma": 0.7, "ead": 0.9, "lbfgs": 0.9}
LINF = {"fgsm", "bim-a", "bim-b", "pgd", "mifgsm"}
Batch = tuple[torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def batch(tiny_classifier: Classifier, digits) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """32 correctly classified digits test images and their labels."""
    x, y = digits.test.x, digits.test.y
    keep = tiny_classifier.predict(x) == y
    return x[keep][:32].clone(), y[keep][:32].clone()


@pytest.fixture(scope="module")
def results(tiny_classifier: Classifier, batch) -> dict[str, tuple[AttackResult, float | None]]:  # type: ignore[no-untyped-def]
    """Each registered attack run once on `batch` (its input checked for mutation), with its L-inf eps."""
    x, y = batch
    out = {}
    for name, spec in SPECS.items():
        before = x.clone()
        attack = make_attack(spec)
        out[name] = (attack(tiny_classifier, x, y), attack.params.get("eps") if name in LINF else None)
        assert torch.equal(x, before), f"{name} mutated its input"
    return out


def test_every_registered_attack_is_tested() -> None:
    assert sorted(SPECS) == ATTACKS.available()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_attack_contract(name: str, results, tiny_classifier: Classifier, batch) -> None:  # type: ignore[no-untyped-def]
    x, y = batch
    result, eps = results[name]
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    pred = tiny_classifier.predict(result.x_adv)
    assert torch.equal(result.adv_pred, pred)
    assert torch.equal(result.success, pred != y)
    assert torch.equal(result.clean_pred, y)
    delta = (result.x_adv - x).flatten(1)
    assert torch.allclose(result.l2, delta.norm(dim=1)) and torch.allclose(result.linf, delta.abs().amax(1))
    assert result.success_rate == pytest.approx(float(result.success.float().mean()))
    if eps is not None:
        assert float(result.linf.max()) <= eps + 1e-6
    assert result.success_rate >= MIN_SUCCESS[name], f"{name}: {result.success_rate:.2f}"
    assert not bool((result.l2[result.success] == 0).any()), f"{name} counts unperturbed images as successes"


def test_minimal_attacks_find_smaller_perturbations_than_fgsm(results) -> None:  # type: ignore[no-untyped-def]
    fgsm_l2 = results["fgsm"][0].l2.mean()
    for name in ("cw", "deepfool", "ead", "bim-a"):
        result = results[name][0]
        assert result.l2[result.success].mean() < fgsm_l2, name


def test_jsma_changes_at_most_gamma_of_the_pixels(results, batch) -> None:  # type: ignore[no-untyped-def]
    x, _ = batch
    changed = ((results["jsma"][0].x_adv - x).flatten(1) != 0).sum(dim=1)
    assert int(changed.max()) <= 2 * int(0.2 * x[0].numel() / 2)
    assert int(changed.min()) >= 1


def test_jsma_on_probabilities_reaches_its_targets_within_budget(tiny_classifier: Classifier, batch, results) -> None:  # type: ignore[no-untyped-def]
    x, y = batch
    logits_result = results["jsma"][0]  # SPECS["jsma"]: the same attack on the logits
    result = make_attack(SPECS["jsma"] + ",jacobian=probabilities")(tiny_classifier, x, y)
    changed = ((result.x_adv - x).flatten(1) != 0).sum(dim=1)
    assert float(result.success.float().mean()) >= MIN_SUCCESS["jsma"]
    assert int(changed.max()) <= 2 * int(0.2 * x[0].numel() / 2)
    assert not torch.equal(result.x_adv, logits_result.x_adv)  # a different saliency ranks different pixel pairs


def test_bim_a_stops_each_example_at_its_first_misclassification(tiny_classifier: Classifier, batch) -> None:  # type: ignore[no-untyped-def]
    x, y = batch
    short = make_attack("bim-a:steps=5")(tiny_classifier, x, y)
    full = make_attack("bim-a:steps=50")(tiny_classifier, x, y)
    fixed = make_attack("bim-b:steps=50")(tiny_classifier, x, y)
    early = short.success
    assert 0 < int(early.sum()) < len(x), "pick steps so that some but not all examples fall within 5 steps"
    assert float(short.linf[early].max()) <= 5 * 0.01 + 1e-6
    # an example fooled within 5 steps is never pushed further by a longer run
    assert torch.equal(full.x_adv[early], short.x_adv[early])
    assert float(full.linf[full.success].mean()) < float(fixed.linf[fixed.success].mean())


def test_foolbox_failures_are_reported_as_failures(tiny_classifier: Classifier, batch) -> None:  # type: ignore[no-untyped-def]
    x, y = batch
    result = make_attack("cw:binary_search_steps=1,steps=2,initial_const=0.0001")(tiny_classifier, x, y)
    failed = ~result.success
    assert bool(failed.any())
    assert torch.equal(result.x_adv[failed], x[failed]) and bool((result.l2[failed] == 0).all())
    zeros = torch.zeros_like(x[:2])
    restored = restore_failures(x[:2], torch.stack([zeros[0], x[1] * 0.5]))
    assert torch.equal(restored[0], x[0]) and torch.equal(restored[1], x[1] * 0.5)


class _Overwriting(Attack):
    """A careless L-inf attack: overwrites its input batch in place with an out-of-bounds image."""

    def __init__(self) -> None:
        super().__init__(eps=0.1)

    def _perturb(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.fill_(3.0)


def test_base_projects_clips_and_protects_inputs(tiny_classifier: Classifier, batch) -> None:  # type: ignore[no-untyped-def]
    x, y = batch
    before = x.clone()
    result = _Overwriting()(tiny_classifier, x, y)
    assert torch.equal(x, before)
    assert torch.allclose(result.x_adv, (x + 0.1).clamp(0, 1))
    assert float(result.linf.max()) <= 0.1 + 1e-6


def test_stochastic_attacks_are_seeded_without_touching_the_global_generator(tiny_classifier: Classifier, batch) -> None:  # type: ignore[no-untyped-def]
    x, y = batch
    state = torch.get_rng_state()
    a = make_attack("pgd:steps=2,random_state=3")(tiny_classifier, x, y).x_adv
    b = make_attack("pgd:steps=2,random_state=3")(tiny_classifier, x, y).x_adv
    c = make_attack("pgd:steps=2,random_state=4")(tiny_classifier, x, y).x_adv
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)


def test_batching_and_model_mode(tiny_classifier: Classifier, batch) -> None:  # type: ignore[no-untyped-def]
    x, y = batch
    attack = make_attack("fgsm")
    whole = attack(tiny_classifier, x, y)
    tiny_classifier.train()
    try:
        pieces = attack(tiny_classifier, x, y, batch_size=5, progress=True)
        assert tiny_classifier.training, "the caller's train mode must be restored"
    finally:
        tiny_classifier.eval()
    assert torch.allclose(whole.x_adv, pieces.x_adv, atol=1e-6)


# the named L-inf attacks with their defaults, and the torchattacks classes they replaced, at those settings
TORCHATTACKS_TWINS = {
    "fgsm": "torchattacks.FGSM:eps=0.3",
    "bim-b": "torchattacks.BIM:eps=0.3,alpha=0.01,steps=50",
    "pgd": "torchattacks.PGD:eps=0.3,alpha=0.01,steps=40,random_start=True",
    "mifgsm": "torchattacks.MIFGSM:eps=0.3,alpha=0.01,steps=40,decay=1.0",
}


@pytest.mark.parametrize("name", sorted(TORCHATTACKS_TWINS))
def test_linf_attacks_match_torchattacks(name: str, tiny_classifier: Classifier, batch: Batch) -> None:
    pytest.importorskip("torchattacks")
    x, y = batch
    own = make_attack(name)(tiny_classifier, x, y)
    reference = make_attack(TORCHATTACKS_TWINS[name])(tiny_classifier, x, y)  # same seed: the same PGD start
    # bitwise equal for fgsm, pgd and mifgsm; torchattacks' BIM clips with min/max where bim-b adds a clamped
    # delta: at most 1 ulp apart
    torch.testing.assert_close(own.x_adv, reference.x_adv, rtol=0.0, atol=1e-6)
    assert torch.equal(own.adv_pred, reference.adv_pred)


def test_pgd_fools_every_digit_at_eps_03(tiny_classifier: Classifier, digits: DataSplits) -> None:
    x, y = digits.test.x, digits.test.y
    keep = tiny_classifier.predict(x) == y
    result = make_attack("pgd:eps=0.3")(tiny_classifier, x[keep], y[keep])
    assert result.success_rate == 1.0 and float(result.linf.max()) <= 0.3 + 1e-6


def test_torchattacks_is_optional(
    monkeypatch: pytest.MonkeyPatch, tiny_classifier: Classifier, batch: Batch
) -> None:
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # any `import torchattacks` now raises ImportError
    with pytest.raises(ConfigError, match=r"run `pip install --no-deps torchattacks==3\.5\.1`$"):
        make_attack("torchattacks.PGD:eps=0.3")
    x, y = batch
    for name in ("fgsm", "bim-b:steps=5", "pgd:steps=5", "mifgsm:steps=5"):
        assert make_attack(name)(tiny_classifier, x, y).success_rate > 0.0, name


def test_torchattacks_adapter(tiny_classifier: Classifier, batch) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("torchattacks")
    x, y = batch
    attack = make_attack("torchattacks.PGD:eps=0.3,alpha=0.05,steps=10")
    assert attack.name == "torchattacks.PGD"
    assert attack.params == {"class": "PGD", "eps": 0.3, "alpha": 0.05, "steps": 10, "random_start": True, "random_state": 0}
    json.dumps(attack.params)
    result = attack(tiny_classifier, x, y)
    assert result.success_rate >= 0.9 and float(result.linf.max()) <= 0.3 + 1e-6
    # torchattacks' EADEN writes outside [0, 1] and calls backward() on the model: the base contains both
    before, params = x.clone(), list(tiny_classifier.parameters())
    grads = [None if p.grad is None else p.grad.clone() for p in params]
    eaden = make_attack("torchattacks.EADEN:max_iterations=10,binary_search_steps=2")(tiny_classifier, x, y)
    assert torch.equal(x, before) and 0.0 <= float(eaden.x_adv.min()) and float(eaden.x_adv.max()) <= 1.0
    assert all(p.requires_grad for p in params)
    assert all((g is None and p.grad is None) or torch.equal(g, p.grad) for g, p in zip(grads, params))
    with pytest.raises(ConfigError, match="APGD"):
        make_attack("torchattacks.NoSuchAttack")
    with pytest.raises(ConfigError, match="bogus.*valid: eps"):
        make_attack("torchattacks.FGSM:bogus=1")
    with pytest.raises(ConfigError, match="bounds"):
        attack(Classifier(tiny_classifier.module, bounds=(0.0, 2.0)), x, y)


def test_foolbox_and_own_attacks_respect_other_bounds(tiny_classifier: Classifier, batch) -> None:  # type: ignore[no-untyped-def]
    x, y = batch
    wide = Classifier(tiny_classifier.module, bounds=(0.0, 2.0), mean=(tiny_classifier.mean * 2).flatten().tolist(),
                      std=(tiny_classifier.std * 2).flatten().tolist())
    for spec in ("bim-a:eps=0.6,alpha=0.02", "pgd:eps=0.6,alpha=0.06,steps=20", "deepfool:steps=10"):
        result = make_attack(spec)(wide, x * 2, y)
        assert float(result.x_adv.max()) <= 2.0 and result.success_rate >= 0.9, spec
        assert "deepfool" in spec or float(result.linf.max()) <= 0.6 + 1e-6, spec


def test_spec_parsing() -> None:
    assert parse_spec("pgd") == ("pgd", {})
    assert parse_spec(" pgd:eps=0.1, steps=20,random_start=False,random_state=none,loss=ce ") == (
        "pgd", {"eps": 0.1, "steps": 20, "random_start": False, "random_state": None, "loss": "ce"})
    attack = make_attack("pgd:eps=0.1,steps=20")
    assert attack.name == "pgd"
    assert attack.params == {"eps": 0.1, "alpha": 0.01, "steps": 20, "random_start": True, "random_state": 0}
    assert make_attack("cw").params["initial_const"] == 1.0
    for name in ATTACKS.available():
        json.dumps(make_attack(name).params)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("nope", r"unknown attack 'nope'; valid: bim-a.*torchattacks\.<Class>"),
        ("", "non-empty"),
        ("pgd:eps", "key=value"),
        ("pgd:eps=0.1,eps=0.2", "twice"),
        ("pgd:eps=0", r"eps must be in \(0.0, 1.0\], got 0"),
        ("fgsm:eps=1.5", "eps must be"),
        ("bim-b:steps=0", "steps must be an integer >= 1, got 0"),
        ("pgd:steps=2.5", "steps must be an integer"),
        ("pgd:random_start=yes", "random_start must be true or false"),
        ("pgd:foo=1", r"unknown parameter\(s\) foo for attack 'pgd'; valid: eps, alpha"),
        ("jsma:theta=0", "theta"),
        ("jsma:jacobian=softmax", "jacobian must be one of logits, probabilities"),
        ("ead:decision_rule=L2", "decision_rule must be one of EN, L1"),
        ("deepfool:candidates=1", "candidates"),
        ("torchattacks.APGD:norm", "key=value"),
    ],
)
def test_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_attack(spec)


def test_bad_inputs(tiny_classifier: Classifier, batch) -> None:  # type: ignore[no-untyped-def]
    x, y = batch
    attack = make_attack("fgsm")
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    cases = [
        ((nan, y), "NaN"),
        ((x * 2, y), "outside the pixel bounds"),
        ((x[:, 0], y), r"shape \[N, C, H, W\]"),
        ((x[:0], y[:0]), "empty"),
        ((x, y[:-1]), r"shape \[32\]"),
        ((x, y.float()), "integer labels"),
        ((x, y + 10), r"valid: 0..9"),
    ]
    for args, match in cases:
        with pytest.raises(InputError, match=match):
            attack(tiny_classifier, *args)
    with pytest.raises(ConfigError, match="batch_size"):
        attack(tiny_classifier, x, y, batch_size=0)
    with pytest.raises(InputError, match="Classifier"):
        attack(tiny_classifier.module, x, y)


def test_adversarial_set_keeps_only_correct_images_and_round_trips(tmp_path, tiny_classifier: Classifier, digits) -> None:  # type: ignore[no-untyped-def]
    x, y = digits.test.x[:60], digits.test.y[:60]
    correct = tiny_classifier.predict(x) == y
    wrong = y.clone()
    wrong[:3] = (y[:3] + 1) % 10  # three labels the classifier cannot match
    keep = correct & (wrong == y)
    adv = build_adversarial_set(tiny_classifier, make_attack("pgd:steps=10,alpha=0.05"), x, wrong,
                                source_index=torch.arange(100, 160), split="test", meta={"dataset": "digits"})
    assert len(adv) == int(keep.sum())
    assert torch.equal(adv.source_index, torch.arange(100, 160)[keep])
    assert torch.equal(adv.y_true, y[keep]) and torch.equal(adv.clean_pred, y[keep])
    assert adv.meta == {"dataset": "digits", "n_input": 60, "n_correct": int(keep.sum())}
    assert adv.success_rate >= 0.9 and 0 < adv.mean_linf <= 0.3 + 1e-6 and adv.mean_l2 > 0
    assert bool(adv.successful().success.all())

    adv.save(tmp_path / "pgd")
    config = json.loads((tmp_path / "pgd.json").read_text())
    assert config["attack"] == "pgd" and config["n"] == len(adv) and "torch" in config["versions"]
    back = AdversarialSet.load(tmp_path / "pgd.json")
    for name in ("x_adv", "source_index", "y_true", "clean_pred", "adv_pred", "success", "l2", "linf"):
        assert torch.equal(getattr(back, name), getattr(adv, name)), name
    assert (back.attack, back.params, back.split, back.meta) == (adv.attack, adv.params, adv.split, adv.meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pgd.json", "pgd.safetensors"]


def test_adversarial_set_errors(tmp_path, tiny_classifier: Classifier, batch) -> None:  # type: ignore[no-untyped-def]
    x, y = batch
    with pytest.raises(InputError, match="none of the 32 images"):
        build_adversarial_set(tiny_classifier, make_attack("fgsm"), x, (y + 1) % 10)
    with pytest.raises(InputError, match="source_index"):
        build_adversarial_set(tiny_classifier, make_attack("fgsm"), x, y, source_index=torch.arange(3))
    adv = build_adversarial_set(tiny_classifier, make_attack("fgsm"), x[:4], y[:4])
    with pytest.raises(InputError, match="missing.json"):
        AdversarialSet.load(tmp_path / "missing")
    adv.save(tmp_path / "a")
    tensors = tmp_path / "a.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:50])
    with pytest.raises(InputError, match="a.safetensors"):
        AdversarialSet.load(tmp_path / "a")
    tensors.unlink()
    with pytest.raises(InputError, match="a.safetensors.*does not exist"):
        AdversarialSet.load(tmp_path / "a")
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(InputError, match="a.json"):
        AdversarialSet.load(tmp_path / "a")
    adv.save(tmp_path / "b")
    config = json.loads((tmp_path / "b.json").read_text())
    (tmp_path / "b.json").write_text(json.dumps({**config, "n": 99}))
    with pytest.raises(InputError, match="holds 4 images"):
        AdversarialSet.load(tmp_path / "b")
    with pytest.raises(InputError, match="success must be a bool"):
        AdversarialSet(**{**{k: getattr(adv, k) for k in ("x_adv", "source_index", "y_true", "clean_pred", "adv_pred",
                                                          "l2", "linf")}, "success": adv.success.long()},
                       attack="fgsm", params={})
