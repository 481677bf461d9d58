"""Ownership: conferrability, CEM constraints, query-set files, verification (local and HTTP), IPGuard, removals."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from torch import nn

from neuroprint.data import DataSplits
from neuroprint.errors import ConfigError, InputError
from neuroprint.models import Classifier, build_model
from neuroprint.models.training import TrainConfig, train
from neuroprint.ownership import (
    CEMConfig,
    HTTPSuspect,
    IPGuardConfig,
    LocalSuspect,
    QuerySet,
    cae_accuracy,
    conferrability,
    experiment,
    generate_cem_queries,
    generate_ipguard_queries,
    make_removal,
    run_cem,
    transfer,
    verify,
)
from neuroprint.ownership.experiment import (
    ATTACKER_SEED,
    LOCAL_SURROGATE_SEED,
    ModelCache,
    OwnershipConfig,
    attacker_removal,
    run_ownership,
    split_owner_data,
)
from neuroprint.ownership.ipguard import ipguard_loss
from neuroprint.ownership.queries import select_balanced
from neuroprint.ownership.removal import source_labels
from neuroprint.ownership.report import markdown_table, write_outputs
from neuroprint.ownership.scoring import SuspectResult, auc_against_references


def _small(digits: DataSplits, seed: int, labels_from: Classifier | None = None) -> Classifier:
    torch.manual_seed(seed)
    clf = Classifier(build_model("small-cnn", in_channels=1, width=8), mean=digits.mean, std=digits.std)
    split = digits.train if labels_from is None else source_labels(labels_from, digits.train)
    train(clf, split, digits.val, TrainConfig(epochs=12, batch_size=64, lr=3e-3, lr_drop_epoch=10, seed=seed),
          progress=False)
    return clf


@pytest.fixture(scope="module")
def local_models(digits: DataSplits, tiny_classifier: Classifier) -> tuple[list[Classifier], list[Classifier]]:
    surrogates = [_small(digits, 1, tiny_classifier), _small(digits, 2, tiny_classifier)]
    references = [_small(digits, 11), _small(digits, 12)]
    return surrogates, references


def test_transfer_and_conferrability_on_hand_made_predictions() -> None:
    target = torch.tensor([3, 3, 3, 5])
    surrogates = torch.tensor([[3, 3, 1, 5], [3, 3, 1, 5], [3, 0, 1, 5], [3, 0, 1, 2]])  # 4 models x 4 inputs
    references = torch.tensor([[1, 3, 3, 5], [2, 3, 3, 5]])
    assert transfer(surrogates, target).tolist() == [1.0, 0.5, 0.0, 0.75]
    assert transfer(references, target).tolist() == [0.0, 1.0, 1.0, 1.0]
    assert conferrability(surrogates, references, target).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert conferrability(surrogates[:, :1], references[:1, :1] * 0 + 3, target[:1]).tolist() == [0.0]


def test_transfer_rejects_bad_shapes() -> None:
    with pytest.raises(InputError, match="predictions must be"):
        transfer(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(InputError, match="at least one model"):
        transfer(torch.zeros(0, 2, dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_cem_stays_in_the_eps_ball_and_the_pixel_box(digits: DataSplits, tiny_classifier: Classifier,
                                                      local_models: tuple[list[Classifier], list[Classifier]]) -> None:
    surrogates, references = local_models
    x = digits.test.x[:40]
    x_adv = run_cem(tiny_classifier, surrogates, references, x, CEMConfig(eps=0.1, steps=30, lr=0.05), progress=False)
    assert x_adv.shape == x.shape
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float((x_adv - x).abs().max()) > 0.09  # the optimiser moved to the edge of the ball somewhere
    again = run_cem(tiny_classifier, surrogates, references, x, CEMConfig(eps=0.1, steps=30, lr=0.05), progress=False)
    assert torch.equal(x_adv, again)  # seeded member dropout: reproducible


def test_cem_config_validates_and_offers_the_sensitivity_weights() -> None:
    weights = CEMConfig.sensitivity_weights(eps=0.2)
    assert (weights.alpha, weights.beta, weights.gamma, weights.eps) == (1.0, 0.1, 0.1, 0.2)
    for bad in ({"eps": 0.0}, {"steps": 0}, {"dropout": 1.0}, {"beta": -1.0}):
        with pytest.raises(ConfigError):
            CEMConfig(**bad)  # type: ignore[arg-type]


def test_cem_queries_are_adversarial_balanced_and_round_trips(
    tmp_path, digits: DataSplits, tiny_classifier: Classifier, local_models: tuple[list[Classifier], list[Classifier]]
) -> None:
    surrogates, references = local_models
    config = CEMConfig(eps=0.3, steps=60, lr=0.05, beta=10.0)
    queries = generate_cem_queries(tiny_classifier, surrogates, references, digits.val.x, digits.val.y, size=30,
                                   tau=0.5, config=config, progress=False)
    assert 0 < len(queries) <= 30
    assert torch.equal(tiny_classifier.predict(queries.x), queries.target)  # the target is the source's label
    assert queries.meta["n_passed"] >= len(queries) and queries.meta["local_conferrability_mean"] >= 0.5
    queries.save(tmp_path / "queries")
    loaded = QuerySet.load(tmp_path / "queries")
    assert torch.equal(loaded.x, queries.x) and torch.equal(loaded.target, queries.target) and loaded.method == "cem"
    assert verify(LocalSuspect(tiny_classifier), loaded, rho=0.9).is_surrogate


def test_generation_that_keeps_nothing_says_why(digits: DataSplits, tiny_classifier: Classifier,
                                                local_models: tuple[list[Classifier], list[Classifier]]) -> None:
    surrogates, references = local_models
    with pytest.raises(InputError, match="no CEM example reached conferrability"):
        generate_cem_queries(tiny_classifier, surrogates, references, digits.val.x[:8], digits.val.y[:8],
                             tau=1.0, config=CEMConfig(eps=0.01, steps=2), progress=False)


def test_select_balanced_takes_turns_across_classes() -> None:
    target = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    score = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3, 0.2, 0.8])
    chosen = select_balanced(target, score, size=5, num_classes=3)
    assert chosen.tolist() == [1, 3, 4, 5, 6]  # best of each class first, then the next best of classes 0 and 2


def test_empty_or_bad_query_sets_are_rejected(tmp_path) -> None:
    with pytest.raises(InputError, match="empty"):
        QuerySet(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), "cem")
    with pytest.raises(InputError, match="int64"):
        QuerySet(torch.zeros(2, 1, 8, 8), torch.zeros(2), "cem")
    with pytest.raises(InputError, match="does not exist"):
        QuerySet.load(tmp_path / "missing")
    QuerySet(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), "cem").save(tmp_path / "queries")
    (tmp_path / "queries" / "queries.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="cannot read query-set tensors"):
        QuerySet.load(tmp_path / "queries")


def test_verification_rejects_a_suspect_that_cannot_take_the_inputs(tiny_classifier: Classifier) -> None:
    lenet = Classifier(build_model("lenet5"))  # expects 28 x 28 inputs
    queries = QuerySet(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), "cem")
    with pytest.raises(InputError, match="cannot take inputs of shape"):
        cae_accuracy(LocalSuspect(lenet), queries)
    with pytest.raises(ConfigError, match="rho"):
        verify(LocalSuspect(tiny_classifier), queries, rho=1.5)


@pytest.fixture()
def http_suspect(tiny_classifier: Classifier) -> Iterator[str]:
    """A local HTTP endpoint serving `tiny_classifier`'s labels for JSON batches of 8 x 8 digits."""
    queried: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            x = torch.tensor(body["inputs"], dtype=torch.float32)
            if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
                self._send(400, {"error": f"expected images [N, 1, 8, 8], got {list(x.shape)}"})
                return
            queried.append(len(x))
            self._send(200, {"labels": tiny_classifier.predict(x).tolist()})

        def _send(self, code: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/predict"
    finally:
        server.shutdown()
        server.server_close()
    assert all(n <= 16 for n in queried)  # batches respect the client's batch size


def test_http_suspect_matches_the_local_verdict(http_suspect: str, digits: DataSplits,
                                                tiny_classifier: Classifier) -> None:
    x = digits.test.x[:50]
    queries = QuerySet(x, tiny_classifier.predict(x), "cem")
    remote = verify(HTTPSuspect(http_suspect, batch_size=16), queries)
    local = verify(LocalSuspect(tiny_classifier), queries)
    assert remote == local and remote.cae_acc == 1.0
    flipped = QuerySet(x, (queries.target + 1) % 10, "cem")
    assert verify(HTTPSuspect(http_suspect, batch_size=16), flipped).cae_acc == 0.0


def test_http_suspect_errors_are_one_line(http_suspect: str) -> None:
    wrong_shape = QuerySet(torch.rand(3, 1, 28, 28), torch.zeros(3, dtype=torch.long), "cem")
    with pytest.raises(InputError, match="answered HTTP 400.*1, 8, 8"):
        cae_accuracy(HTTPSuspect(http_suspect), wrong_shape)
    with pytest.raises(InputError, match="cannot reach"):
        cae_accuracy(HTTPSuspect("http://127.0.0.1:9/none", timeout=2), wrong_shape)
    with pytest.raises(InputError, match="http://"):
        HTTPSuspect("ftp://example.org")


def test_ipguard_loss_is_zero_exactly_in_the_wanted_region() -> None:
    logits = torch.tensor([[0.0, 2.0, 3.0], [0.0, 2.0, 2.2], [5.0, 2.0, 3.0]])
    i, j = torch.tensor([1, 1, 1]), torch.tensor([2, 2, 2])
    loss = ipguard_loss(logits, i, j, k=0.5)
    assert loss[0] == 0  # j leads i by 1 >= k, i beats the rest
    assert loss[1] == pytest.approx(0.3)  # margin 0.2 < k
    assert loss[2] == pytest.approx(3.0)  # class 0 beats i by 3


def test_ipguard_queries_carry_the_source_label(digits: DataSplits, tiny_classifier: Classifier) -> None:
    queries = generate_ipguard_queries(tiny_classifier, digits.val.x[:40], size=20,
                                       config=IPGuardConfig(k=0.2, steps=100, lr=0.05), progress=False)
    assert 0 < len(queries) <= 20 and queries.method == "ipguard"
    assert cae_accuracy(LocalSuspect(tiny_classifier), queries) == 1.0


@pytest.mark.parametrize("spec", [
    "ftll:epochs=3", "ftal:epochs=3", "rtll:epochs=10,lr=0.01", "rtal:epochs=10,lr=0.003",
    "prune:rate=0.7,rounds=2,epochs=2", "retrain:architecture=small-cnn,epochs=15,lr=0.003",
    "adv-train:architecture=small-cnn,eps=0.1,steps=2,epochs=15,lr=0.003",
    "ground-truth:share=0.5,architecture=small-cnn,epochs=15,lr=0.003",
])
def test_removal_attacks_derive_a_new_working_model(spec: str, digits: DataSplits, tiny_classifier: Classifier) -> None:
    removal = make_removal(spec)
    before = {k: v.clone() for k, v in tiny_classifier.state_dict().items()}
    stolen = removal.run(tiny_classifier, digits)
    assert all(torch.equal(v, tiny_classifier.state_dict()[k]) for k, v in before.items())  # source untouched
    assert stolen is not tiny_classifier
    assert float((stolen.predict(digits.test.x) == digits.test.y).float().mean()) > 0.3


def test_last_layer_fine_tuning_changes_only_the_last_layer(digits: DataSplits, tiny_classifier: Classifier) -> None:
    stolen = make_removal("ftll:epochs=1,lr=0.01").run(tiny_classifier, digits)
    changed = {k for k, v in stolen.state_dict().items() if not torch.equal(v, tiny_classifier.state_dict()[k])}
    assert changed == {"module.logits.weight", "module.logits.bias"}
    assert all(p.requires_grad for p in stolen.parameters())


def test_pruning_reaches_the_requested_sparsity(digits: DataSplits, tiny_classifier: Classifier) -> None:
    stolen = make_removal("prune:rate=0.8,rounds=2,epochs=1").run(tiny_classifier, digits)
    weights = [m.weight for m in stolen.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for w in weights:
        assert float((w == 0).float().mean()) == pytest.approx(0.8, abs=0.02)


def test_bad_removal_specs_name_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown removal attack 'bogus'; valid: adv-train"):
        make_removal("bogus")
    with pytest.raises(ConfigError, match="rate must be"):
        make_removal("prune:rate=1.0")
    with pytest.raises(ConfigError, match="unknown model"):
        make_removal("retrain:architecture=nope")


def test_owner_data_halves_are_disjoint(digits: DataSplits) -> None:
    defender, attacker = split_owner_data(digits, seed=0)
    rows = {tuple(r) for r in defender.train.x.flatten(1).tolist()}
    overlap = sum(tuple(r) in rows for r in torch.cat([attacker.train.x, attacker.val.x]).flatten(1).tolist())
    assert overlap <= 2  # digits holds a few duplicate images; the index halves are disjoint
    assert len(defender.train) + len(attacker.train) + len(attacker.val) == len(digits.train)
    assert defender.val is digits.val and attacker.test is digits.test


def test_the_experiment_runs_end_to_end_and_is_cached(tmp_path) -> None:
    config = OwnershipConfig(
        dataset="digits", architecture="small-cnn", epochs=25, n_surrogates=2, n_references=2, size=20,
        n_candidates=60, tau=0.0, cem=CEMConfig.sensitivity_weights(eps=0.3, steps=20, lr=0.05),
        ipguard=IPGuardConfig(k=0.2, steps=60, lr=0.05),
        removals=["ftal:epochs=2,lr=0.001", "retrain:architecture=small-cnn,epochs=25,lr=0.003"],
        reference_architectures=["small-cnn", "small-cnn"], max_accuracy_drop=0.5, cache_dir=tmp_path / "cache",
        compare_eps=[0.3], n_compare=30,
    )
    logs: list[str] = []
    report = run_ownership(config, progress=False, log=logs.append)
    assert [s.kind for s in report.suspects] == ["surrogate", "surrogate", "reference", "reference"]
    assert set(report.auc) == {"cem", "ipguard"} and all(0 <= v <= 1 for v in report.auc.values())
    assert report.suspects[0].cae_acc["cem"] >= report.suspects[-1].cae_acc["cem"]  # fine-tuned copy keeps more
    assert [(r["attack"], r["eps"]) for r in report.conferrability] == [("cem", 0.3), ("fgsm", 0.3), ("pgd", 0.3),
                                                                         ("cw", 0.3)]
    assert all(r["surrogates"] == 1 and r["references"] == 2 for r in report.conferrability)
    assert all(0 <= r["conferrability"] <= 1 for r in report.conferrability if r["n"])
    table = markdown_table(report)
    assert "ftal" in table and "ROC AUC" in table and "Verdicts at rho" in table and "modification" in table
    paths = write_outputs(report, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["provenance"]["git"]
    logs.clear()
    again = run_ownership(config, progress=False, log=logs.append)
    assert not any(line.startswith("trained") for line in logs)  # every model came from the cache
    assert [s.cae_acc for s in again.suspects] == [s.cae_acc for s in report.suspects]
    assert json.dumps(again.conferrability) == json.dumps(report.conferrability)  # NaN-safe: read from the cache
    assert len(list((tmp_path / "cache" / "comparisons").iterdir())) == 1


def test_auc_against_references_counts_ties_half() -> None:
    def suspect(kind: str, value: float) -> SuspectResult:
        return SuspectResult("m", kind, "", 0.9, True, {"cem": value}, 0.0)

    suspects = [suspect("reference", 0.2), suspect("reference", 0.5), suspect("reference", 0.9)]
    assert auc_against_references(suspect("surrogate", 0.5), suspects, "cem") == pytest.approx(0.5)
    assert auc_against_references(suspect("surrogate", 1.0), suspects, "cem") == 1.0


def test_attackers_never_reuse_the_source_seed() -> None:
    assert attacker_removal("retrain", 2).params["seed"] == ATTACKER_SEED + 2
    assert attacker_removal("retrain", 2, seed_base=1000).params["seed"] == 1000 + ATTACKER_SEED + 2
    assert attacker_removal("retrain:seed=5", 2).params["seed"] == 5


def test_experiment_config_rejects_what_would_fail_late() -> None:
    with pytest.raises(ConfigError, match="compare_eps"):
        OwnershipConfig(compare_eps=[0.1], removals=["ftal"])
    with pytest.raises(ConfigError, match="compare_eps must be in"):
        OwnershipConfig(compare_eps=[1.5])
    with pytest.raises(ConfigError, match="unknown model"):
        OwnershipConfig(reference_architectures=["nope"])
    with pytest.raises(ConfigError, match="unknown removal attack"):
        OwnershipConfig(local_removals=["nope"])


def test_local_removals_add_cached_surrogates_with_their_own_seeds(tmp_path, digits: DataSplits,
                                                                   tiny_classifier: Classifier) -> None:
    """The defender's extra local surrogates: one per removal spec, derived from its own source on its own half,
    seeded after the retrained ones, and read back from the cache."""
    defender, _ = split_owner_data(digits, seed=0)
    logs: list[str] = []
    cache = ModelCache(tmp_path, logs.append)
    spec = "distill:temperature=2,architecture=small-cnn,epochs=25,lr=0.003"
    surrogates, references = experiment.local_models(tiny_classifier, {"source": "tiny"}, "small-cnn", defender, 1, 1,
                                                     3, cache, removals=[spec])
    assert len(surrogates) == 2 and len(references) == 1
    (extra,) = [m for m in cache.root.glob("models/local-surrogate-*") if "distill" in (m / "model.json").read_text()]
    assert f'"seed": {LOCAL_SURROGATE_SEED + 1}' in (extra / "model.json").read_text()
    agreement = (surrogates[1].predict(digits.test.x) == tiny_classifier.predict(digits.test.x)).float().mean()
    assert agreement > 0.5  # a working student of the source
    logs.clear()
    again, _ = experiment.local_models(tiny_classifier, {"source": "tiny"}, "small-cnn", defender, 1, 1, 3, cache,
                                       removals=[spec])
    assert not logs and torch.equal(again[1].predict(digits.test.x), surrogates[1].predict(digits.test.x))

