"""`neuroprint fit`, `neuroprint score` and `neuroprint serve`: guard a checkpoint from the command line."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from neuroprint.cli.options import DataPath, dataset_options
from neuroprint.errors import ConfigError, InputError


def fit(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="checkpoint directory (neuroprint train)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="guard directory to write")],
    detector: Annotated[list[str] | None, typer.Option("--detector", help="detector spec (repeatable); default bank")] = None,
    attack: Annotated[list[str] | None, typer.Option("--attack", "-a", help="attack to fit on (repeatable); default pgd")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="images to fit on (default: the "
                                                                          "checkpoint's dataset), e.g. folder or npz")] = None,
    data_path: DataPath = None,
    fpr: Annotated[float, typer.Option(help="share of clean images each detector may flag, in (0, 1)")] = 0.05,
    n_fit: Annotated[int, typer.Option(help="validation source images (half clean, half attacked)")] = 1000,
    n_test: Annotated[int, typer.Option(help="clean test images the reached FPR is measured on (0 = skip)")] = 1000,
    seed: Annotated[int, typer.Option(help="random seed (image draw, detector sampling)")] = 0,
    key: Annotated[str, typer.Option(help="secret: the bank's fingerprints are sampled from a seed drawn from the OS "
                                          "CSPRNG and kept nowhere (keep the guard directory private); seed: from "
                                          "--seed, reproducible, and rebuildable by anyone who knows it")] = "secret",
) -> None:
    """Fit detectors on a checkpoint's validation images, calibrate them at --fpr, and write a guard directory."""
    from neuroprint.guard import GuardConfig, fit_guard

    config = GuardConfig(checkpoint=checkpoint, detectors=detector or ["bank"], attacks=attack or ["pgd"],
                         dataset=dataset, dataset_options=dataset_options(data_path),
                         fpr=fpr, n_fit=n_fit, n_test=n_test, seed=seed, key=key)
    guard = fit_guard(config, log=lambda m: typer.echo(m, err=True))
    guard.save(out)
    measured = guard.meta.get("test_fpr", {})
    for name, threshold in guard.thresholds.items():
        reached = f"; clean test FPR {100 * measured[name]:.1f}%" if name in measured else ""
        typer.echo(f"{name}: threshold {threshold:.4g}{reached}")
    if "any" in measured:
        typer.echo(f"any detector: clean test FPR {100 * measured['any']:.1f}% on {measured['n_images']} images")
    typer.echo(f"guard written to {out}")


