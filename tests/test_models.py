from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from neuroprint.data import DataSplits, load_dataset
from neuroprint.errors import ConfigError, InputError
from neuroprint.features import activations, extract, pool
from neuroprint.models import MODELS, Classifier, build_model
from neuroprint.models.checkpoint import (
    SHIPPED_WEIGHTS,
    load_checkpoint,
    load_or_train,
    load_user_model,
    save_checkpoint,
)
from neuroprint.models.probes import ProbeConfig
from neuroprint.models.training import TrainConfig, accuracy


@pytest.mark.parametrize(
    "name, kwargs, shape",
    [
        ("mnist-net", {}, (2, 1, 28, 28)),
        ("cifar-net", {}, (2, 3, 32, 32)),
        ("resnet", {"depth": 8}, (2, 3, 32, 32)),
        ("resnet50", {"num_classes": 10}, (2, 3, 32, 32)),
        ("small-cnn", {}, (2, 1, 8, 8)),
    ],
)
def test_zoo_models_give_logits(name: str, kwargs: dict, shape: tuple) -> None:
    clf = Classifier(build_model(name, **kwargs))
    assert clf.logits(torch.rand(shape)).shape == (2, 10)
    assert clf.num_classes == 10


def test_resnet50_has_the_imagenet_shape() -> None:
    net = build_model("resnet50")
    assert sum(p.numel() for p in net.parameters()) == 25_557_032  # torchvision's resnet50 count
    clf = Classifier(net)
    logits, outputs = clf.layer_outputs(torch.rand(1, 3, 224, 224))
    assert logits.shape == (1, 1000) and outputs["stage4"].shape == (1, 2048, 7, 7)


def test_mnist_net_follows_neuralfp_table3() -> None:
    net = build_model("mnist-net")
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 128]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert [lin.out_features for lin in linears] == [256, 256, 10]
    assert sum(isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d) for m in net.modules()) == 6


def test_resnet_depth_must_be_6n_plus_2() -> None:
    with pytest.raises(ConfigError, match="6n\\+2"):
        build_model("resnet", depth=10)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="mnist-net"):
        MODELS.get("vgg")


def test_normalisation_happens_inside() -> None:
    net = build_model("small-cnn")
    clf = Classifier(net, mean=[0.5], std=[0.25]).eval()
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(clf(x), net.eval()((x - 0.5) / 0.25))


def test_features_pooling_and_gradients(tiny_classifier: Classifier) -> None:
    x = torch.rand(4, 1, 8, 8, requires_grad=True)
    _, acts = activations(tiny_classifier, x)
    assert list(acts) == list(tiny_classifier.layers)
    assert acts["conv1"].shape == (4, 8)  # average pooled conv map
    _, flat = activations(tiny_classifier, x, ["conv1"], pooling="flatten")
    assert flat["conv1"].shape == (4, 8 * 8 * 8)
    acts["fc1"].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ConfigError, match="pooling"):
        pool(torch.zeros(1, 2, 3, 3), "max")  # type: ignore[arg-type]


def test_stats_pooling_is_mean_max_and_std_per_channel() -> None:
    t = torch.tensor([[[[0.0, 1.0], [2.0, 5.0]], [[1.0, 1.0], [1.0, 1.0]]]])  # [1, 2, 2, 2]
    stats = pool(t, "stats")  # [mean c0, mean c1, max c0, max c1, std c0, std c1]
    assert torch.allclose(stats, torch.tensor([[2.0, 1.0, 5.0, 1.0, 3.5**0.5, 0.0]]), atol=1e-5)
    assert torch.allclose(stats, torch.cat([t.mean((2, 3)), t.amax((2, 3)), t.std((2, 3), correction=0)], 1), atol=1e-5)
    assert torch.equal(pool(torch.ones(3, 4), "stats"), torch.ones(3, 4))  # vectors stay as they are
    single = torch.ones(2, 3, 1, 1, requires_grad=True)  # a 1x1 map: std ~0, with a finite gradient
    pooled = pool(single, "stats")
    pooled.sum().backward()
    assert pooled.shape == (2, 9) and torch.isfinite(pooled).all() and torch.isfinite(single.grad).all()


def test_extract_batches_and_memmaps(tiny_classifier: Classifier, digits: DataSplits, tmp_path: Path) -> None:
    x = digits.test.x[:50]
    whole = extract(tiny_classifier, x, batch_size=1000)
    batched = extract(tiny_classifier, x, batch_size=7, memmap_dir=tmp_path)
    assert len(whole) == 50 and whole.layer_names == list(tiny_classifier.layers)
    for name in whole:
        assert torch.allclose(whole[name], batched[name], atol=1e-5)
    assert torch.allclose(whole.logits, tiny_classifier(x), atol=1e-5)
    assert any(tmp_path.glob("*.npy"))


def test_extract_refuses_activations_larger_than_memory(tiny_classifier: Classifier, digits: DataSplits,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 10 kB available, 50 images' activations do not fit: a clear error in memory, fine memory-mapped."""
    monkeypatch.setattr("neuroprint.features.available_memory", lambda: 10_000)
    with pytest.raises(InputError, match=r"activations of 50 inputs x \d+ neurons need .* GiB.*memmap_dir="):
        extract(tiny_classifier, digits.test.x[:50])
    assert len(extract(tiny_classifier, digits.test.x[:50], memmap_dir=tmp_path)) == 50


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(2, 8, 8), "shape"),
        (torch.rand(0, 1, 8, 8), "empty"),
        (torch.full((2, 1, 8, 8), float("nan")), "NaN"),
        (torch.rand(2, 1, 8, 8) * 3, "outside"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "float"),
    ],
)
def test_bad_images_are_rejected(tiny_classifier: Classifier, bad: torch.Tensor, match: str) -> None:
    with pytest.raises(InputError, match=match):
        extract(tiny_classifier, bad)


