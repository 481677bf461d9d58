"""The `neuroprint` command line: list, train, attack, evaluate, robustness, fit, score, serve, demo, ownership.

Every `NeuroprintError` (bad names, bad values, missing or corrupt files) becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from neuroprint.errors import ConfigError, NeuroprintError
from neuroprint.guard import cli as guard_cli
from neuroprint.ownership.cli import ownership_app

if TYPE_CHECKING:
    from neuroprint.models.training import TrainConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Detect adversarial inputs with neural fingerprints; evaluate detectors honestly.")

app.add_typer(ownership_app, name="ownership")
app.command()(guard_cli.fit)
app.command()(guard_cli.score)
app.command()(guard_cli.serve)

Dataset = Annotated[str, typer.Option("--dataset", "-d", help="dataset name (see `neuroprint list`)")]
DataPath = Annotated[str | None, typer.Option("--data-path", help="directory/file for cifar10, folder, npz")]
Seed = Annotated[int, typer.Option(help="random seed (data order, sampling)")]
Device = Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1, ...")]
Model = Annotated[str, typer.Option("--model", "-m", help="architecture to train/cache, or a checkpoint dir")]
Epochs = Annotated[int, typer.Option(help="training epochs when the model is trained here")]
NFit = Annotated[int, typer.Option(help="validation source images (half clean, half attacked)")]
JsonPath = Annotated[Path | None, typer.Option("--json", help="also write the JSON record here")]
CacheDir = Annotated[Path, typer.Option(help="cache of trained models, adversarial sets and adaptive attacks")]


def _dataset_options(data_path: str | None) -> dict[str, object]:
    return {} if data_path is None else {"path": data_path}


def _train_config(epochs: int, seed: int) -> TrainConfig:
    """How `evaluate` and `robustness` train a zoo model they do not find in the cache (lr drop in the last epoch)."""
    from neuroprint.models.training import TrainConfig

    return TrainConfig(epochs=epochs, lr_drop_epoch=min(3, epochs - 1), seed=seed)


def _echo(message: str) -> None:
    typer.echo(message, err=True)


@app.command("list")
def list_registered() -> None:
    """List the registered datasets, models, attacks and detectors."""
    import neuroprint
    import neuroprint.adaptive  # noqa: F401  (registers the adaptive attacks)
    from neuroprint.registry import ADAPTIVE_ATTACKS, ATTACKS, DATASETS, DETECTORS, MODELS

    for title, reg in (("datasets", DATASETS), ("models", MODELS), ("attacks", ATTACKS), ("detectors", DETECTORS),
                       ("adaptive attacks", ADAPTIVE_ATTACKS)):
        typer.echo(f"{title}: {', '.join(reg.available())}")
    typer.echo("attacks also accept torchattacks.<Class>:key=value,... and name:key=value,...")


@app.command()
def train(
    dataset: Dataset = "mnist",
    data_path: DataPath = None,
    model: Annotated[str, typer.Option("--model", "-m", help="architecture (see `neuroprint list`)")] = "mnist-net",
    epochs: Annotated[int, typer.Option(help="training epochs")] = 4,
    batch_size: Annotated[int, typer.Option(help="batch size")] = 128,
    lr: Annotated[float, typer.Option(help="Adam learning rate (x0.1 from --lr-drop-epoch)")] = 1e-3,
    lr_drop_epoch: Annotated[int, typer.Option(help="0-based epoch from which lr is divided by 10")] = 3,
    seed: Seed = 0,
    fingerprints: Annotated[int, typer.Option(help="NeuralFP: train with this many secret fingerprints (0 = off)")] = 0,
    fp_eps: Annotated[float, typer.Option(help="NeuralFP: fingerprint amplitude in pixel units, in (0, 1)")] = 0.006,
    fp_pattern: Annotated[str, typer.Option(help="NeuralFP: target pattern, paper or random-sign")] = "paper",
    fp_weight: Annotated[float, typer.Option(help="NeuralFP: weight of the fingerprint loss")] = 1.0,
    fp_per_step: Annotated[int | None, typer.Option(help="NeuralFP: directions per training step (default all)")] = None,
    fp_directions: Annotated[str, typer.Option(help="NeuralFP: dx pixels in [-eps, eps] (symmetric, the paper) or "
                                                    "[0, eps) (positive, the reference code)")] = "symmetric",
    out: Annotated[Path, typer.Option("--out", "-o", help="checkpoint directory to write")] = Path("runs/models/mnist-net"),
    device: Device = "cpu",
) -> None:
    """Train a classifier; writes a checkpoint (model.safetensors + model.json; fingerprints.safetensors too)."""
    from neuroprint.data import load_dataset
    from neuroprint.models.checkpoint import save_checkpoint, train_model
    from neuroprint.models.fingerprints import FingerprintConfig
    from neuroprint.models.training import TrainConfig

    if fingerprints < 0:
        raise ConfigError(f"--fingerprints must be >= 1 (or 0 for a plain model), got {fingerprints}")
    fingerprint = None
    if fingerprints:
        fingerprint = FingerprintConfig(n=fingerprints, eps=fp_eps, pattern=fp_pattern, weight=fp_weight, seed=seed,
                                        per_step=fp_per_step, directions=fp_directions)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, lr_drop_epoch=lr_drop_epoch, seed=seed,
                         fingerprint=fingerprint)
    data = load_dataset(dataset, **_dataset_options(data_path))
    clf, meta = train_model(model, data, config, device=device)
    save_checkpoint(clf, out, meta)
    typer.echo(f"test accuracy {meta['clean_accuracy']:.4f}; checkpoint written to {out}")


@app.command()
def attack(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="checkpoint directory (neuroprint train)")],
    attack_spec: Annotated[str, typer.Option("--attack", "-a", help="attack spec, e.g. pgd or pgd:eps=0.1,steps=20")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output path without suffix (.safetensors + .json)")],
    dataset: Dataset = "mnist",
    data_path: DataPath = None,
    split: Annotated[str, typer.Option(help="split to attack: train, val or test")] = "test",
    n: Annotated[int, typer.Option("--n", help="number of source images (first n of the split)")] = 500,
    batch_size: Annotated[int, typer.Option(help="attack batch size")] = 256,
) -> None:
    """Attack the correctly classified images among the first N of a split; writes an adversarial set."""
    import torch

    from neuroprint.attacks import build_adversarial_set, make_attack
    from neuroprint.data import load_dataset
    from neuroprint.models.checkpoint import load_checkpoint

    if split not in ("train", "val", "test"):
        raise ConfigError(f"unknown split {split!r}; valid: train, val, test")
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    clf, _ = load_checkpoint(checkpoint)
    attack_obj = make_attack(attack_spec)
    part = getattr(load_dataset(dataset, **_dataset_options(data_path)), split)
    index = torch.arange(min(n, len(part)))
    adv = build_adversarial_set(clf, attack_obj, part.x[index], part.y[index], source_index=index, split=split,
                                batch_size=batch_size, progress=True)
    adv.save(out)
    ok = adv.success
    typer.echo(f"{attack_obj.name}: {int(ok.sum())}/{len(ok)} successful ({100 * float(ok.float().mean()):.1f}%); "
               f"written to {out}.safetensors and {out}.json")


@app.command()
def evaluate(
    detector: Annotated[list[str], typer.Option("--detector", help="detector name (repeatable)")],
    attack_specs: Annotated[list[str], typer.Option("--attack", "-a", help="attack spec (repeatable)")],
    dataset: Dataset = "mnist",
    data_path: DataPath = None,
    model: Model = "mnist-net",
    fit_attack: Annotated[list[str] | None, typer.Option("--fit-attack", help="fit only on this attack (repeatable); test on all")] = None,
    n_fit: NFit = 1000,
    n_test: Annotated[int, typer.Option(help="test source images (half clean, half attacked)")] = 1000,
    epochs: Epochs = 4,
    seed: Seed = 0,
    out_dir: Annotated[Path, typer.Option(help="where results.md, roc.png and results.json go")] = Path("runs/eval"),
    json_path: JsonPath = None,
    cache_dir: CacheDir = Path("runs/cache"),
    device: Device = "cpu",
) -> None:
    """Evaluate every detector on every attack with the leakage-free protocol; prints a Markdown table."""
    from neuroprint.evaluation.protocol import EvalConfig, run_evaluation
    from neuroprint.evaluation.report import markdown_table, write_outputs
    config = EvalConfig(
        dataset=dataset, dataset_options=_dataset_options(data_path), model=model,
        train=_train_config(epochs, seed), attacks=attack_specs,
        detectors=detector, fit_attacks=fit_attack or None, n_fit=n_fit, n_test=n_test, seed=seed,
        cache_dir=cache_dir, device=device,
    )
    report = run_evaluation(config, log=_echo)
    paths = write_outputs(report, out_dir, json_path)
    typer.echo(markdown_table(report))
    typer.echo(f"\nwritten: {', '.join(str(p) for p in paths.values())}")


@app.command()
def robustness(
    detector: Annotated[list[str], typer.Option("--detector", help="detector spec (repeatable), e.g. bank:sampling=secure")],
    eps: Annotated[list[str] | None, typer.Option("--eps", help="budget (repeatable): 0.3 or linf:0.3 (L-inf), l2:2 "
                                                               "(L2), pixel units of [0, 1] images")] = None,
    attack_specs: Annotated[list[str] | None, typer.Option("--attack", "-a", help="adaptive attack spec (repeatable; "
                                                           "default: the whole suite, see `neuroprint list`)")] = None,
    dataset: Dataset = "mnist",
    data_path: DataPath = None,
    model: Model = "mnist-net",
    fit_attack: Annotated[str, typer.Option(help="attack the detectors are fit on (validation split)")] = "pgd",
    n_fit: NFit = 1000,
    n_attack: Annotated[int, typer.Option(help="correctly classified test images to attack")] = 100,
    steps: Annotated[int, typer.Option(help="gradient steps per attack and restart")] = 200,
    restarts: Annotated[int, typer.Option(help="random restarts per attack (the first starts at the image)")] = 1,
    eot: Annotated[int | None, typer.Option(help="randomized detectors: EOT over this many draws per step "
                                                 "(default: the exact expectation over draws)")] = None,
    fpr: Annotated[float, typer.Option(help="false-positive rate the thresholds are set at")] = 0.05,
    epochs: Epochs = 4,
    seed: Seed = 0,
    out_dir: Annotated[Path, typer.Option(help="where robustness.md, convergence.png and robustness.json go")] = Path("runs/robustness"),
    json_path: JsonPath = None,
    cache_dir: CacheDir = Path("runs/cache"),
    device: Device = "cpu",
) -> None:
    """Attack every detector with adaptive attackers who know it; prints SR@FPR per attack, budget and worst case."""
    from neuroprint.adaptive.report import markdown_table, write_outputs
    from neuroprint.adaptive.robustness import RobustnessConfig, run_robustness
    config = RobustnessConfig(
        detectors=detector, budgets=eps or ["linf:0.1", "linf:0.3"], attacks=attack_specs, dataset=dataset,
        dataset_options=_dataset_options(data_path), model=model,
        train=_train_config(epochs, seed), fit_attack=fit_attack,
        n_fit=n_fit, n_attack=n_attack, steps=steps, restarts=restarts, eot=eot, fpr=fpr, seed=seed,
        cache_dir=cache_dir, device=device,
    )
    report = run_robustness(config, log=_echo)
    paths = write_outputs(report, out_dir, json_path)
    typer.echo(markdown_table(report))
    typer.echo(f"\nwritten: {', '.join(str(p) for p in paths.values())}")


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option(help="where results go")] = Path("runs/demo"),
    n: Annotated[int, typer.Option("--n", help="source images per split (half clean, half attacked)")] = 600,
) -> None:
    """The main job: real MNIST end to end (train or reuse the model, attack, fit the fast detectors, print the
    table). The other detectors run through `neuroprint evaluate` (NeuralFP needs a fingerprinted model)."""
    from neuroprint.evaluation.protocol import EvalConfig, run_evaluation
    from neuroprint.evaluation.report import markdown_table, write_outputs

    start = time.perf_counter()
    config = EvalConfig(dataset="mnist", model="mnist-net", attacks=["fgsm", "bim-a", "bim-b", "pgd"],
                        detectors=["bank", "lid", "mahalanobis"], n_fit=n, n_test=n)
    report = run_evaluation(config, log=_echo)
    paths = write_outputs(report, out_dir)
    typer.echo(markdown_table(report))
    typer.echo(f"\nfinished in {time.perf_counter() - start:.0f} s; written: {', '.join(str(p) for p in paths.values())}")


def main() -> None:
    """Console entry point: run the app, turning neuroprint errors into one line and exit code 2."""
    try:
        app(standalone_mode=False)
    except NeuroprintError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        raise
