"""Command-line options shared by several commands, and small helpers they share."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from neuroprint.models.training import TrainConfig

Dataset = Annotated[str, typer.Option("--dataset", "-d", help="dataset name or spec (see `neuroprint list`), "
                                                              "e.g. folder:image_size=224")]
DataPath = Annotated[str | None, typer.Option("--data-path", help="directory/file for cifar10, folder, npz, mnist (mnist.pkl.gz, "
                                                                  "mnist.npz or a directory of the IDX files)")]
Seed = Annotated[int, typer.Option(help="random seed (data order, sampling)")]
Device = Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1, ...")]
Model = Annotated[str, typer.Option("--model", "-m", help="architecture to train/cache, or a checkpoint dir")]
Epochs = Annotated[int, typer.Option(help="training epochs when the model is trained here")]
NFit = Annotated[int, typer.Option(help="validation source images (half clean, half attacked)")]
JsonPath = Annotated[Path | None, typer.Option("--json", help="also write the JSON record here")]
BatchSize = Annotated[int, typer.Option(help="images per attack batch (also the unit torchrun shards by)")]
CacheDir = Annotated[Path, typer.Option(help="cache of trained models, adversarial sets and adaptive attacks")]


def dataset_options(data_path: str | None) -> dict[str, object]:
    return {} if data_path is None else {"path": data_path}


def train_config(epochs: int, seed: int) -> TrainConfig:
    """How `evaluate` and `robustness` train a zoo model they do not find in the cache (lr drop in the last epoch)."""
    from neuroprint.models.training import TrainConfig

    return TrainConfig(epochs=epochs, lr_drop_epoch=min(3, epochs - 1), seed=seed)


def echo(message: str) -> None:
    typer.echo(message, err=True)
