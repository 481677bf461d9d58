"""torchrun sharding: the blocks of batches, the per-batch seeds, and 2-process gloo runs of `evaluate` (sharded
attacks and activations), `robustness` and `score` that give exactly the 1-process output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from neuroprint.data import DataSplits
from neuroprint.distributed import SINGLE, Ranks, batch_seed

TIMING = ("seconds", "fit_seconds", "score_seconds_per_image", "ms_per_image_step")


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize(("n_items", "batch_size"), [(1, 4), (10, 3), (64, 16), (7, 100)])
def test_ranks_cover_every_batch_once_in_order(world: int, n_items: int, batch_size: int) -> None:
    blocks = [list(Ranks(rank, world).batches(n_items, batch_size)) for rank in range(world)]
    assert [b for block in blocks for b in block] == list(range(-(-n_items // batch_size)))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_single_rank_gathers_and_agrees_without_a_process_group() -> None:
    part = torch.arange(6).reshape(3, 2)
    assert SINGLE.gather_rows(part) is part and SINGLE.agree(True) and SINGLE.share(0.25) == 0.25
    assert SINGLE.device("cuda") == "cuda" and Ranks(1, 2, local_rank=1).device("cuda") == "cuda:1"


def test_batch_seeds_depend_on_seed_and_position() -> None:
    seeds = {batch_seed(seed, start) for seed in range(3) for start in (0, 1, 32, 64)}
    assert len(seeds) == 12 and all(0 <= s < 2**63 for s in seeds)
    assert batch_seed(0, 32) == batch_seed(0, 32)


def _run(args: list[str], processes: int, tmp_path: Path, name: str) -> dict[str, Any]:
    """`neuroprint ARGS` in 1 process or under torchrun with `processes` gloo ranks; returns its JSON record
    without the timings."""
    launcher = [sys.executable, "-m", "neuroprint"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
        "-m", "neuroprint"]
    out = tmp_path / f"{name}.json"
    done = subprocess.run([*launcher, *args, "--out-dir", str(tmp_path / name), "--json", str(out), "--cache-dir",
                           str(tmp_path / f"cache-{name}")], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return _without_timings(json.loads(out.read_text()))


def _without_timings(record: Any) -> Any:
    if isinstance(record, dict):
        return {k: _without_timings(v) for k, v in record.items() if k not in (*TIMING, "command")}
    return [_without_timings(v) for v in record] if isinstance(record, list) else record


def test_two_process_evaluate_equals_one_process(guard_checkpoint: Path, tmp_path: Path) -> None:
    """PGD's random starts and every batch land on the same images whichever rank runs them, and LID is fit and
    scored on activations each rank extracts for its block (Mahalanobis, which pre-processes, on the images)."""
    args = ["evaluate", "-d", "digits", "-m", str(guard_checkpoint), "--detector", "mahalanobis", "--detector",
            "lid:batch_size=50", "-a", "fgsm", "-a", "pgd:steps=5", "--n-fit", "270", "--n-test", "200",
            "--batch-size", "32"]
    one, two = _run(args, 1, tmp_path, "one"), _run(args, 2, tmp_path, "two")
    assert one["attacks"][1]["n_attacked"] > 2 * 32  # three batches or more, so both ranks attacked
    assert one == two


def test_two_process_robustness_equals_one_process(guard_checkpoint: Path, tmp_path: Path) -> None:
    """The adaptive suite with random restarts, sharded: same images, verdicts and convergence curves."""
    args = ["robustness", "-d", "digits", "-m", str(guard_checkpoint), "--detector", "mahalanobis", "--eps", "0.1",
            "-a", "joint", "-a", "orthogonal", "--n-fit", "270", "--n-attack", "40", "--steps", "5", "--restarts", "2",
            "--batch-size", "16"]
    one, two = _run(args, 1, tmp_path, "one"), _run(args, 2, tmp_path, "two")
    assert len(one["outcomes"][0]["attacks"][0]["curve"]) == 10
    assert one == two


def test_two_process_score_writes_every_line_in_input_order(guard_dir: Path, digits: DataSplits,
                                                             tmp_path: Path) -> None:
    """Each rank reads only its block of a folder; rank 0 writes all lines, as one process would (seeded draws)."""
    for i, image in enumerate(digits.test.x[:21]):
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.fromarray((image[0].numpy() * 255).astype(np.uint8)).save(tmp_path / "images" / f"{i:02d}.png")
    outputs = []
    for processes in (1, 2):
        args = ["score", "-g", str(guard_dir), "-i", str(tmp_path / "images"), "--batch-size", "4", "--seeded",
                "--format", "csv", "-o", str(tmp_path / f"{processes}.csv")]
        launcher = [sys.executable, "-m", "neuroprint"] if processes == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "neuroprint"]
        done = subprocess.run([*launcher, *args], capture_output=True, text=True, timeout=300, check=False,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        assert "21 images scored" in done.stderr
        outputs.append((tmp_path / f"{processes}.csv").read_text())
    assert outputs[0] == outputs[1] and len(outputs[0].splitlines()) == 22
