"""The ownership experiment of Lukas et al. 2021 (arXiv 1912.00888, section 6) on one dataset, end to end.

The training images are cut in two disjoint halves: the defender's and the attacker's. The defender trains the
source model and, for CEM, S local surrogates (on the source's labels) and R local references (on true labels),
all on its half, and generates a CEM and an IPGuard query set from its validation images. The attacker derives
unseen surrogates from the source with every removal attack on its own half; unseen references are trained there
by independent parties on true labels, with several architectures. Every suspect gets its test accuracy and its
CAEAcc on both query sets; ROC AUC measures how well CAEAcc separates surrogates from references (only models
within `max_accuracy_drop` of the source's accuracy count: an attack that destroys the model removes nothing, and
a weak reference would be an easy negative). Each model role has its own seed range (`*_SEED`), so no two models
share initial weights. Optionally, the conferrability of CEM vs FGSM/PGD/CW examples on the unseen models trained
from scratch is compared per eps.
Models and query sets are cached by a hash of everything that decides them.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from neuroprint.checks import check_eps, check_float, check_int
from neuroprint.data import load_dataset
from neuroprint.data.base import DataSplits, Split
from neuroprint.errors import ConfigError, InputError
from neuroprint.io import git_commit, read_json, versions, write_json
from neuroprint.models.checkpoint import architecture_kwargs, load_checkpoint, save_checkpoint
from neuroprint.models.classifier import Classifier
from neuroprint.models.training import accuracy
from neuroprint.ownership import settings
from neuroprint.ownership.cem import CEMConfig
from neuroprint.ownership.comparison import compare_conferrability, unseen_models
from neuroprint.ownership.generate import generate_cem_queries
from neuroprint.ownership.ipguard import IPGuardConfig, generate_ipguard_queries
from neuroprint.ownership.queries import QuerySet
from neuroprint.ownership.removal import REMOVALS, Removal, make_removal, source_labels, train_from_scratch
from neuroprint.ownership.scoring import FROM_SCRATCH, SuspectResult, suspects_auc
from neuroprint.ownership.verify import LocalSuspect, cae_accuracy
from neuroprint.registry import MODELS
from neuroprint.specs import parse_spec

Log = Callable[[str], None]

DEFAULT_REMOVALS = (
    "ftll", "ftal", "rtll", "rtal", "prune:rate=0.7", "prune:rate=0.8", "prune:rate=0.9",
    "retrain:architecture=lenet5", "retrain:architecture=mnist-net", "adv-train:eps=0.2,alpha=0.04",
    "adv-train:eps=0.3,epochs=8", "ground-truth:share=0.5",
    "ground-truth:share=0.6", "ground-truth:share=0.7", "ground-truth:share=0.8",
    "distill:temperature=1", "distill:temperature=4", "jacobian", "knockoff:transfer=digits",
    "knockoff:transfer=noise,budget=20000", "transfer",
)
DEFAULT_REFERENCES = ("lenet5",) * 8 + ("mnist-net",) * 2
# Model seeds are 1000 * config.seed + an offset per role, so no two models share initial weights or data order:
# source +0, local surrogates +1.., local references +101.., unseen references +201.., removal attacks +301...
LOCAL_SURROGATE_SEED, LOCAL_REFERENCE_SEED, REFERENCE_SEED, ATTACKER_SEED = 1, 101, 201, 301
@dataclass
class OwnershipConfig:
    """Everything that decides an ownership experiment (recorded with its results)."""

    dataset: str = "mnist"
    architecture: str = "lenet5"  # the source model's and the local models' architecture
    epochs: int = 4
    n_surrogates: int = settings.N_LOCAL
    n_references: int = settings.N_LOCAL
    # removal attacks the defender runs on its own source and data for further local surrogates, so that CEM's
    # examples must confer to derived models of those kinds too (none: only the n_surrogates retrained copies)
    local_removals: list[str] = field(default_factory=list)
    size: int = settings.SIZE  # ownership queries per query set
    n_candidates: int = settings.N_CANDIDATES  # validation images CEM and IPGuard start from
    tau: float = settings.TAU
    cem: CEMConfig = field(default_factory=CEMConfig.sensitivity_weights)  # paper weights: ~1% adversarial on MNIST
    ipguard: IPGuardConfig = field(default_factory=IPGuardConfig)
    removals: list[str] = field(default_factory=lambda: list(DEFAULT_REMOVALS))
    reference_architectures: list[str] = field(default_factory=lambda: list(DEFAULT_REFERENCES))
    max_accuracy_drop: float = 0.03
    rho: float = settings.RHO  # verification threshold on CAEAcc reported in the table
    compare_eps: list[float] = field(default_factory=list)  # conferrability of CEM vs FGSM/PGD/CW at these eps
    n_compare: int = 300
    seed: int = 0
    cache_dir: Path = Path("runs/cache/ownership")

    def __post_init__(self) -> None:
        MODELS.get(self.architecture)
        for name in self.reference_architectures:
            MODELS.get(name)
        for name in ("epochs", "n_surrogates", "n_references", "size", "n_candidates", "n_compare"):
            check_int(name, getattr(self, name))
        check_float("tau", self.tau, 0.0, 1.0, low_open=False)
        check_float("max_accuracy_drop", self.max_accuracy_drop, 0.0, 1.0, low_open=False)
        check_float("rho", self.rho, 0.0, 1.0, low_open=False)
        if not self.reference_architectures:
            raise ConfigError("reference_architectures must name at least one architecture (unseen references)")
        for spec in [*self.removals, *self.local_removals]:
            make_removal(spec)
        for eps in self.compare_eps:
            check_eps(eps, "compare_eps")
        if self.compare_eps and not any(parse_spec(spec)[0] in FROM_SCRATCH for spec in self.removals):
            raise ConfigError(f"compare_eps needs a removal trained from scratch ({', '.join(FROM_SCRATCH)}) among "
                              "the removals: conferrability is measured on those surrogates")
        counts = (self.n_surrogates + len(self.local_removals), self.n_references, len(self.reference_architectures),
                  len(self.removals))
        if max(counts) > 100:
            raise ConfigError(f"at most 100 models per role (each role has its own range of 100 seeds), got {counts}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cache_dir": str(self.cache_dir)}


@dataclass
class OwnershipReport:
    """Everything one `run_ownership` measured, its provenance and the command line that asked for it (set by the
    CLI)."""

    config: OwnershipConfig
    source_accuracy: float
    query_sets: dict[str, dict[str, Any]]
    suspects: list[SuspectResult]
    auc: dict[str, float]
    conferrability: list[dict[str, Any]]
    seconds: float
    provenance: dict[str, Any] = field(default_factory=lambda: {"versions": versions(), "git": git_commit()})
    command: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        """The record: kind, every field above, and the configuration as plain JSON."""
        return {"kind": "ownership", **asdict(self), "config": self.config.to_dict()}


def split_owner_data(data: DataSplits, seed: int, attacker_val: float = 0.08) -> tuple[DataSplits, DataSplits]:
    """Cut `data.train` into the defender's and the attacker's disjoint halves (seeded). The defender keeps
    `data.val` (candidates for the queries); the attacker holds out a share `attacker_val` of its half for validation;
    both share `data.test`."""
    n = len(data.train)
    n_val = max(1, round(attacker_val * n / 2))
    if n // 2 - n_val < 2:
        raise InputError(f"the {data.name} training split has {n} images, too few to halve for the ownership experiment")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    half = n // 2
    defender = DataSplits(data.name, data.train.subset(perm[:half]), data.val, data.test, data.num_classes)
    attacker_part = perm[half:]
    attacker = DataSplits(data.name, data.train.subset(attacker_part[:-n_val]),
                          data.train.subset(attacker_part[-n_val:]), data.test, data.num_classes)
    return defender, attacker


def recipe_key(recipe: dict[str, Any]) -> str:
    """A short hash of a JSON recipe: everything that decides a cached model or query set."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]


