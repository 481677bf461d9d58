"""The extraction attacks of the ownership study: each runs on a tiny model, talks to the source only through the
API its threat model allows (counted queries, never the weights), and bad parameters give one-line errors."""
from __future__ import annotations

import pytest
import torch

from neuroprint.data import DataSplits
from neuroprint.errors import ConfigError
from neuroprint.models.checkpoint import build_classifier
from neuroprint.models.classifier import Classifier
from neuroprint.ownership.extraction import merged_task, soften, transfer_images, with_new_head
from neuroprint.ownership.removal import make_removal
from neuroprint.ownership.source_api import SourceAPI

SMALL = "architecture=small-cnn,lr=0.003"


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[torch.Tensor]]:
    """Every batch of images the source API answers, by what it answered (labels or probabilities)."""
    log: dict[str, list[torch.Tensor]] = {"labels": [], "probabilities": []}
    for kind, batches in log.items():
        answer = getattr(SourceAPI, kind)

        def spy(self: SourceAPI, x: torch.Tensor, *args: object, batches: list[torch.Tensor] = batches,
                answer: object = answer) -> object:
            batches.append(x.clone())
            return answer(self, x, *args)  # type: ignore[operator]

        monkeypatch.setattr(SourceAPI, kind, spy)
    return log


@pytest.mark.parametrize(("spec", "access", "min_accuracy"), [
    (f"distill:temperature=4,epochs=15,{SMALL}", "probabilities", 0.6),
    (f"jacobian:seed_images=40,rounds=3,step=0.1,epochs=10,{SMALL}", "labels", 0.3),
    (f"knockoff:transfer=digits,budget=600,epochs=15,{SMALL}", "probabilities", 0.3),
    (f"transfer:pretrain_epochs=10,epochs=3,{SMALL}", "labels", 0.6),
])
def test_extraction_attacks_work_through_the_api_only(spec: str, access: str, min_accuracy: float,
                                                      digits: DataSplits, tiny_classifier: Classifier,
                                                      sent: dict[str, list[torch.Tensor]]) -> None:
    removal = make_removal(spec)
    before = {k: v.clone() for k, v in tiny_classifier.state_dict().items()}
    stolen = removal.run(tiny_classifier, digits)
    assert all(torch.equal(v, tiny_classifier.state_dict()[k]) for k, v in before.items())  # source untouched
    assert removal.access == access and removal.threat
    assert removal.queries == sum(len(x) for batches in sent.values() for x in batches) > 0
    if access == "labels":
        assert not sent["probabilities"]
    assert float((stolen.predict(digits.test.x) == digits.test.y).float().mean()) > min_accuracy


def test_query_budgets_are_what_the_threat_model_says(digits: DataSplits, tiny_classifier: Classifier,
                                                      sent: dict[str, list[torch.Tensor]]) -> None:
    jacobian = make_removal(f"jacobian:seed_images=20,rounds=2,epochs=1,{SMALL}")
    jacobian.run(tiny_classifier, digits)
    assert jacobian.queries == 20 * 2**2 + len(digits.val)  # the grown set, and the attacker's validation images
    sent["labels"].clear()
    knockoff = make_removal(f"knockoff:transfer=noise,budget=100,epochs=1,{SMALL}")
    knockoff.run(tiny_classifier, digits)
    assert knockoff.queries == 100 and not sent["labels"]
    (images,) = sent["probabilities"]
    task = torch.cat([digits.train.x, digits.val.x, digits.test.x]).flatten(1)
    assert torch.cdist(images.flatten(1), task).min() > 0.5  # none of the task's own images was sent


def test_the_labels_api_refuses_probabilities(tiny_classifier: Classifier, digits: DataSplits) -> None:
    api = SourceAPI(tiny_classifier, "labels")
    assert torch.equal(api.labels(digits.test.x[:5]), tiny_classifier.predict(digits.test.x[:5])) and api.queries == 5
    with pytest.raises(ConfigError, match="returns top-1 labels only"):
        api.probabilities(digits.test.x[:5])
    with pytest.raises(ConfigError, match="unknown API outputs 'logits'; valid: labels, probabilities"):
        SourceAPI(tiny_classifier, "logits")


def test_softening_and_transfer_pieces(digits: DataSplits, tiny_classifier: Classifier) -> None:
    p = torch.tensor([[0.7, 0.2, 0.1]])
    assert torch.allclose(soften(p, 1.0), p) and torch.allclose(soften(p, 1e3), torch.full((1, 3), 1 / 3), atol=1e-3)
    assert transfer_images("digits", 7, (3, 28, 28), 0).shape == (7, 3, 28, 28)
    task = merged_task(digits)
    assert task.num_classes == 5 and set(task.train.y.tolist()) == {0, 1, 2, 3, 4}
    pretrained = build_classifier("small-cnn", task, seed=2)
    model = with_new_head(pretrained, "small-cnn", digits, seed=3)
    kept = {k for k, v in model.state_dict().items() if k in pretrained.state_dict()
            and torch.equal(v, pretrained.state_dict()[k])}
    assert "module.conv1.0.weight" in kept and "module.logits.weight" not in kept and model.num_classes == 10


@pytest.mark.parametrize(("spec", "match"), [
    ("distill:temperature=0", "temperature must be"),
    ("knockoff:transfer=cifar", "transfer must be one of digits, noise"),
    ("jacobian:seed_images=1", "seed_images must be an integer >= 2"),
    ("transfer:architecture=nope", "unknown model"),
    ("knockoff:budget=5", "budget must be an integer >= 10"),
])
def test_bad_extraction_parameters_give_one_line_errors(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_removal(spec)


def test_knockoff_budget_beyond_the_transfer_set(digits: DataSplits, tiny_classifier: Classifier) -> None:
    with pytest.raises(ConfigError, match="budget=5000 exceeds the 1797 images of the digits transfer set"):
        make_removal(f"knockoff:budget=5000,{SMALL}").run(tiny_classifier, digits)
