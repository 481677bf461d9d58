"""The guard: fitting, saving and loading, draws, input parsing, micro-batching, and the fit/score commands."""
from __future__ import annotations

import asyncio
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from neuroprint.cli import app
from neuroprint.data import DataSplits
from neuroprint.errors import ConfigError, InputError
from neuroprint.guard import Guard, GuardConfig
from neuroprint.guard.batcher import MicroBatcher
from neuroprint.guard.fit import detector_keys
from neuroprint.guard.heap import HeapTrimmer, cap_arenas
from neuroprint.guard.inputs import image_from_bytes, image_to_png, images_from_lists, input_batches
from neuroprint.guard.openinference import infer_response, parse_infer_request


def test_fit_writes_a_self_describing_guard(guard_dir: Path, guard_checkpoint: Path) -> None:
    record = json.loads((guard_dir / "guard.json").read_text())
    assert record["model"]["checkpoint"] == str(guard_checkpoint.resolve())
    assert len(record["model"]["sha256"]) == 64
    assert record["image_shape"] == [1, 8, 8] and record["fpr"] == 0.05 and record["draws"] == "secure"
    assert [d["key"] for d in record["detectors"]] == ["bank", "mahalanobis"]
    assert all(np.isfinite(d["threshold"]) for d in record["detectors"])
    assert set(record["test_fpr"]) == {"bank", "mahalanobis", "any", "n_images"}
    assert 0.0 <= record["test_fpr"]["any"] <= 0.3
    assert record["fit"]["attacks"][0]["n_success"] > 0 and "git" in record and "torch" in record["versions"]
    assert sorted(p.name for p in (guard_dir / "detectors").iterdir()) == ["bank", "mahalanobis"]
    assert not [p for p in guard_dir.parent.iterdir() if p.name.startswith(".guard")]  # no temp dir left behind


def test_seeded_reload_scores_identically_and_secure_draws_differ(guard_dir: Path, digits: DataSplits) -> None:
    x = digits.test.x[:32]
    first, second = Guard.load(guard_dir, draws="seeded").score(x), Guard.load(guard_dir, draws="seeded").score(x)
    for key in first.scores:
        assert torch.equal(first.scores[key], second.scores[key])
    assert torch.equal(first.labels, second.labels) and torch.equal(first.flagged, second.flagged)
    secure = Guard.load(guard_dir)
    assert not torch.equal(secure.score(x).scores["bank"], secure.score(x).scores["bank"])
    assert torch.equal(secure.score(x).scores["mahalanobis"], first.scores["mahalanobis"])  # not randomized


def test_scores_are_consistent(guard_dir: Path, digits: DataSplits) -> None:
    guard = Guard.load(guard_dir, draws="seeded")
    result = guard.score(digits.test.x[:20])
    assert result.probabilities.shape == (20, 10)
    assert torch.allclose(result.probabilities.sum(1), torch.ones(20), atol=1e-5)
    assert torch.equal(result.labels, guard.classifier.predict(digits.test.x[:20]))
    for key, threshold in guard.thresholds.items():
        assert torch.equal(result.flags[key], result.scores[key] > threshold)
    assert torch.equal(result.flagged, result.flags["bank"] | result.flags["mahalanobis"])
    records = result.records(guard.thresholds, top_k=3)
    assert len(records[0]["probabilities"]) == 3 and records[0]["label"] == int(result.labels[0])
    part = result.slice(5, 9)
    assert len(part) == 4 and torch.equal(part.scores["bank"], result.scores["bank"][5:9])


def test_a_changed_model_is_refused(guard_dir: Path, guard_checkpoint: Path, tmp_path: Path) -> None:
    moved = tmp_path / "model"
    shutil.copytree(guard_checkpoint, moved)
    assert Guard.load(guard_dir, checkpoint=moved).num_classes == 10  # same bytes elsewhere: accepted
    meta = json.loads((moved / "model.json").read_text())
    (moved / "model.json").write_text(json.dumps({**meta, "clean_accuracy": 0.5}))
    with pytest.raises(InputError, match="not the one this guard was fit on"):
        Guard.load(guard_dir, checkpoint=moved)