class ModelCache:
    """Checkpoints under `root`, one per hash of the recipe that decides the weights."""

    def __init__(self, root: Path, log: Log) -> None:
        self.root, self.log = root, log

    def directory(self, recipe: dict[str, Any]) -> Path:
        return self.root / "models" / f"{recipe['role']}-{recipe_key(recipe)}"

    def get(self, recipe: dict[str, Any], architecture: str, data: DataSplits, build: Callable[[], Classifier],
            facts: Callable[[], dict[str, Any]] = dict) -> Classifier:
        """The model of `recipe`: loaded, or built and saved with `facts()` (what its building measured) beside
        the recipe in its metadata (`recorded`)."""
        directory = self.directory(recipe)
        if (directory / "model.json").is_file():
            return load_checkpoint(directory)[0]
        started = time.perf_counter()
        model = build()
        save_checkpoint(model, directory, {"architecture": architecture,
                                           "arch_kwargs": architecture_kwargs(architecture, data),
                                           "dataset": data.name, "recipe": recipe, **facts()})
        self.log(f"trained {recipe['role']} {recipe.get('name', '')} in {time.perf_counter() - started:.0f} s")
        return model

    def recorded(self, recipe: dict[str, Any], key: str) -> Any:
        """The fact `key` saved with `recipe`'s model (None if it has none)."""
        meta = read_json(self.directory(recipe) / "model.json")
        return meta.get(key) if isinstance(meta, dict) else None


