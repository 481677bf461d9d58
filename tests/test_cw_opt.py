"""CW-Opt (Cohen et al. 2020, Eq. 2-3): runs against a fitted NNIF detector, stays in bounds, pulls the embedding
towards the clean image's most helpful training points."""
from __future__ import annotations

import pytest
import torch

from neuroprint.adaptive.cw_opt import CWOpt, logits_and_embedding
from neuroprint.data import DataSplits
from neuroprint.detectors.influence import forward_with_embedding
from neuroprint.detectors.nnif import NNIFDetector
from neuroprint.errors import NotFittedError
from neuroprint.models import Classifier


def test_cw_opt_fools_the_classifier_near_the_helpful_points(tiny_classifier: Classifier, digits: DataSplits) -> None:
    x, y = digits.val.x[:100], digits.val.y[:100]
    x_adv = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    detector = NNIFDetector(m_grid=[5], embedding_only=True).set_training_data(digits.train.x, digits.train.y)
    detector.fit(tiny_classifier, x, y, x_adv)
    xt, yt = digits.test.x[:12], digits.test.y[:12]
    plain = CWOpt(detector, c=10.0, lr=0.05, steps=100, m=1)  # m=1: the pull towards the helpful points is weak
    pulled = CWOpt(detector, c=10.0, lr=0.05, steps=100)
    result, result_pulled = plain(tiny_classifier, xt, yt), pulled(tiny_classifier, xt, yt)
    assert result.x_adv.shape == xt.shape and float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
    assert result.success_rate > 0.5
    logits, h, _ = forward_with_embedding(tiny_classifier, xt)
    helpful, _ = detector.influence_.top(h, logits, logits.argmax(1), detector.m_)
    targets = detector.influence_.train_a_[:, :-1][helpful]

    def pull(adv: torch.Tensor) -> float:
        with torch.no_grad():
            _, emb = logits_and_embedding(tiny_classifier, adv)
        return float((emb[:, None] - targets).abs().sum((1, 2)).mean())

    assert pull(result_pulled.x_adv) < pull(result.x_adv)


def test_cw_opt_needs_a_fitted_detector() -> None:
    with pytest.raises(NotFittedError):
        CWOpt(NNIFDetector())