def score(
    guard_dir: Annotated[Path, typer.Option("--guard", "-g", help="guard directory (neuroprint fit)")],
    input_path: Annotated[Path, typer.Option("--input", "-i", help="an .npz archive (array x), an image file or a folder")],
    output: Annotated[Path | None, typer.Option("--out", "-o", help="write here instead of stdout")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv")] = "jsonl",
    top_k: Annotated[int, typer.Option(help="class probabilities per image (the k largest)")] = 3,
    batch_size: Annotated[int, typer.Option(help="images per batch")] = 256,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", "-c", help="the model, if it has moved since fit")] = None,
    seeded: Annotated[bool, typer.Option("--seeded", help="reproducible draws instead of the OS CSPRNG")] = False,
) -> None:
    """Classify and score images with a guard: one JSON line (or CSV row) per image, a summary on stderr.

    Under `torchrun --nproc-per-node N -m neuroprint score ...` every rank reads and scores its block of batches
    and rank 0 writes all lines, in input order."""
    import io

    import torch
    from tqdm import tqdm

    from neuroprint.distributed import ranks
    from neuroprint.guard import Guard
    from neuroprint.guard.inputs import input_batches
    from neuroprint.io import atomic_path

    if fmt not in ("jsonl", "csv"):
        raise ConfigError(f"--format must be jsonl or csv, got {fmt!r}")
    if top_k < 1 or batch_size < 1:
        raise ConfigError(f"--top-k and --batch-size must be >= 1, got {top_k} and {batch_size}")
    job = ranks()
    guard = Guard.load(guard_dir, checkpoint, draws="seeded" if seeded else "secure")
    count, batches = input_batches(input_path, guard.image_shape, batch_size, job)
    keys = list(guard.detectors)
    flagged = 0

    def write(stream: typer.FileTextWrite) -> None:
        nonlocal flagged
        if fmt == "csv" and job.main:
            stream.write(",".join(["file", "label", "probability", *[f"score_{k}" for k in keys], "flagged"]) + "\n")
        with tqdm(total=count, unit="img", desc="scoring", file=sys.stderr, disable=not job.main) as bar:
            for names, x in batches:
                for name, record in zip(names, guard.score(x).records(guard.thresholds, top_k)):
                    flagged += record["flagged"]
                    stream.write(_line(fmt, name, record, keys))
                bar.update(len(x))

    produce = write
    if job.world > 1:  # every rank's lines, gathered in rank order: the input order
        mine = io.StringIO()
        write(mine)  # type: ignore[arg-type]
        text = job.gather_text(mine.getvalue())
        count, flagged = (int(job.gather_rows(torch.tensor([n])).sum()) for n in (count, flagged))
        if not job.main:
            return

        def write_gathered(stream: typer.FileTextWrite) -> None:
            stream.write(text)

        produce = write_gathered
    if output is None:
        produce(sys.stdout)  # type: ignore[arg-type]
    else:
        with atomic_path(output) as tmp, tmp.open("w") as stream:
            produce(stream)  # type: ignore[arg-type]
    typer.echo(f"{count} images scored, {flagged} flagged ({100 * flagged / max(count, 1):.1f}%) by "
               f"{', '.join(keys)} at FPR {guard.meta.get('fpr')}", err=True)


def _line(fmt: str, name: str, record: dict[str, Any], keys: list[str]) -> str:
    detectors = record["detectors"]
    if fmt == "jsonl":
        return json.dumps({"file": name, **record}) + "\n"
    probabilities = record["probabilities"]
    top = max(probabilities.values()) if isinstance(probabilities, dict) else 0.0
    cells = [json.dumps(name), str(record["label"]), f"{top:.6f}", *[f"{detectors[k]['score']:.6g}" for k in keys],
             str(record["flagged"]).lower()]
    return ",".join(cells) + "\n"


def serve(
    guard_dir: Annotated[Path, typer.Option("--guard", "-g", help="guard directory (neuroprint fit)")],
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", "-c", help="the model, if it has moved since fit")] = None,
    api_key_file: Annotated[Path | None, typer.Option(help="file holding the API key clients must send")] = None,
    model_name: Annotated[str, typer.Option(help="model name on the Open Inference Protocol routes")] = "guard",
    max_batch: Annotated[int, typer.Option(help="most images per micro-batch (max-batch / workers while another "
                                                "model thread is idle)")] = 64,
    max_wait_ms: Annotated[float, typer.Option(help="how long a request waits for others to batch with")] = 5.0,
    max_images: Annotated[int, typer.Option(help="images per request")] = 256,
    workers: Annotated[int, typer.Option(help="model threads scoring micro-batches at once, each with "
                                              "CPUs / workers torch threads (see BENCHMARKS.md)")] = 2,
    max_body_mb: Annotated[float, typer.Option(help="request body limit (MiB)")] = 8.0,
    timeout_s: Annotated[float, typer.Option(help="scoring time limit per request (seconds)")] = 30.0,
    attack: Annotated[bool, typer.Option("--attack/--no-attack", help="the web page's server-side PGD button")] = True,
    seeded: Annotated[bool, typer.Option("--seeded", help="reproducible draws instead of the OS CSPRNG")] = False,
) -> None:
    """Serve a guard over HTTP: classify + flag per request, a web page at /, the Open Inference Protocol at /v2."""
    import torch
    import uvicorn

    from neuroprint.guard import Guard
    from neuroprint.guard.heap import cap_arenas
    from neuroprint.guard.service import ServiceSettings, create_app

    if not 0 < port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {port}")
    if max_body_mb <= 0 or timeout_s <= 0 or max_batch < 1 or max_images < 1 or workers < 1 or max_wait_ms < 0:
        raise ConfigError("--max-body-mb, --timeout-s, --max-batch, --max-images and --workers must be > 0, "
                          "--max-wait-ms >= 0")
    api_key = None
    if api_key_file is not None:
        try:
            api_key = api_key_file.read_text().strip()
        except OSError as exc:
            raise InputError(f"cannot read the API key file {api_key_file} ({exc.strerror})") from None
        if not api_key:
            raise InputError(f"the API key file {api_key_file} is empty")
    # Several model threads get one share of the cores each: a thread that waits for the event loop stalls only
    # itself, not every OpenMP thread of one model (BENCHMARKS.md, guard service).
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    cap_arenas(workers + 1)  # the model threads and the event loop
    guard = Guard.load(guard_dir, checkpoint, draws="seeded" if seeded else "secure")
    settings = ServiceSettings(max_body_bytes=int(max_body_mb * 1024 * 1024), max_images=max_images,
                               max_batch=max_batch, workers=workers, max_wait_ms=max_wait_ms, timeout_s=timeout_s,
                               model_name=model_name, api_key=api_key, attack=attack)
    uvicorn.run(create_app(guard, settings), host=host, port=port, log_level="info", timeout_keep_alive=5)