def local_models(
    source: Classifier, source_recipe: dict[str, Any], architecture: str, data: DataSplits, n_surrogates: int,
    n_references: int, epochs: int, cache: ModelCache, seed_base: int = 0, removals: Sequence[str] = (),
) -> tuple[list[Classifier], list[Classifier]]:
    """The defender's local models for CEM, trained on `data.train` (cached): surrogates on the source's labels
    (seeds `seed_base` + 1, 2, ...), then one surrogate per removal attack spec in `removals`, run by the defender
    on its own source and data (the next seeds), and references on the true labels (seeds `seed_base` + 101, ...)."""
    local = {"data": data_key(data.train), "architecture": architecture, "epochs": epochs}
    surrogates = [cache.get({"source": source_recipe, **local, "role": "local-surrogate", "seed": seed}, architecture, data,
                            lambda seed=seed: train_from_scratch(architecture, data, source_labels(source, data.train),
                                                                 source_labels(source, data.val), epochs, 1e-3, seed))
                  for seed in range(seed_base + LOCAL_SURROGATE_SEED, seed_base + LOCAL_SURROGATE_SEED + n_surrogates)]
    for index, spec in enumerate(removals):
        removal = seeded_removal(spec, seed_base + LOCAL_SURROGATE_SEED + n_surrogates + index)
        recipe = {"source": source_recipe, **local, "role": "local-surrogate", "name": spec, "params": removal.params}
        surrogates.append(cache.get(recipe, removal.architecture or architecture, data,
                                    lambda removal=removal: removal.run(source, data)))
    references = [cache.get({**local, "role": "local-reference", "seed": seed}, architecture, data,
                            lambda seed=seed: train_from_scratch(architecture, data, data.train, data.val, epochs,
                                                                 1e-3, seed))
                  for seed in range(seed_base + LOCAL_REFERENCE_SEED, seed_base + LOCAL_REFERENCE_SEED + n_references)]
    return surrogates, references


def data_key(split: Split) -> str:
    """A short hash of a split's images and labels (part of every cache key that depends on them)."""
    digest = hashlib.sha1(split.x.numpy().tobytes())
    digest.update(split.y.numpy().tobytes())
    return digest.hexdigest()[:12]


def source_model(defender: DataSplits, architecture: str, epochs: int, seed: int,
                 cache: ModelCache) -> tuple[Classifier, dict[str, Any]]:
    """The defender's source model (trained on its half with true labels, cached) and its recipe."""
    recipe = {"data": data_key(defender.train), "epochs": epochs, "role": "source", "architecture": architecture,
              "seed": seed}
    return cache.get(recipe, architecture, defender, lambda: train_from_scratch(
        architecture, defender, defender.train, defender.val, epochs, 1e-3, seed)), recipe


