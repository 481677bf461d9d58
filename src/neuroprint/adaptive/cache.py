"""A cache of adaptive-attack outputs on disk, so that a rerun of `neuroprint robustness` attacks only what changed.

Each entry is `<attack>-<key>.safetensors` (the submitted images `x_adv` `[N, C, H, W]` and the attacker's own
evasion flags `[N]`) with a JSON file beside it (the convergence curve, image-steps and seconds), written
atomically. The caller's key must cover everything that determines the output.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from safetensors.torch import load_file, save_file

from neuroprint.adaptive.base import AdaptiveAttack, AdaptiveResult
from neuroprint.adaptive.views import DetectorView
from neuroprint.data import Split
from neuroprint.distributed import SINGLE, Ranks
from neuroprint.io import atomic_path, write_json
from neuroprint.models.classifier import Classifier


def cached_attack(attack: AdaptiveAttack, classifier: Classifier, view: DetectorView, sources: Split, key: str,
                  directory: Path, batch_size: int, progress: bool,
                  ranks: Ranks = SINGLE) -> tuple[AdaptiveResult, float]:
    """Run `attack` on `sources`, or reuse its cached output (`x_adv` and the attacker's records; whether the
    classifier is fooled is recomputed, as are the defender's verdicts); returns it and the attack's seconds.
    With `ranks` of a torchrun job the main rank's look into the cache decides for all, the attack is sharded
    and the main rank writes the entry."""
    path = directory / f"{attack.name}-{key}"
    if ranks.agree(Path(f"{path}.json").is_file() and Path(f"{path}.safetensors").is_file()):
        meta = json.loads(Path(f"{path}.json").read_text())
        tensors = load_file(f"{path}.safetensors")
        x_adv = tensors["x_adv"]
        fooled = classifier.predict(x_adv) != sources.y
        evades = tensors["evades"] & fooled
        return AdaptiveResult(x_adv, fooled, evades, meta["curve"], meta["image_steps"]), float(meta["seconds"])
    start = time.perf_counter()
    result = attack(classifier, view, sources.x, sources.y, batch_size=batch_size, progress=progress, ranks=ranks)
    seconds = time.perf_counter() - start
    if not ranks.main:
        return result, seconds
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(f"{path}.safetensors") as tmp:
        save_file({"x_adv": result.x_adv.contiguous(), "evades": result.evades}, str(tmp))
    write_json(f"{path}.json", {"curve": result.curve, "image_steps": result.image_steps, "seconds": seconds})
    return result, seconds
