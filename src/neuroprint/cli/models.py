"""`neuroprint list`, `train` and `attack`: what is registered, training a classifier, attacking a split."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neuroprint.cli.options import DataPath, Dataset, Device, Seed, dataset_options
from neuroprint.errors import ConfigError


def list_registered() -> None:
    """List the registered datasets, models, attacks and detectors."""
    import neuroprint
    import neuroprint.adaptive  # noqa: F401  (registers the adaptive attacks)
    from neuroprint.registry import ADAPTIVE_ATTACKS, ATTACKS, DATASETS, DETECTORS, MODELS

    for title, reg in (("datasets", DATASETS), ("models", MODELS), ("attacks", ATTACKS), ("detectors", DETECTORS),
                       ("adaptive attacks", ADAPTIVE_ATTACKS)):
        typer.echo(f"{title}: {', '.join(reg.available())}")
    typer.echo("attacks also accept name:key=value,... and, with torchattacks installed, "
               "torchattacks.<Class>:key=value,...")


def train(
    dataset: Dataset = "mnist",
    data_path: DataPath = None,
    model: Annotated[str, typer.Option("--model", "-m", help="architecture (see `neuroprint list`)")] = "mnist-net",
    epochs: Annotated[int, typer.Option(help="training epochs")] = 4,
    batch_size: Annotated[int, typer.Option(help="batch size")] = 128,
    lr: Annotated[float, typer.Option(help="Adam learning rate (x0.1 from --lr-drop-epoch)")] = 1e-3,
    lr_drop_epoch: Annotated[int, typer.Option(help="0-based epoch from which lr is divided by 10")] = 3,
    seed: Seed = 0,
    probes: Annotated[int, typer.Option(help="train with this many secret NeuralFP probes (0 = off)")] = 0,
    probe_eps: Annotated[float, typer.Option(help="NeuralFP probes: amplitude in pixel units, in (0, 1)")] = 0.006,
    probe_pattern: Annotated[str, typer.Option(help="NeuralFP probes: target pattern, paper or random-sign")] = "paper",
    probe_weight: Annotated[float, typer.Option(help="NeuralFP probes: weight of the probe loss")] = 1.0,
    probes_per_step: Annotated[int | None, typer.Option(help="NeuralFP probes: directions per training step "
                                                              "(default all)")] = None,
    probe_directions: Annotated[str, typer.Option(help="NeuralFP probes: dx pixels in [-eps, eps] (symmetric, the "
                                                       "paper) or [0, eps) (positive, the reference code)")] = "symmetric",
    adversarial: Annotated[str | None, typer.Option(help="adversarial training (Madry et al. 2018): train on this "
                                                         "attack's examples of every batch, e.g. "
                                                         "pgd:eps=0.3,alpha=0.1,steps=5")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="checkpoint directory to write")] = Path("runs/models/mnist-net"),
    device: Device = "cpu",
) -> None:
    """Train a classifier; writes a checkpoint (model.safetensors, model.json; probes.safetensors too)."""
    from neuroprint.attacks.training import adversarial_training
    from neuroprint.data import load_dataset
    from neuroprint.models.checkpoint import save_checkpoint, train_model
    from neuroprint.models.probes import ProbeConfig
    from neuroprint.models.training import TrainConfig

    if probes < 0:
        raise ConfigError(f"--probes must be >= 1 (or 0 for a plain model), got {probes}")
    probe_config = None
    if probes:
        probe_config = ProbeConfig(n=probes, eps=probe_eps, pattern=probe_pattern, weight=probe_weight, seed=seed,
                                   per_step=probes_per_step, directions=probe_directions)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, lr_drop_epoch=lr_drop_epoch, seed=seed,
                         probes=probe_config)
    perturb = adversarial_training(adversarial) if adversarial else None
    data = load_dataset(dataset, **dataset_options(data_path))
    clf, meta = train_model(model, data, config, device=device, perturb=perturb)
    save_checkpoint(clf, out, {**meta, "adversarial_training": adversarial} if adversarial else meta)
    typer.echo(f"test accuracy {meta['clean_accuracy']:.4f}; checkpoint written to {out}")


def attack(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="checkpoint directory (neuroprint train)")],
    attack_spec: Annotated[str, typer.Option("--attack", "-a", help="attack spec, e.g. pgd or pgd:eps=0.1,steps=20")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output path without suffix (.safetensors + .json)")],
    dataset: Dataset = "mnist",
    data_path: DataPath = None,
    split: Annotated[str, typer.Option(help="split to attack: train, val or test")] = "test",
    n: Annotated[int, typer.Option("--n", "--n-images", help="number of source images (first n of the split; "
                                   "under torchrun write --n-images, as torchrun takes --n for its own)")] = 500,
    batch_size: Annotated[int, typer.Option(help="attack batch size")] = 256,
) -> None:
    """Attack the correctly classified images among the first N of a split; writes an adversarial set.

    Under `torchrun --nproc-per-node N -m neuroprint attack ...` the batches are sharded across the N ranks and
    rank 0 writes the set a single process would."""
    import torch

    from neuroprint.attacks import build_adversarial_set, make_attack
    from neuroprint.data import load_dataset
    from neuroprint.distributed import ranks
    from neuroprint.models.checkpoint import load_checkpoint

    if split not in ("train", "val", "test"):
        raise ConfigError(f"unknown split {split!r}; valid: train, val, test")
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    clf, _ = load_checkpoint(checkpoint)
    attack_obj = make_attack(attack_spec)
    part = getattr(load_dataset(dataset, **dataset_options(data_path)), split)
    index = torch.arange(min(n, len(part)))
    job = ranks()
    adv = build_adversarial_set(clf, attack_obj, part.x[index], part.y[index], source_index=index, split=split,
                                batch_size=batch_size, progress=True, ranks=job)
    if not job.main:
        return
    adv.save(out)
    ok = adv.success
    typer.echo(f"{attack_obj.name}: {int(ok.sum())}/{len(ok)} successful ({100 * float(ok.float().mean()):.1f}%); "
               f"written to {out}.safetensors and {out}.json")