def test_unknown_layer_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown layer"):
        Classifier(build_model("small-cnn"), layers=["conv9"])


def test_checkpoint_round_trip_and_cache(digits: DataSplits, tmp_path: Path) -> None:
    config = TrainConfig(epochs=1, batch_size=256)
    clf, meta, directory = load_or_train("small-cnn", digits, config, cache_dir=tmp_path, progress=False)
    assert 0.0 <= meta["clean_accuracy"] <= 1.0 and (directory / "model.safetensors").is_file()
    assert all(p.is_contiguous() for p in clf.parameters())  # trained channels_last, returned contiguous
    again, meta2, directory2 = load_or_train("small-cnn", digits, config, cache_dir=tmp_path, progress=False)
    assert directory2 == directory and meta2["clean_accuracy"] == meta["clean_accuracy"]
    x = digits.test.x[:10]
    assert torch.allclose(clf(x), again(x), atol=1e-6)
    assert again.layers == clf.layers and torch.allclose(again.mean, clf.mean)


def test_shipped_mnist_weights_load_and_keep_their_recorded_accuracy(tmp_path: Path) -> None:
    data = load_dataset("mnist")
    clf, meta, directory = load_or_train("mnist-net", data, TrainConfig(), cache_dir=tmp_path, progress=False)
    assert directory.parent == SHIPPED_WEIGHTS and not any(tmp_path.iterdir())  # loaded, nothing trained
    assert meta["clean_accuracy"] > 0.99 and meta["train_config"]["epochs"] == TrainConfig().epochs
    assert accuracy(clf, data.test) == pytest.approx(meta["clean_accuracy"], abs=1e-4)


def test_shipped_neuralfp_weights_load_with_their_probes_and_recorded_accuracy(tmp_path: Path) -> None:
    """The NeuralFP model of docs/neuralfp.md ships: its configuration loads, probes included, without training."""
    data = load_dataset("mnist")
    config = TrainConfig(epochs=2, lr_drop_epoch=1, probes=ProbeConfig(n=10, eps=0.006, per_step=2))
    clf, meta, directory = load_or_train("mnist-net", data, config, cache_dir=tmp_path, progress=False)
    assert directory.parent == SHIPPED_WEIGHTS and not any(tmp_path.iterdir())  # loaded, nothing trained
    assert clf.probes is not None and clf.probes.config == config.probes
    assert clf.probes.dx.shape == (10, 1, 28, 28) and clf.probes.dy.shape == (10, 10, 10)
    assert meta["clean_accuracy"] > 0.99 and len(meta["probe_loss"]) == config.epochs
    assert accuracy(clf, data.test) == pytest.approx(meta["clean_accuracy"], abs=1e-4)


def test_checkpoint_errors(tmp_path: Path, tiny_classifier: Classifier) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")
    save_checkpoint(tiny_classifier, tmp_path / "ck", {"architecture": "small-cnn", "arch_kwargs": {"width": 8}})
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read model weights"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "model.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_checkpoint(tmp_path / "ck")


def test_user_models_torchscript_and_import_path(tiny_classifier: Classifier, tmp_path: Path) -> None:
    x = torch.rand(3, 1, 8, 8)
    scripted = torch.jit.trace(tiny_classifier.module, (x - tiny_classifier.mean) / tiny_classifier.std)
    scripted.save(str(tmp_path / "model.pt"))
    mean, std = tiny_classifier.mean.flatten().tolist(), tiny_classifier.std.flatten().tolist()
    loaded = load_user_model(str(tmp_path / "model.pt"), mean=mean, std=std, layers=[], num_classes=10)
    assert torch.allclose(loaded(x), tiny_classifier(x), atol=1e-5)

    save_file({k: v.contiguous() for k, v in tiny_classifier.module.state_dict().items()}, str(tmp_path / "w.safetensors"))
    factory = "neuroprint.models.zoo:small_cnn"
    with pytest.raises(InputError, match="do not fit"):
        load_user_model(factory, tmp_path / "w.safetensors")  # default width 16 != 8
    torch.save(build_model("small-cnn").state_dict(), tmp_path / "w.pt")
    assert load_user_model(factory, tmp_path / "w.pt").num_classes == 10
    with pytest.raises(ConfigError, match="cannot import"):
        load_user_model("nowhere.module:factory")
    with pytest.raises(InputError, match="TorchScript"):
        load_user_model(str(tmp_path / "absent.pt"))


def test_checkpoint_of_a_user_factory_loads_by_import_path(tmp_path: Path) -> None:
    """What the README shows for torchvision's ResNet-50: wrap a factory's model, save it, load it for the CLI."""
    torch.manual_seed(0)
    user = Classifier(build_model("small-cnn", width=4), mean=[0.5], std=[0.25])
    save_checkpoint(user, tmp_path / "ck", {"architecture": "neuroprint.models.zoo:small_cnn",
                                            "arch_kwargs": {"width": 4}})
    loaded, _ = load_checkpoint(tmp_path / "ck")
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(loaded(x), user(x))
