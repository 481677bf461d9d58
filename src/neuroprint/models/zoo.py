"""Model zoo: the architectures of the NeuralFP paper (Dathathri et al. 2018, arXiv 1803.03870), a CIFAR ResNet and
the ImageNet ResNet-50 (He et al. 2016, arXiv 1512.03385; the width the fingerprint-bank paper evaluates at).

Every model is an `nn.Sequential` of named blocks, so the block names (`conv1`, ..., `fc2`, `logits`) are the
feature-layer names detectors use.
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from neuroprint.errors import ConfigError
from neuroprint.registry import MODELS


def _conv_block(c_in: int, c_out: int, padding: int = 0) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=padding), nn.ReLU(), nn.BatchNorm2d(c_out))


def _fc_block(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU(), nn.BatchNorm1d(n_out))


@MODELS.register("mnist-net")
def mnist_net(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Sequential:
    """NeuralFP Table 3: 4 x (conv3x3 + ReLU + BN) with two 2x2 max-pools, 2 x (FC 256 + ReLU + BN), FC to logits.

    Input `[N, in_channels, image_size, image_size]`; valid (unpadded) convolutions as in the reference code.
    """
    return _conv_pairs_net("mnist-net", in_channels, (32, 64, 128, 128), (256, 256), num_classes, image_size)


@MODELS.register("cifar-net")
def cifar_net(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> nn.Sequential:
    """NeuralFP Table 4 (the CIFAR model of Ma et al. 2018): 2 x conv64, pool, 2 x conv128, pool, FC 1024, 512."""
    return _conv_pairs_net("cifar-net", in_channels, (64, 64, 128, 128), (1024, 512), num_classes, image_size)


def _conv_pairs_net(name: str, in_channels: int, convs: tuple[int, int, int, int], fcs: tuple[int, int],
                    num_classes: int, image_size: int) -> nn.Sequential:
    """Two pairs of valid 3x3 conv blocks, each pair followed by a 2x2 max-pool, then two FC blocks and logits."""
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        raise ConfigError(f"image_size must be >= 14 for {name}, got {image_size}")
    return nn.Sequential(
        OrderedDict(
            conv1=_conv_block(in_channels, convs[0]),
            conv2=_conv_block(convs[0], convs[1]),
            pool1=nn.MaxPool2d(2),
            conv3=_conv_block(convs[1], convs[2]),
            conv4=_conv_block(convs[2], convs[3]),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=_fc_block(convs[3] * side * side, fcs[0]),
            fc2=_fc_block(fcs[0], fcs[1]),
            logits=nn.Linear(fcs[1], num_classes),
        )
    )


class _Residual(nn.Module):
    """relu(body(x) + shortcut(x)), the shortcut a strided 1x1 convolution where the shape changes (He et al. 2016)."""

    def __init__(self, body: nn.Sequential, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = body
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU()

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.relu(self.body(x) + self.shortcut(x))


def _basic_block(c_in: int, c_out: int, stride: int) -> _Residual:
    """Two 3x3 convolutions, the first carrying the stride."""
    return _Residual(nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
    ), c_in, c_out, stride)


def _bottleneck(c_in: int, width: int, stride: int) -> _Residual:
    """1x1 reduce to `width`, 3x3 (carrying the stride), 1x1 expand to `4 * width` channels."""
    return _Residual(nn.Sequential(
        nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 4 * width, 1, bias=False), nn.BatchNorm2d(4 * width),
    ), c_in, 4 * width, stride)


@MODELS.register("resnet")
def resnet(depth: int = 20, in_channels: int = 3, num_classes: int = 10) -> nn.Sequential:
    """CIFAR-style ResNet of He et al. 2016 (depth 6n+2, stage widths 16/32/64, global average pooling)."""
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"resnet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
    n = (depth - 2) // 6
    blocks: dict[str, nn.Module] = {
        "stem": nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
    }
    c_in = 16
    for stage, width in enumerate((16, 32, 64), start=1):
        layers = [_basic_block(c_in if i == 0 else width, width, 2 if (i == 0 and stage > 1) else 1) for i in range(n)]
        blocks[f"stage{stage}"] = nn.Sequential(*layers)
        c_in = width
    blocks["pool"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    blocks["logits"] = nn.Linear(64, num_classes)
    return nn.Sequential(OrderedDict(**blocks))


@MODELS.register("resnet50")
def resnet50(in_channels: int = 3, num_classes: int = 1000) -> nn.Sequential:
    """ImageNet ResNet-50 of He et al. 2016 (arXiv 1512.03385): 7x7 stem and max-pool, bottleneck stages of 3, 4,
    6 and 3 blocks ending in 256, 512, 1,024 and 2,048 channels, global average pooling. Input `[N, 3, 224, 224]`
    (any size from 32 up); feature layers `stem`, `stage1`..`stage4`, `pool`, `logits`."""
    blocks: dict[str, nn.Module] = {"stem": nn.Sequential(
        nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))}
    c_in = 64
    for stage, (width, depth) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        stride = 1 if stage == 1 else 2
        blocks[f"stage{stage}"] = nn.Sequential(*[_bottleneck(c_in if i == 0 else 4 * width, width,
                                                             stride if i == 0 else 1) for i in range(depth)])
        c_in = 4 * width
    blocks["pool"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    blocks["logits"] = nn.Linear(c_in, num_classes)
    return nn.Sequential(OrderedDict(**blocks))


@MODELS.register("small-cnn")
def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 16) -> nn.Sequential:
    """A small CNN for any image size (tests, the `digits` dataset): 2 conv blocks, global pooling, 2 FC layers."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()),
            conv2=nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU()),
            pool=nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten()),
            fc1=nn.Sequential(nn.Linear(8 * width, 64), nn.ReLU()),
            logits=nn.Linear(64, num_classes),
        )
    )


@MODELS.register("lenet5")
def lenet5(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Sequential:
    """LeNet-5 of LeCun et al. 1998 with ReLU and max-pooling: conv5x5(6, padded) + pool, conv5x5(16) + pool,
    FC 120, FC 84, logits. Input `[N, in_channels, image_size, image_size]`; about 10x cheaper than `mnist-net`,
    so the ownership experiments (many models per run) use it."""
    side = (image_size // 2 - 4) // 2
    if side < 1:
        raise ConfigError(f"image_size must be >= 12 for lenet5, got {image_size}")
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Sequential(nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)),
            conv2=nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)),
            flatten=nn.Flatten(),
            fc1=nn.Sequential(nn.Linear(16 * side * side, 120), nn.ReLU()),
            fc2=nn.Sequential(nn.Linear(120, 84), nn.ReLU()),
            logits=nn.Linear(84, num_classes),
        )
    )