def run_ownership(config: OwnershipConfig, progress: bool = True, log: Log = print) -> OwnershipReport:
    """Run the whole experiment (see the module docstring); cached models and query sets are reused."""
    started = time.perf_counter()
    data = load_dataset(config.dataset)
    defender, attacker = split_owner_data(data, config.seed)
    cache = ModelCache(Path(config.cache_dir), log)
    seed_base = 1000 * config.seed
    arch = config.architecture

    source, source_recipe = source_model(defender, arch, config.epochs, seed_base, cache)
    source_acc = accuracy(source, data.test)
    source_pred = source.predict(data.test.x)
    log(f"source {arch}: test accuracy {100 * source_acc:.2f}%")
    surrogates, references = local_models(source, source_recipe, arch, defender, config.n_surrogates,
                                          config.n_references, config.epochs, cache, seed_base, config.local_removals)

    candidates = data.val.subset(torch.arange(min(config.n_candidates, len(data.val))))
    local = {"source": source_recipe, "size": config.size, "n": len(candidates)}
    query_sets = {
        "cem": _cached_queries(
            Path(config.cache_dir), {**local, "cem": asdict(config.cem), "tau": config.tau, "S": config.n_surrogates,
                                     **({"local_removals": config.local_removals} if config.local_removals else {}),
                                     "R": config.n_references},
            lambda: generate_cem_queries(source, surrogates, references, candidates.x, candidates.y, config.size,
                                         config.tau, config.cem, progress)),
        "ipguard": _cached_queries(
            Path(config.cache_dir), {**local, "ipguard": asdict(config.ipguard)},
            lambda: generate_ipguard_queries(source, candidates.x, config.size, config.ipguard, progress)),
    }
    for method, queries in query_sets.items():
        log(f"{method} query set: {len(queries)} inputs, source CAEAcc {100 * cae_accuracy(LocalSuspect(source), queries):.0f}%")

    suspects: list[SuspectResult] = []
    models: list[Classifier] = []
    attacker_recipe = {"attacker_data": data_key(attacker.train), "epochs": config.epochs}
    jobs = [("surrogate", spec) for spec in config.removals] + [("reference", a) for a in config.reference_architectures]
    for index, (kind, spec) in enumerate(tqdm(jobs, desc="suspects", unit="model", disable=not progress)):
        t0 = time.perf_counter()
        queries = None
        if kind == "surrogate":
            removal = attacker_removal(spec, index, seed_base)
            recipe = {**source_recipe, **attacker_recipe, "role": "surrogate", "name": spec, "params": removal.params}
            model = cache.get(recipe, removal.architecture or arch, attacker,
                              lambda removal=removal: removal.run(source, attacker),
                              lambda removal=removal: {"queries": removal.queries})
            name, attack, queries = removal.label, removal.name, cache.recorded(recipe, "queries")
        else:
            seed = seed_base + REFERENCE_SEED + index - len(config.removals)
            model = cache.get({**attacker_recipe, "role": "reference", "architecture": spec, "seed": seed}, spec,
                              attacker, lambda spec=spec, seed=seed: train_from_scratch(
                                  spec, attacker, attacker.train, attacker.val, config.epochs, 1e-3, seed))
            name, attack = f"reference {spec} (seed {seed})", ""
        acc = accuracy(model, data.test)
        cae = {method: cae_accuracy(LocalSuspect(model), queries) for method, queries in query_sets.items()}
        agreement = float((model.predict(data.test.x) == source_pred).double().mean())
        suspects.append(SuspectResult(name, kind, attack, acc, acc >= source_acc - config.max_accuracy_drop, cae,
                                      time.perf_counter() - t0, agreement, queries))
        models.append(model)
        log(f"{name}: accuracy {100 * acc:.2f}%, " + ", ".join(f"{m} CAEAcc {100 * v:.0f}%" for m, v in cae.items()))

    auc = {method: suspects_auc(suspects, method) for method in query_sets}
    comparison: list[dict[str, Any]] = []
    if config.compare_eps:
        pool = candidates.subset(torch.arange(min(config.n_compare, len(candidates))))
        comparison = _cached_comparison(
            Path(config.cache_dir),
            {**local, "n": len(pool), "cem": asdict(config.cem), "eps": config.compare_eps, "S": config.n_surrogates,
             "R": config.n_references, "local_removals": config.local_removals, **attacker_recipe,
             "unseen": [(s.name, s.counts) for s in suspects]},
            lambda: compare_conferrability(source, pool, (surrogates, references), unseen_models(suspects, models),
                                           config.compare_eps, config.cem, progress))
    return OwnershipReport(config, source_acc, {m: {"n": len(q), **q.meta} for m, q in query_sets.items()},
                           suspects, auc, comparison, time.perf_counter() - started)


def attacker_removal(spec: str, index: int, seed_base: int = 0) -> Removal:
    """The removal attack of `spec`, seeded with `seed_base + ATTACKER_SEED + index` unless the spec sets a seed:
    an attacker who retrains from the source's own initialisation seed would share its initial weights, which no
    real attacker knows (and which makes retrained surrogates look far more like the source than they are)."""
    return seeded_removal(spec, seed_base + ATTACKER_SEED + index)


def seeded_removal(spec: str, seed: int) -> Removal:
    """The removal attack of `spec`, with `seed` unless the spec sets one."""
    name, params = parse_spec(spec)
    params.setdefault("seed", seed)
    return REMOVALS.create(name, **params)


def _cached_comparison(root: Path, recipe: dict[str, Any],
                       build: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The conferrability comparison of `recipe`: read from the cache, or built and written there."""
    path = root / "comparisons" / f"{recipe_key(recipe)}.json"
    if path.is_file():
        return read_json(path)
    rows = build()
    write_json(path, rows)
    return rows


def _cached_queries(root: Path, recipe: dict[str, Any], build: Callable[[], QuerySet]) -> QuerySet:
    directory = root / "queries" / recipe_key(recipe)
    if directory.is_dir():
        return QuerySet.load(directory)
    queries = build()
    queries.save(directory)
    return queries
