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
