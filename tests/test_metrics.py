import numpy as np
import pytest

from neuroprint.errors import InputError
from neuroprint.evaluation import metrics


def test_perfect_and_inverted_separation() -> None:
    clean, adv = np.arange(100.0), np.arange(100.0) + 1000
    assert metrics.auc(clean, adv) == 1.0
    assert metrics.auc(adv, clean) == 0.0
    assert metrics.tpr_at_fpr(clean, adv, 0.05) == 1.0
    assert metrics.fpr_at_tpr(clean, adv, 0.95) == 0.0


def test_tpr_at_fpr_uses_clean_quantile() -> None:
    clean = np.arange(100.0)  # 95th percentile = 94.05
    adv = np.array([94.0, 94.5, 96.0, 200.0])
    assert metrics.tpr_at_fpr(clean, adv, 0.05) == 0.75


def test_fpr_at_tpr_counts_clean_above_adv_quantile() -> None:
    adv = np.arange(100.0, 200.0)
    clean = np.array([0.0, 50.0, 150.0, 199.0])
    # threshold = 5th percentile of adv = 104.95 -> two clean scores above it
    assert metrics.fpr_at_tpr(clean, adv, 0.95) == 0.5


def test_detection_accuracy_is_balanced() -> None:
    clean, adv = np.array([0.0, 0.0, 2.0, 2.0]), np.array([2.0, 2.0])
    assert metrics.detection_accuracy(clean, adv, threshold=1.0) == pytest.approx(0.75)


def test_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    clean, adv = rng.normal(size=50), rng.normal(0.7, size=60)
    pairs = (adv[None, :] > clean[:, None]).mean() + 0.5 * (adv[None, :] == clean[:, None]).mean()
    assert metrics.auc(clean, adv) == pytest.approx(pairs)


@pytest.mark.parametrize("clean, adv", [([], [1.0]), ([1.0], []), ([np.nan], [1.0]), ([1.0], [np.inf])])
def test_bad_scores_raise(clean: list[float], adv: list[float]) -> None:
    with pytest.raises(InputError):
        metrics.auc(clean, adv)


def test_auc_interval_covers_the_true_auc_and_narrows_with_more_scores() -> None:
    rng = np.random.default_rng(1)
    true_auc = 0.7602  # P(N(1, 1) > N(0, 1)) = Phi(1 / sqrt(2))
    widths = []
    for n in (100, 1600):
        clean, adv = rng.normal(size=n), rng.normal(1.0, size=n)
        low, high = metrics.auc_interval(clean, adv, n_resamples=500)
        assert low < metrics.auc(clean, adv) < high
        assert low < true_auc < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # the width shrinks like 1 / sqrt(n)
    assert metrics.auc_interval(np.arange(50.0), np.arange(50.0) + 100) == (1.0, 1.0)
    assert metrics.auc_interval(clean, adv, n_resamples=200) == metrics.auc_interval(clean, adv, n_resamples=200)


@pytest.mark.parametrize("kwargs", [{"level": 1.0}, {"level": 0.0}, {"n_resamples": 0}])
def test_auc_interval_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(InputError):
        metrics.auc_interval([0.0, 1.0], [2.0, 3.0], **kwargs)


def test_paired_difference_interval_pairs_the_images() -> None:
    rng = np.random.default_rng(2)
    hard = rng.random(200) < 0.5  # per image: does the attack get through at all
    a = (hard & (rng.random(200) < 0.6)).astype(float)  # a design that stops 40% of those
    gap, low, high = metrics.paired_difference_interval(a, hard.astype(float))
    assert low < gap < high < 0 and gap == pytest.approx(a.mean() - hard.mean())
    # the same values unpaired (shuffled) give a wider interval: pairing removes the spread between images
    _, low_u, high_u = metrics.paired_difference_interval(a, rng.permutation(hard.astype(float)))
    assert high_u - low_u > high - low
    assert metrics.paired_difference_interval([0.5, 1.0], [0.5, 1.0]) == (0.0, 0.0, 0.0)
    with pytest.raises(InputError, match="equal lengths"):
        metrics.paired_difference_interval([1.0, 0.0], [1.0])
    with pytest.raises(InputError, match="NaN"):
        metrics.paired_difference_interval([1.0, np.nan], [1.0, 0.0])
