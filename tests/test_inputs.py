"""What the protocol fits detectors on: shared activations give the image path's detector, are extracted once per
spec, and a rank's block of a sharded extraction is its share of the batches (even when it has none)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroprint.attacks import make_attack
from neuroprint.data import DataSplits
from neuroprint.detectors import make_detector
from neuroprint.distributed import Ranks
from neuroprint.errors import ConfigError
from neuroprint.evaluation import inputs
from neuroprint.features import extract
from neuroprint.models import Classifier


class _Alone(Ranks):
    """One rank of a larger job that gathers only its own block (no process group): what a rank extracts."""

    def gather_rows(self, part: torch.Tensor) -> torch.Tensor:
        return part


@pytest.mark.parametrize(("name", "params"), [("mahalanobis", {"noise_magnitudes": [0.0]}),
                                              ("lid", {"batch_size": 50}),
                                              ("bank", {"sampling": "all"})])
def test_shared_activations_fit_the_detector_the_images_fit(name: str, params: dict[str, object],
                                                             tiny_classifier: Classifier, digits: DataSplits) -> None:
    x, y = digits.val.x[:120], digits.val.y[:120]
    x_adv = make_attack("fgsm:eps=0.3")(tiny_classifier, x, y).x_adv
    on_images, on_features = (make_detector(name, random_state=0, **params) for _ in range(2))
    on_images.fit(tiny_classifier, x, y, x_adv).calibrate(x, 0.05)
    shared = inputs.SharedActivations(tiny_classifier, batch_size=32, ranks=Ranks())
    clean, adv = shared.input(on_features, "clean", x), shared.input(on_features, "adv", x_adv)
    assert clean.features is not None and clean.seconds > 0
    inputs.fit(on_features, tiny_classifier, clean, y, adv)
    inputs.calibrate(on_features, clean, 0.05)
    test = digits.test.x[:50]
    np.testing.assert_allclose(inputs.scores(on_features, shared.input(on_features, "test", test)),
                               inputs.scores(on_images, inputs.DetectorInput(test)), rtol=1e-4, atol=1e-5)
    assert on_features.threshold_ == pytest.approx(on_images.threshold_, rel=1e-4, abs=1e-5)


def test_activations_are_extracted_once_per_spec_and_set(tiny_classifier: Classifier, digits: DataSplits) -> None:
    shared = inputs.SharedActivations(tiny_classifier, batch_size=32, ranks=Ranks())
    x = digits.val.x[:40]
    first = shared.input(make_detector("mahalanobis", noise_magnitudes=[0.0]), "clean", x)
    assert shared.input(make_detector("distance-space"), "clean", x).features is first.features  # same layers, avg
    assert shared.input(make_detector("lid", pooling="stats"), "clean", x).features is not first.features
    assert shared.input(make_detector("mahalanobis"), "clean", x).features is None  # pre-processes the images
    both = inputs.concat([first, first])
    assert both.features is not None and len(both.features) == 80 and both.seconds == 2 * first.seconds


@pytest.mark.parametrize(("rank", "world", "n", "start", "rows"), [(0, 2, 70, 0, 32), (1, 2, 70, 32, 38),
                                                                   (0, 3, 20, 0, 0)])
def test_a_rank_extracts_its_block_of_batches(rank: int, world: int, n: int, start: int, rows: int,
                                              tiny_classifier: Classifier, digits: DataSplits) -> None:
    """70 images are 3 batches of 32 (rank 0 runs one, rank 1 two); 20 images are one batch, which rank 0 of 3
    does not run."""
    x = digits.test.x[:n]
    part = extract(tiny_classifier, x, pooling="avg", batch_size=32, ranks=_Alone(rank, world))
    whole = extract(tiny_classifier, x, pooling="avg", batch_size=32)
    assert len(part) == rows and part.layer_names == whole.layer_names
    for name in whole:
        assert part[name].shape == (rows, whole[name].shape[1])
        assert torch.equal(part[name], whole[name][start : start + rows])
    with pytest.raises(ConfigError, match="memmap_dir"):
        extract(tiny_classifier, x, batch_size=32, memmap_dir="unused", ranks=_Alone(rank, world))
