"""The evaluation protocol's honesty rules: disjoint sources, correct clean images only, caching by config."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neuroprint.data import DataSplits
from neuroprint.errors import ConfigError, InputError
from neuroprint.evaluation import metrics
from neuroprint.evaluation.protocol import N_EXAMPLES, EvalConfig, cached_adversarial_set, run_evaluation
from neuroprint.evaluation.splits import correct_clean, draw_sources, held_out_index
from neuroprint.models import Classifier
from neuroprint.models.training import TrainConfig


def test_sources_are_disjoint_halves_and_seeded() -> None:
    clean, attacked = draw_sources(1000, 300, seed=3)
    assert len(clean) == 150 and len(attacked) == 150
    assert not set(clean.tolist()) & set(attacked.tolist())
    again = draw_sources(1000, 300, seed=3)
    assert torch.equal(clean, again[0]) and torch.equal(attacked, again[1])
    assert not torch.equal(clean, draw_sources(1000, 300, seed=4)[0])
    assert len(torch.cat(draw_sources(10, 300, seed=0))) == 10  # capped at what the split has
    with pytest.raises(InputError, match="only 3 images"):
        draw_sources(3, 10, seed=0)


def test_held_out_index_is_every_image_the_draw_left() -> None:
    clean, attacked = draw_sources(1000, 300, seed=3)
    left = held_out_index(1000, 300, seed=3)
    assert len(left) == 700 and not set(left.tolist()) & set(torch.cat([clean, attacked]).tolist())
    with pytest.raises(InputError, match="none are left to attack"):
        held_out_index(300, 300, seed=3)


def test_only_correctly_classified_clean_images_count(tiny_classifier: Classifier, digits: DataSplits) -> None:
    index = torch.arange(len(digits.test))
    kept = correct_clean(tiny_classifier, digits.test, index)
    assert 0 < len(kept) < len(index)  # the tiny model makes some mistakes
    assert torch.equal(tiny_classifier.predict(kept.x), kept.y)


def test_adversarial_sets_are_cached_by_configuration(
    tiny_classifier: Classifier, digits: DataSplits, tmp_path: Path
) -> None:
    index = torch.arange(30)
    args = (tiny_classifier, "tiny", "pgd:steps=5", digits.val, "val", index, tmp_path, 64, False)
    first, seconds = cached_adversarial_set(*args)
    assert seconds > 0 and set(first.source_index.tolist()) <= set(index.tolist())
    again, cached_seconds = cached_adversarial_set(*args)
    assert cached_seconds == 0.0 and torch.equal(first.x_adv, again.x_adv)
    _, other_seconds = cached_adversarial_set(tiny_classifier, "tiny", "pgd:steps=6", digits.val, "val", index,
                                                  tmp_path, 64, False)
    assert other_seconds > 0  # another parameter is another cache entry
    assert len(list((tmp_path / "adv" / "tiny").glob("*.json"))) == 2


def test_config_rejects_bad_names_and_sizes_before_any_work() -> None:
    with pytest.raises(ConfigError, match="unknown detector 'nope'"):
        EvalConfig(dataset="digits", detectors=["nope"])
    with pytest.raises(ConfigError, match="unknown parameter"):
        EvalConfig(dataset="digits", detectors=["bank:dd=3"])
    with pytest.raises(ConfigError, match="n_fit must be >= 4"):
        EvalConfig(dataset="digits", n_fit=2)
    with pytest.raises(ConfigError, match="at least one attack"):
        EvalConfig(dataset="digits", attacks=[])
    assert EvalConfig(detectors=["bank:random_state=7"], seed=1).detector("bank:random_state=7").random_state == 7
    assert EvalConfig(seed=1).detector("bank").random_state == 1


def test_fit_attacks_only_are_run_on_the_validation_split(tmp_path: Path) -> None:
    config = EvalConfig(dataset="digits", model="small-cnn", train=TrainConfig(epochs=2, lr_drop_epoch=1),
                        attacks=["fgsm", "pgd:eps=0.3,steps=5"], fit_attacks=["fgsm"], detectors=["mahalanobis"],
                        n_fit=200, n_test=200, cache_dir=tmp_path)
    report = run_evaluation(config, progress=False, log=lambda _: None)
    ran = sorted((a.spec, a.split) for a in report.attacks)
    assert ran == [("fgsm", "test"), ("fgsm", "val"), ("pgd:eps=0.3,steps=5", "test")]  # no unread validation set
    assert [(r.attack, r.fit_attacks) for r in report.results] == [("fgsm", ["fgsm"]), ("pgd:eps=0.3,steps=5", ["fgsm"])]



def test_results_keep_the_scores_their_metrics_came_from(guard_checkpoint: Path, tmp_path: Path) -> None:
    config = EvalConfig(dataset="digits", model=str(guard_checkpoint), attacks=["fgsm"], detectors=["mahalanobis"],
                        n_fit=240, n_test=120, cache_dir=tmp_path)
    report = run_evaluation(config, progress=False, log=lambda _: None)
    (result,) = report.results
    assert result.error is None and len(result.clean_scores) == result.n_clean > 0
    assert len(result.adv_scores) == result.n_adv > 0
    assert metrics.auc(result.clean_scores, result.adv_scores) == pytest.approx(result.auc, abs=1e-4)
    flagged = sum(s > result.threshold for s in result.adv_scores) / result.n_adv  # threshold set on validation
    assert result.detection_accuracy == pytest.approx(
        (sum(s <= result.threshold for s in result.clean_scores) / result.n_clean + flagged) / 2, abs=1e-3)
    assert len(report.examples) == N_EXAMPLES and all(e.attack == "fgsm" for e in report.examples)
    assert [e.source_index for e in report.examples] == sorted(e.source_index for e in report.examples)
    assert len(result.example_scores["clean"]) == len(result.example_scores["adversarial"]) == N_EXAMPLES
