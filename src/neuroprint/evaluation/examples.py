"""Example images for the report: a few attacked test images with their clean sources and perturbations.

Examples are the first `k` successful adversarial examples of an attack on the test split, in source-index
order: no selection by how the detectors fare on them. Images are stored as base64 PNG strings, so the JSON
record stays small and the HTML report shows them without any image library.
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from neuroprint.attacks import AdversarialSet
from neuroprint.data import Split


@dataclass
class Example:
    """One attacked test image (pixels shown in the classifier's bounds).

    `source_index` is its index in the test split; `label` the true class, `adv_pred` the class the attack
    led the classifier to; `l2` and `linf` the perturbation's size in pixel units. `clean_png`,
    `adversarial_png` and `perturbation_png` are base64 PNGs; the perturbation is shown as
    ``0.5 + amplification * (x_adv - x)`` (single-channel images through a blue-white-red colour map:
    white = unchanged, red = brighter).
    """

    attack: str
    source_index: int
    label: int
    adv_pred: int
    l2: float
    linf: float
    clean_png: str
    adversarial_png: str
    perturbation_png: str
    amplification: float


def pick_examples(
    spec: str, adv: AdversarialSet, split: Split, k: int, bounds: tuple[float, float] = (0.0, 1.0)
) -> tuple[list[Example], torch.Tensor, torch.Tensor]:
    """The first `k` successful examples of `adv` (attack `spec` on `split`): the `Example` records and the
    clean and adversarial images `[k, C, H, W]` (for the detectors to score)."""
    ok = adv.successful()
    pick = torch.arange(min(k, len(ok)))
    x_adv = ok.x_adv[pick]
    x = split.x[ok.source_index[pick]]
    examples = []
    for i in range(len(pick)):
        perturbation, amplification = perturbation_image(x_adv[i] - x[i], bounds)
        examples.append(Example(
            attack=spec, source_index=int(ok.source_index[i]), label=int(ok.y_true[i]),
            adv_pred=int(ok.adv_pred[i]), l2=float(ok.l2[i]), linf=float(ok.linf[i]),
            clean_png=png_base64(pixels(x[i], bounds)), adversarial_png=png_base64(pixels(x_adv[i], bounds)),
            perturbation_png=png_base64(perturbation), amplification=amplification))
    return examples, x, x_adv


def pixels(image: torch.Tensor, bounds: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """`image` `[C, H, W]` in `bounds` as uint8 `[H, W]` (one channel) or `[H, W, C]`."""
    low, high = bounds
    scaled = ((image.detach().cpu().float() - low) / (high - low)).clamp(0, 1)
    array = scaled.mul(255).round().byte().numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def perturbation_image(
    delta: torch.Tensor, bounds: tuple[float, float] = (0.0, 1.0)
) -> tuple[np.ndarray, float]:
    """A perturbation `[C, H, W]` (pixel units) amplified to fill the display range: returns the uint8 image
    `[H, W, 3]` and the amplification (display units per pixel unit, relative to the bounds' width)."""
    relative = delta.detach().cpu().float() / (bounds[1] - bounds[0])
    peak = float(relative.abs().max())
    amplification = 0.5 / peak if peak > 0 else 1.0
    shown = (0.5 + amplification * relative).clamp(0, 1)
    if shown.shape[0] == 1:
        rgb = colormaps["RdBu_r"](shown[0].numpy())[..., :3]
        return (rgb * 255).round().astype(np.uint8), amplification
    return (shown.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8), amplification


def png_base64(image: np.ndarray) -> str:
    """A uint8 image `[H, W]` or `[H, W, 3]` as a base64-encoded PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