def test_broken_guard_directories_are_one_line_errors(guard_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="expected a guard directory"):
        Guard.load(tmp_path / "missing")
    broken = tmp_path / "broken"
    shutil.copytree(guard_dir, broken)
    (broken / "guard.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        Guard.load(broken)
    (broken / "guard.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(InputError, match="unsupported guard format"):
        Guard.load(broken)


def test_guard_config_rejects_bad_values(guard_checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match="unknown"):
        GuardConfig(checkpoint=guard_checkpoint, detectors=["no-such-detector"])
    with pytest.raises(ConfigError, match="fpr"):
        GuardConfig(checkpoint=guard_checkpoint, fpr=1.0)
    with pytest.raises(ConfigError, match="at least one detector"):
        GuardConfig(checkpoint=guard_checkpoint, detectors=[])
    with pytest.raises(ConfigError, match="draws"):
        GuardConfig(checkpoint=guard_checkpoint, draws="fixed")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="key must be one of secret, seed; got .public."):
        GuardConfig(checkpoint=guard_checkpoint, key="public")
    assert detector_keys(["bank", "bank:k=5", "lid", "bank"]) == ["bank", "bank-2", "lid", "bank-3"]


def test_guard_keys_the_bank_secretly_unless_asked_for_the_seed(guard_checkpoint: Path) -> None:
    secret = GuardConfig(checkpoint=guard_checkpoint, detectors=["bank", "lid"])
    assert secret.detector("bank").get_params()["secret_key"] is True
    assert secret.detector("bank:secret_key=false").get_params()["secret_key"] is False  # the spec wins
    assert GuardConfig(checkpoint=guard_checkpoint, key="seed").detector("bank").get_params()["secret_key"] is False
    assert "secret_key" not in secret.detector("lid").get_params()


def test_images_from_lists_checks_shape_values_and_numbers() -> None:
    shape = (1, 8, 8)
    assert images_from_lists(torch.rand(3, 1, 8, 8).tolist(), shape).shape == (3, 1, 8, 8)
    assert images_from_lists(torch.rand(2, 8, 8).tolist(), shape).shape == (2, 1, 8, 8)  # one channel implied
    bad = [([], "non-empty list"), ([[1, 2]], "shape"), ([[[0.5] * 8] * 7 + [[0.5] * 7]], "ragged"),
           ([[["a"] * 8] * 8], "non-numeric"), ([[[float("nan")] * 8] * 8], "NaN"), ([[[1.5] * 8] * 8], r"\[0, 1\]"),
           ("text", "non-empty list")]
    for value, message in bad:
        with pytest.raises(InputError, match=message):
            images_from_lists(value, shape)


def test_image_files_are_converted_resized_and_checked(digits: DataSplits) -> None:
    png = image_to_png(digits.test.x[0])
    assert torch.allclose(image_from_bytes(png, (1, 8, 8)), digits.test.x[:1], atol=1 / 255)
    assert image_from_bytes(png, (3, 16, 16)).shape == (1, 3, 16, 16)
    with pytest.raises(InputError, match="not a readable image"):
        image_from_bytes(b"GIF89a-truncated", (1, 8, 8), "x.gif")


def test_input_batches_reads_npz_files_and_folders(digits: DataSplits, tmp_path: Path) -> None:
    np.savez(tmp_path / "images.npz", x=digits.test.x[:5].numpy())
    total, batches = input_batches(tmp_path / "images.npz", (1, 8, 8), batch_size=2)
    chunks = list(batches)
    assert total == 5 and [len(x) for _, x in chunks] == [2, 2, 1] and chunks[0][0] == ["images.npz#0", "images.npz#1"]
    folder = tmp_path / "pngs"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        (folder / ("sub" if i else "") / f"{i}.png").write_bytes(image_to_png(digits.test.x[i]))
    (folder / "notes.txt").write_text("not an image")
    total, batches = input_batches(folder, (1, 8, 8), batch_size=8)
    names, x = next(batches)
    assert total == 3 and names == ["0.png", "sub/1.png", "sub/2.png"] and x.shape == (3, 1, 8, 8)
    np.savez(tmp_path / "other.npz", a=np.zeros(3), b=np.zeros(3))
    with pytest.raises(InputError, match="expected an array named x"):
        input_batches(tmp_path / "other.npz", (1, 8, 8), 2)
    with pytest.raises(InputError, match="does not exist"):
        input_batches(tmp_path / "missing", (1, 8, 8), 2)


def test_micro_batcher_groups_concurrent_requests_and_keeps_order(guard_dir: Path, digits: DataSplits) -> None:
    guard = Guard.load(guard_dir, draws="seeded")
    sizes: list[int] = []

    async def run() -> list[torch.Tensor]:
        batcher = MicroBatcher(guard.score, max_batch=16, max_wait_ms=50, on_batch=lambda n, _: sizes.append(n))
        batcher.start()
        try:
            parts = [digits.test.x[i : i + 3] for i in range(0, 30, 3)]
            results = await asyncio.gather(*(batcher.submit(x, lambda rows: rows) for x in parts))
        finally:
            await batcher.stop()
        return [r.labels for r in results]

    labels = torch.cat(asyncio.run(run()))
    assert torch.equal(labels, guard.classifier.predict(digits.test.x[:30]))
    assert sum(sizes) == 30 and max(sizes) > 3 and max(sizes) <= 16


def test_micro_batcher_runs_several_batches_at_once(guard_dir: Path, digits: DataSplits) -> None:
    import threading

    guard = Guard.load(guard_dir, draws="seeded")
    running, most = [0], [0]
    lock = threading.Lock()

    def slow_score(x: torch.Tensor) -> Any:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        try:
            return guard.score(x)
        finally:
            with lock:
                running[0] -= 1

    async def run() -> list[torch.Tensor]:
        batcher = MicroBatcher(slow_score, max_batch=4, max_wait_ms=1, workers=2)
        batcher.start()
        try:
            results = await asyncio.gather(*(batcher.submit(digits.test.x[i : i + 4], lambda rows: rows)
                                             for i in range(0, 16, 4)))
        finally:
            await batcher.stop()
        return [r.labels for r in results]

    labels = torch.cat(asyncio.run(run()))
    assert torch.equal(labels, guard.classifier.predict(digits.test.x[:16])) and most[0] == 2


def test_micro_batcher_shares_a_burst_between_idle_workers(guard_dir: Path, digits: DataSplits) -> None:
    guard = Guard.load(guard_dir, draws="seeded")
    sizes: list[int] = []

    async def run() -> list[torch.Tensor]:
        batcher = MicroBatcher(guard.score, max_batch=8, max_wait_ms=50, workers=2,
                               on_batch=lambda n, _: sizes.append(n))
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(digits.test.x[i : i + 1], lambda rows: rows.labels)
                                          for i in range(8)))
        finally:
            await batcher.stop()

    labels = torch.cat(asyncio.run(run()))
    assert torch.equal(labels, guard.classifier.predict(digits.test.x[:8]))
    assert sorted(sizes) == [4, 4]  # both workers idle: half of max_batch each, not 8 for one of them


