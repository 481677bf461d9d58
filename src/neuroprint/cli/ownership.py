"""`neuroprint ownership generate | verify | evaluate`: make a query set for a source model, check a suspect, run the study."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from neuroprint.cli.report import html_report
from neuroprint.errors import ConfigError
from neuroprint.ownership import settings

if TYPE_CHECKING:
    from neuroprint.ownership.cem import CEMConfig

ownership_app = typer.Typer(no_args_is_help=True, help="Prove that a suspect model was stolen from yours "
                            "(conferrable adversarial examples, Lukas et al. 2021; IPGuard baseline).")

Eps = Annotated[float, typer.Option(help="CEM L-inf budget in pixel units of [0, 1] images")]
Tau = Annotated[float, typer.Option(help="minimum conferrability on the local models, in [0, 1]")]
Weights = Annotated[str, typer.Option(help="CEM loss weights: paper (alpha=beta=gamma=1) or sensitivity (1, 0.1, 0.1)")]
Beta = Annotated[float | None, typer.Option(help="override the CEM weight beta (moving the source off its label)")]
Steps = Annotated[int, typer.Option(help="Adam steps of CEM / IPGuard")]
Size = Annotated[int, typer.Option(help="ownership queries to keep (query-set size)")]
Candidates = Annotated[int, typer.Option(help="validation images to start from")]
Epochs = Annotated[int, typer.Option(help="training epochs of every model trained here")]
Seed = Annotated[int, typer.Option(help="random seed (data split, model seeds, CEM dropout)")]
CacheDir = Annotated[Path, typer.Option(help="cache of trained models and query sets")]


def _cem_config(eps: float, steps: int, weights: str, beta: float | None, seed: int) -> CEMConfig:
    from neuroprint.ownership.cem import CEMConfig

    if weights not in ("paper", "sensitivity"):
        raise ConfigError(f"unknown --weights {weights!r}; valid: paper, sensitivity")
    config = CEMConfig(eps=eps, steps=steps, seed=seed) if weights == "paper" else \
        CEMConfig.sensitivity_weights(eps=eps, steps=steps, seed=seed)
    if beta is not None:
        from dataclasses import replace

        config = replace(config, beta=beta)
    return config


@ownership_app.command("generate")
def generate(
    source: Annotated[Path, typer.Option("--source", "-s", help="source model checkpoint (neuroprint train)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="query-set directory to write")],
    method: Annotated[str, typer.Option(help="cem or ipguard")] = "cem",
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="the defender's dataset")] = "mnist",
    surrogate: Annotated[list[Path] | None, typer.Option(help="local surrogate checkpoint (repeatable); "
                                                         "default: train --n-local on the source's labels")] = None,
    reference: Annotated[list[Path] | None, typer.Option(help="local reference checkpoint (repeatable); "
                                                         "default: train --n-local on the true labels")] = None,
    n_local: Annotated[int, typer.Option(help="local surrogates and references to train when none are given")] = settings.N_LOCAL,
    epochs: Epochs = 4,
    eps: Eps = settings.EPS,
    steps: Steps = 300,
    weights: Weights = "sensitivity",
    beta: Beta = None,
    tau: Tau = settings.TAU,
    k: Annotated[float, typer.Option(help="IPGuard logit margin")] = 0.5,
    size: Size = settings.SIZE,
    n_candidates: Candidates = settings.N_CANDIDATES,
    seed: Seed = 0,
    cache_dir: CacheDir = Path("runs/cache/ownership"),
) -> None:
    """Generate a query set (ownership queries) for a source model from the dataset's validation images."""
    import torch

    from neuroprint.data import load_dataset
    from neuroprint.models.checkpoint import load_checkpoint
    from neuroprint.ownership.experiment import ModelCache, local_models
    from neuroprint.ownership.generate import generate_cem_queries
    from neuroprint.ownership.ipguard import IPGuardConfig, generate_ipguard_queries

    if method not in ("cem", "ipguard"):
        raise ConfigError(f"unknown --method {method!r}; valid: cem, ipguard")
    model, meta = load_checkpoint(source)
    if meta.get("dataset") not in (None, dataset):
        raise ConfigError(f"the source model was trained on {meta['dataset']!r}, not {dataset!r}; pass --dataset "
                          f"{meta['dataset']}")
    data = load_dataset(dataset)
    val = data.val.subset(torch.arange(min(n_candidates, len(data.val))))
    if method == "ipguard":
        queries = generate_ipguard_queries(model, val.x, size, IPGuardConfig(k=k, steps=steps, seed=seed))
    else:
        config = _cem_config(eps, steps, weights, beta, seed)
        if surrogate and reference:
            surrogates = [load_checkpoint(p)[0] for p in surrogate]
            references = [load_checkpoint(p)[0] for p in reference]
        elif surrogate or reference:
            raise ConfigError("give both --surrogate and --reference checkpoints, or neither (to train --n-local each)")
        else:
            weights_hash = hashlib.sha256((source / "model.safetensors").read_bytes()).hexdigest()[:12]
            recipe = {"role": "source", "checkpoint": weights_hash}
            surrogates, references = local_models(model, recipe, meta["architecture"], data, n_local, n_local, epochs,
                                                  ModelCache(cache_dir, lambda m: typer.echo(m, err=True)))
        queries = generate_cem_queries(model, surrogates, references, val.x, val.y, size, tau, config)
    queries.meta["source_checkpoint"] = str(source)
    queries.save(out)
    typer.echo(f"{method} query set of {len(queries)} inputs written to {out}")


