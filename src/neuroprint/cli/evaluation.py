"""`neuroprint evaluate`, `robustness` and `demo`: detectors against standard and adaptive attacks."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from neuroprint.cli.options import (
    BatchSize,
    CacheDir,
    DataPath,
    Dataset,
    Device,
    Epochs,
    JsonPath,
    Model,
    NFit,
    Seed,
    dataset_options,
    echo,
    train_config,
)
from neuroprint.cli.report import html_report

#: the demo's attacks: the detectors are fit on PGD only; the others are attacks they never saw, DeepFool a
#: minimal-perturbation L2 attack (its step towards the runner-up class only, which keeps it within the time budget)
DEMO_ATTACKS = ["pgd", "fgsm", "bim-a", "deepfool:candidates=2"]
DEMO_DETECTORS = ["bank", "lid", "mahalanobis"]



def publish(report: Any, write: Callable[..., dict[str, Path]], table: Callable[[Any], str], out_dir: Path,
            json_path: Path | None) -> None:
    """Record the command line in `report`, write its outputs (`write`) and report.html into `out_dir`, and print
    its table (`table`) and the paths written."""
    report.command = sys.argv
    paths = write(report, out_dir, json_path)
    typer.echo(table(report))
    typer.echo(f"\nwritten: {', '.join(str(p) for p in paths.values())}")
    html_report([paths["json"]], out_dir / "report.html")

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
    out_dir: Annotated[Path, typer.Option(help="where results.md, roc.png, results.json and report.html go")] = Path("runs/eval"),
    json_path: JsonPath = None,
    cache_dir: CacheDir = Path("runs/cache"),
    device: Device = "cpu",
    batch_size: BatchSize = 256,
) -> None:
    """Evaluate every detector on every attack with the leakage-free protocol; prints a Markdown table.

    Under `torchrun --nproc-per-node N -m neuroprint evaluate ...` the attacks are sharded across the N ranks and
    rank 0 fits, scores and writes the same report a single process would."""
    from neuroprint.distributed import ranks
    from neuroprint.evaluation.protocol import EvalConfig, run_evaluation
    from neuroprint.evaluation.report import markdown_table, write_outputs
    config = EvalConfig(
        dataset=dataset, dataset_options=dataset_options(data_path), model=model,
        train=train_config(epochs, seed), attacks=attack_specs,
        detectors=detector, fit_attacks=fit_attack or None, n_fit=n_fit, n_test=n_test, seed=seed,
        batch_size=batch_size, cache_dir=cache_dir, device=device,
    )
    report = run_evaluation(config, log=echo, ranks=ranks(device))
    if report is not None:
        publish(report, write_outputs, markdown_table, out_dir, json_path)


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
    out_dir: Annotated[Path, typer.Option(help="where robustness.md, convergence.png, robustness.json and "
                                                 "report.html go")] = Path("runs/robustness"),
    json_path: JsonPath = None,
    cache_dir: CacheDir = Path("runs/cache"),
    device: Device = "cpu",
    batch_size: BatchSize = 100,
    sources: Annotated[str, typer.Option(help="images to attack: test (to report) or validation (images no detector "
                                               "is fit or calibrated on: to choose a design on)")] = "test",
    attacker_seed: Annotated[int | None, typer.Option(help="the attacker fits its own copy of every detector (its own "
                                                          "random_state and validation images, drawn with this seed) "
                                                          "and attacks through it; default: it holds the defender's")] = None,
) -> None:
    """Attack every detector with adaptive attackers who know it; prints SR@FPR per attack, budget and worst case.

    Under `torchrun --nproc-per-node N -m neuroprint robustness ...` the attacked images are sharded across the N
    ranks and rank 0 writes the report."""
    from neuroprint.adaptive.report import markdown_table, write_outputs
    from neuroprint.adaptive.robustness import RobustnessConfig, run_robustness
    from neuroprint.distributed import ranks
    config = RobustnessConfig(
        detectors=detector, budgets=eps or ["linf:0.1", "linf:0.3"], attacks=attack_specs, dataset=dataset,
        dataset_options=dataset_options(data_path), model=model,
        train=train_config(epochs, seed), fit_attack=fit_attack,
        n_fit=n_fit, n_attack=n_attack, steps=steps, restarts=restarts, eot=eot, fpr=fpr, seed=seed,
        batch_size=batch_size, cache_dir=cache_dir, device=device, sources=sources, attacker_seed=attacker_seed,
    )
    report = run_robustness(config, log=echo, ranks=ranks(device))
    if report is not None:
        publish(report, write_outputs, markdown_table, out_dir, json_path)


def demo(
    out_dir: Annotated[Path, typer.Option(help="where the tables, figures, JSON records and report.html go")] = Path("runs/demo"),
    n: Annotated[int, typer.Option("--n", help="source images per split (half clean, half attacked)")] = 300,
    n_adaptive: Annotated[int, typer.Option(help="test images the adaptive attacker attacks")] = 40,
    adaptive_steps: Annotated[int, typer.Option(help="steps of the adaptive attack")] = 100,
    cache_dir: CacheDir = Path("runs/cache"),
    data_path: DataPath = None,
) -> None:
    """The main job, on real MNIST in about a minute: the fingerprint bank beside LID and Mahalanobis, each fit once
    on PGD and tested on PGD and on attacks it never saw (FGSM, BIM-a, DeepFool), then a short adaptive attack on
    the bank; prints the tables and writes an HTML report. The model ships with the package (no training)."""
    from neuroprint.adaptive import report as adaptive_report
    from neuroprint.adaptive.robustness import RobustnessConfig, run_robustness
    from neuroprint.evaluation.protocol import EvalConfig, run_evaluation
    from neuroprint.evaluation.report import markdown_table, write_outputs

    start = time.perf_counter()
    config = EvalConfig(dataset="mnist", dataset_options=dataset_options(data_path), model="mnist-net",
                        attacks=DEMO_ATTACKS, fit_attacks=["pgd"], detectors=DEMO_DETECTORS, n_fit=n, n_test=n,
                        cache_dir=cache_dir)
    report = run_evaluation(config, log=echo)
    report.command = sys.argv
    paths = write_outputs(report, out_dir)
    echo(f"adaptive attack: the joint attack (knows the model, the bank and its threshold) on {n_adaptive} test "
         f"images at L-inf 0.3, {adaptive_steps} steps")
    adaptive = run_robustness(RobustnessConfig(detectors=["bank"], budgets=["linf:0.3"], attacks=["joint"],
                                               dataset_options=dataset_options(data_path), n_fit=n,
                                               n_attack=n_adaptive, steps=adaptive_steps, cache_dir=cache_dir),
                              log=echo)
    adaptive.command = sys.argv
    adaptive_paths = adaptive_report.write_outputs(adaptive, out_dir)
    short = (f"The adaptive run is short ({n_adaptive} images, {adaptive_steps} steps, one attack): its SR is a "
             "lower bound; `neuroprint robustness --detector bank` runs the whole suite with 200 steps per attack.")
    typer.echo(markdown_table(report) + "\n\n" + adaptive_report.markdown_table(adaptive) + "\n\n" + short)
    written = [*paths.values(), *adaptive_paths.values()]
    typer.echo(f"\nwritten: {', '.join(str(p) for p in written)}")
    html_report([paths["json"], adaptive_paths["json"]], out_dir / "report.html",
                intro="neuroprint demo on MNIST: three detectors fit on PGD only and tested on attacks they never "
                      f"saw, then an attacker who knows the bank. {short}")
    typer.echo(f"finished in {time.perf_counter() - start:.0f} s")