def test_micro_batcher_fails_only_the_request_whose_finish_raises(guard_dir: Path, digits: DataSplits) -> None:
    guard = Guard.load(guard_dir, draws="seeded")

    def refuse(_: object) -> None:
        raise InputError("this request's response cannot be rendered")

    async def run() -> list[object]:
        batcher = MicroBatcher(guard.score, max_batch=16, max_wait_ms=50)
        batcher.start()
        try:
            return await asyncio.gather(batcher.submit(digits.test.x[:3], lambda rows: rows.labels),
                                        batcher.submit(digits.test.x[3:6], refuse), return_exceptions=True)
        finally:
            await batcher.stop()

    labels, failure = asyncio.run(run())
    assert torch.equal(labels, guard.classifier.predict(digits.test.x[:3]))  # type: ignore[arg-type]
    assert isinstance(failure, InputError) and "cannot be rendered" in str(failure)


def test_open_inference_binary_and_json_requests_parse_alike(digits: DataSplits) -> None:
    x = digits.test.x[:2]
    tensor = {"name": "images", "shape": [2, 1, 8, 8], "datatype": "FP32"}
    as_json = json.dumps({"id": "r1", "inputs": [{**tensor, "data": x.flatten().tolist()}]}).encode()
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": x.numel() * 4}}],
                         "outputs": [{"name": "label"}]}).encode()
    images, request_id, outputs = parse_infer_request(as_json, None, (1, 8, 8))
    binary, _, requested = parse_infer_request(header + x.numpy().astype("<f4").tobytes(), str(len(header)), (1, 8, 8))
    assert torch.equal(images, x) and torch.equal(binary, x)
    assert (request_id, outputs, requested) == ("r1", None, ["label"])
    for body, length, message in [(header, "99999", "Inference-Header-Content-Length"),
                                  (b"[1]", None, "inputs"),
                                  (json.dumps({"inputs": [{**tensor, "datatype": "INT8", "data": []}]}).encode(), None,
                                   "datatype"),
                                  (json.dumps({"inputs": [{**tensor, "data": [0.5] * 3}]}).encode(), None, "holds 3")]:
        with pytest.raises(InputError, match=message):
            parse_infer_request(body, length, (1, 8, 8))


