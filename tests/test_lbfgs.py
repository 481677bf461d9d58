"""L-BFGS attack (Szegedy et al. 2014): targeted success, the box, the search over c, seeding and bad input."""
from __future__ import annotations

import pytest
import torch

from neuroprint.attacks import make_attack
from neuroprint.attacks.lbfgs import LBFGS
from neuroprint.data import DataSplits
from neuroprint.errors import ConfigError, InputError
from neuroprint.models import Classifier


@pytest.fixture(scope="module")
def batch(tiny_classifier: Classifier, digits: DataSplits) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits.test.x, digits.test.y
    keep = tiny_classifier.predict(x) == y
    return x[keep][:24].clone(), y[keep][:24].clone()


def test_lbfgs_succeeds_inside_the_box_with_small_perturbations(tiny_classifier: Classifier, batch) -> None:  # type: ignore[no-untyped-def]
    x, y = batch
    result = LBFGS(search_steps=4, max_iter=50)(tiny_classifier, x, y)
    assert result.success_rate >= 0.9
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    assert float(result.l2[result.success].mean()) < float(make_attack("fgsm")(tiny_classifier, x, y).l2.mean())
    failed = ~result.success
    assert torch.equal(result.x_adv[failed], x[failed])  # a failure is returned unchanged


def test_lbfgs_search_over_c_shrinks_the_perturbation(tiny_classifier: Classifier, batch) -> None:  # type: ignore[no-untyped-def]
    x, y = batch
    coarse = LBFGS(initial_const=100.0, search_steps=1, max_iter=50)(tiny_classifier, x, y)
    searched = LBFGS(initial_const=100.0, search_steps=5, max_iter=50)(tiny_classifier, x, y)
    both = coarse.success & searched.success
    assert bool(both.any()) and bool((searched.l2[both] <= coarse.l2[both] + 1e-6).all())
    assert float(searched.l2[both].mean()) < float(coarse.l2[both].mean())


def test_lbfgs_respects_other_bounds_and_is_seeded(tiny_classifier: Classifier, batch) -> None:  # type: ignore[no-untyped-def]
    x, y = batch
    wide = Classifier(tiny_classifier.module, bounds=(0.0, 2.0), mean=(tiny_classifier.mean * 2).flatten().tolist(),
                      std=(tiny_classifier.std * 2).flatten().tolist())
    result = LBFGS(search_steps=3, max_iter=30)(wide, x * 2, y)
    assert float(result.x_adv.max()) <= 2.0 and float(result.x_adv.min()) >= 0.0 and result.success_rate >= 0.9
    a = LBFGS(search_steps=1, max_iter=10, random_state=1)(tiny_classifier, x[:6], y[:6]).x_adv
    b = LBFGS(search_steps=1, max_iter=10, random_state=1)(tiny_classifier, x[:6], y[:6]).x_adv
    assert torch.equal(a, b)


def test_lbfgs_bad_config_and_input(tiny_classifier: Classifier, batch) -> None:  # type: ignore[no-untyped-def]
    x, y = batch
    for spec, match in (("lbfgs:initial_const=0", "initial_const"), ("lbfgs:search_steps=0", "search_steps"),
                        ("lbfgs:max_iter=1.5", "max_iter"), ("lbfgs:random_state=-1", "random_state")):
        with pytest.raises(ConfigError, match=match):
            make_attack(spec)
    with pytest.raises(InputError):
        LBFGS()(tiny_classifier, x * 3, y)
    with pytest.raises(InputError):
        LBFGS()(tiny_classifier, x, y[:3])