@ownership_app.command("verify")
def verify(
    queries: Annotated[Path, typer.Option("--queries", "-q", help="query-set directory (ownership generate)")],
    suspect: Annotated[Path | None, typer.Option(help="suspect model checkpoint directory")] = None,
    url: Annotated[str | None, typer.Option(help="suspect HTTP endpoint answering {\"labels\": [...]} for "
                                            "{\"inputs\": [...]}")] = None,
    rho: Annotated[float, typer.Option(help="CAEAcc threshold in [0, 1] at or above which the suspect is a "
                                           "surrogate")] = settings.RHO,
    batch_size: Annotated[int, typer.Option(help="queries per request to the suspect")] = 64,
) -> None:
    """Send a suspect the ownership queries of a query set; print its CAEAcc and the verdict (JSON on stdout)."""
    from neuroprint.models.checkpoint import load_checkpoint
    from neuroprint.ownership.queries import QuerySet
    from neuroprint.ownership.verify import HTTPSuspect, LocalSuspect
    from neuroprint.ownership.verify import verify as run_verify

    if (suspect is None) == (url is None):
        raise ConfigError("give exactly one suspect: --suspect CHECKPOINT_DIR or --url http://...")
    query_set = QuerySet.load(queries)
    target = LocalSuspect(load_checkpoint(suspect)[0], batch_size) if suspect is not None else HTTPSuspect(url or "", batch_size)
    result = run_verify(target, query_set, rho)
    typer.echo(json.dumps({"suspect": str(suspect or url), **result.to_dict()}))
    verdict = "SURROGATE (derived from the source model)" if result.is_surrogate else "not shown to be a surrogate"
    typer.echo(f"CAEAcc {100 * result.cae_acc:.1f}% on {result.n} inputs (rho {100 * rho:.0f}%): {verdict}", err=True)


@ownership_app.command("evaluate")
def evaluate(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="dataset (mnist)")] = "mnist",
    architecture: Annotated[str, typer.Option(help="source and local model architecture")] = "lenet5",
    removal: Annotated[list[str] | None, typer.Option(help="removal attack spec (repeatable; default: all)")] = None,
    reference_arch: Annotated[list[str] | None, typer.Option(help="unseen reference architecture (repeatable)")] = None,
    n_local: Annotated[int, typer.Option(help="local surrogates and references CEM optimises over")] = settings.N_LOCAL,
    local_removal: Annotated[list[str] | None, typer.Option(
        help="removal attack spec the defender runs on its own source for one more local surrogate "
             "(repeatable; e.g. distill:temperature=4)")] = None,
    epochs: Epochs = 4,
    eps: Eps = settings.EPS,
    steps: Steps = 300,
    weights: Weights = "sensitivity",
    beta: Beta = None,
    tau: Tau = settings.TAU,
    rho: Annotated[float, typer.Option(help="CAEAcc threshold for the verdict counts in the table")] = settings.RHO,
    size: Size = settings.SIZE,
    n_candidates: Candidates = settings.N_CANDIDATES,
    compare_eps: Annotated[list[float] | None, typer.Option(help="also compare CEM with FGSM/PGD/CW at this eps "
                                                            "(repeatable)")] = None,
    seed: Seed = 0,
    out_dir: Annotated[Path, typer.Option(help="where results.md, results.json, roc.png and report.html go")] = Path("runs/ownership"),
    cache_dir: CacheDir = Path("runs/cache/ownership"),
) -> None:
    """The full study: source, local models, CEM + IPGuard query sets, every removal attack, unseen references."""
    from neuroprint.ownership.experiment import (
        DEFAULT_REFERENCES,
        DEFAULT_REMOVALS,
        OwnershipConfig,
        run_ownership,
    )
    from neuroprint.ownership.ipguard import IPGuardConfig
    from neuroprint.ownership.report import markdown_table, write_outputs

    config = OwnershipConfig(
        dataset=dataset, architecture=architecture, epochs=epochs, n_surrogates=n_local, n_references=n_local,
        local_removals=local_removal or [], size=size, n_candidates=n_candidates, tau=tau,
        cem=_cem_config(eps, steps, weights, beta, seed), ipguard=IPGuardConfig(steps=steps, seed=seed),
        removals=removal or list(DEFAULT_REMOVALS), reference_architectures=reference_arch or list(DEFAULT_REFERENCES),
        compare_eps=compare_eps or [], rho=rho, seed=seed, cache_dir=cache_dir,
    )
    report = run_ownership(config, log=lambda m: typer.echo(m, err=True))
    report.command = sys.argv
    paths = write_outputs(report, out_dir)
    typer.echo(markdown_table(report))
    typer.echo(f"\nfinished in {report.seconds:.0f} s; written: {', '.join(str(p) for p in paths.values())}")
    html_report([paths["json"]], out_dir / "report.html")