def test_infer_response_names_and_shapes(guard_dir: Path, digits: DataSplits) -> None:
    scores = Guard.load(guard_dir, draws="seeded").score(digits.test.x[:3])
    response = infer_response("guard", "r1", scores, None)
    shapes = {o["name"]: (o["datatype"], o["shape"]) for o in response["outputs"]}
    assert shapes["label"] == ("INT64", [3]) and shapes["probabilities"] == ("FP32", [3, 10])
    assert shapes["score_bank"] == ("FP32", [3]) and shapes["flagged_mahalanobis"] == ("BOOL", [3])
    assert response["id"] == "r1"
    with pytest.raises(InputError, match="unknown output"):
        infer_response("guard", None, scores, ["nope"])


def test_fit_and_score_commands(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                guard_checkpoint: Path, digits: DataSplits, tmp_path: Path) -> None:
    monkeypatch.setattr("sys.argv", ["neuroprint"])
    out = tmp_path / "guard"
    app(["fit", "-c", str(guard_checkpoint), "--detector", "mahalanobis", "--attack", "fgsm", "--n-fit", "200",
         "--n-test", "50", "-o", str(out)], standalone_mode=False)
    printed = capsys.readouterr().out
    assert "mahalanobis: threshold" in printed and "clean test FPR" in printed and (out / "guard.json").is_file()
    np.savez(tmp_path / "x.npz", x=(digits.test.x[:6].numpy() * 255).astype(np.uint8))
    app(["score", "-g", str(out), "-i", str(tmp_path / "x.npz"), "--seeded"], standalone_mode=False)
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["file"] for r in lines] == [f"x.npz#{i}" for i in range(6)]
    assert {"label", "probabilities", "detectors", "flagged"} <= set(lines[0]) and len(lines[0]["probabilities"]) == 3
    assert "6 images scored" in captured.err
    app(["score", "-g", str(out), "-i", str(tmp_path / "x.npz"), "--format", "csv", "-o", str(tmp_path / "s.csv")],
        standalone_mode=False)
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert rows[0] == "file,label,probability,score_mahalanobis,flagged" and len(rows) == 7


@pytest.mark.parametrize(("args", "message"), [
    (["score", "-g", "/nonexistent/guard", "-i", "x.npz"], "expected a guard directory"),
    (["score", "-g", "GUARD", "-i", "/nonexistent/images"], "does not exist"),
    (["score", "-g", "GUARD", "-i", "x", "--format", "xml"], "--format must be jsonl or csv"),
    (["serve", "-g", "GUARD", "--port", "70000"], "--port must be in"),
    (["serve", "-g", "GUARD", "--api-key-file", "/nonexistent/key"], "cannot read the API key file"),
    (["fit", "-c", "/nonexistent/ck", "-o", "out"], "checkpoint directory"),
    (["fit", "-c", "CKPT", "-o", "out", "--fpr", "1.5"], "fpr must be"),
])
def test_guard_commands_bad_input_is_one_line_exit_2(args: list[str], message: str, guard_dir: Path,
                                                     guard_checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from neuroprint.cli import main

    args = [str(guard_dir) if a == "GUARD" else str(guard_checkpoint) if a == "CKPT" else a for a in args]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["neuroprint", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1


def test_scoring_from_several_threads_at_once_matches_one_at_a_time(guard_dir: Path, digits: DataSplits) -> None:
    from concurrent.futures import ThreadPoolExecutor

    guard = Guard.load(guard_dir, draws="seeded")
    parts = [digits.test.x[i : i + 16] for i in range(0, 160, 16)]
    expected = [guard.score(x) for x in parts]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):  # the service's model threads share one model (and its forward hooks)
            for want, got in zip(expected, pool.map(guard.score, parts)):
                assert torch.equal(want.labels, got.labels)
                for key in want.scores:
                    assert torch.allclose(want.scores[key], got.scores[key], atol=1e-5)


def test_heap_bounds_take_effect_on_glibc_and_are_skipped_elsewhere() -> None:
    glibc = platform.libc_ver()[0] == "glibc"
    assert cap_arenas(8) is glibc
    trimmer = HeapTrimmer(interval_s=0.0)
    trimmer()
    assert trimmer.active is glibc
