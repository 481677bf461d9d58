"""Building a fingerprint bank: sample random neuron subsets, keep those whose mean activation separates clean from
adversarial inputs (Fisher, Shahar, Resheff, "Neural Fingerprints for Adversarial Attack Detection", arXiv
2411.04533: Welch t-test and Cohen's d), and pad the per-class banks into tensors for vectorised scoring.

Activations are concatenated layers `[N, D]`; a candidate is a row of `d` neuron indices into D; its *value* on
an input is the mean of those neurons.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import stats

from neuroprint.detectors.whitening import VAR_FLOOR
from neuroprint.errors import ConfigError, InputError

CHUNK = 2048  # candidates evaluated at once while selecting (bounds memory)
BANK_FIELDS = ("index", "mu_clean", "sd_clean", "mu_adv", "sd_adv", "effect")


def check_subset_width(d: int, subset: str, widths: list[int]) -> None:
    """Raise `ConfigError` when `d` neurons per subset exceed what the layers (`widths` neurons each) offer:
    "concat" draws from all layers together, "layer" from one layer (narrower layers are never drawn)."""
    if subset == "concat" and d > sum(widths):
        raise ConfigError(f"d={d} neurons per fingerprint exceeds the concatenated layers ({sum(widths)} neurons)")
    if subset == "layer" and d > max(widths):
        raise ConfigError(f"d={d} neurons per fingerprint exceeds every chosen layer (widest: {max(widths)})")


def sample_subsets(widths: list[int], n: int, d: int, subset: str, generator: torch.Generator) -> torch.Tensor:
    """`[n, d]` neuron indices, distinct within a row, into the concatenation of layers `widths` wide: from any
    layer ("concat") or all from one layer drawn uniformly among those at least `d` wide ("layer")."""
    if subset == "concat":  # chunked: a full [n, D] key matrix can take gigabytes
        rows = [torch.rand(min(256, n - i), sum(widths), generator=generator).topk(d, dim=1).indices
                for i in range(0, n, 256)]
        return torch.cat(rows)
    offsets = torch.tensor([0, *np.cumsum(widths)[:-1].tolist()])
    out = torch.empty(n, d, dtype=torch.long)
    usable = torch.tensor([i for i, w in enumerate(widths) if w >= d])
    layer = usable[torch.randint(len(usable), (n,), generator=generator)]
    for i, width in enumerate(widths):
        rows = (layer == i).nonzero().flatten()
        if len(rows):
            out[rows] = torch.rand(len(rows), width, generator=generator).topk(d, dim=1).indices + offsets[i]
    return out


def subset_moments(features: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance over the inputs `features` `[N, D]` of each subset's value (`index` `[n, d]`)."""
    values = torch.nn.functional.embedding_bag(index, features.T.contiguous(), mode="mean")  # [n, N]
    return values.mean(1), values.var(1)


def select_fingerprints(clean: torch.Tensor, adv: torch.Tensor, index: torch.Tensor, max_p: float, min_effect: float,
                        bank_size: int, max_uses: int | None) -> dict[str, torch.Tensor]:
    """The bank of the candidates `index` `[n, d]` that pass the selection rule on clean `[Nc, D]` and adversarial
    `[Na, D]` activations (Welch p < `max_p`, |Cohen's d| >= `min_effect`), best |d| first: at most `bank_size`,
    and with `max_uses`, only those whose neurons are each in fewer than `max_uses` already kept fingerprints.
    Returns `BANK_FIELDS`: index `[B, d]` int32 and the clean/adversarial mean and std and the effect, each `[B]`."""
    moments = [subset_moments(clean, index[i : i + CHUNK]) + subset_moments(adv, index[i : i + CHUNK])
               for i in range(0, len(index), CHUNK)]
    m_c, v_c, m_a, v_a = (torch.cat([m[j] for m in moments]).double() for j in range(4))
    n_c, n_a = len(clean), len(adv)
    v_c, v_a = v_c + VAR_FLOOR, v_a + VAR_FLOOR
    se2 = v_c / n_c + v_a / n_a
    t = (m_a - m_c) / se2.sqrt()
    dof = se2**2 / ((v_c / n_c) ** 2 / (n_c - 1) + (v_a / n_a) ** 2 / (n_a - 1))
    p = torch.from_numpy(2.0 * stats.t.sf(np.abs(t.numpy()), dof.numpy()))
    pooled = (((n_c - 1) * v_c + (n_a - 1) * v_a) / (n_c + n_a - 2)).sqrt()
    effect = (m_a - m_c) / pooled
    keep = (p < max_p) & (effect.abs() >= min_effect) & torch.isfinite(effect)
    order = keep.nonzero().flatten()
    order = order[effect[order].abs().argsort(descending=True)]
    if max_uses is None:
        order = order[:bank_size]
    else:
        order = order[spread(index[order], clean.shape[1], max_uses, bank_size)]
    return {"index": index[order].to(torch.int32), "mu_clean": m_c[order].float(), "sd_clean": v_c[order].sqrt().float(),
            "mu_adv": m_a[order].float(), "sd_adv": v_a[order].sqrt().float(), "effect": effect[order].float()}


def spread(rows: torch.Tensor, n_neurons: int, max_uses: int, bank_size: int) -> torch.Tensor:
    """Positions in `rows` `[n, d]` (neuron indices, best first) kept by the greedy rule: a row is kept while each
    of its neurons is in fewer than `max_uses` kept rows; at most `bank_size` are kept."""
    uses = np.zeros(n_neurons, dtype=np.int64)
    kept: list[int] = []
    for i, row in enumerate(rows.numpy()):
        if (uses[row] < max_uses).all():
            uses[row] += 1
            kept.append(i)
            if len(kept) == bank_size:
                break
    return torch.tensor(kept, dtype=torch.long)


def pad_banks(banks: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-class banks -> (sizes `[C]`, each of `BANK_FIELDS` padded to `[C, B, ...]`; padding has std 1)."""
    sizes = torch.tensor([len(b["index"]) for b in banks])
    width = int(sizes.max())

    def stack(key: str) -> torch.Tensor:
        fill = 1.0 if key.startswith("sd_") else 0
        return torch.stack([torch.cat([b[key], torch.full((width - len(b[key]), *b[key].shape[1:]), fill,
                                                          dtype=b[key].dtype)]) for b in banks])

    return sizes, {key: stack(key) for key in BANK_FIELDS}


def class_banks(f_clean: torch.Tensor, y: torch.Tensor, f_adv: torch.Tensor, adv_pred: torch.Tensor, n_classes: int,
                build: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]], k: int,
                min_count: int) -> tuple[list[dict[str, torch.Tensor]], list[int]]:
    """One bank per class c, built by `build(clean_c, adv_c)` from the clean activations `f_clean` `[N, D]` of
    label c (`y` `[N]`) and the adversarial ones `f_adv` `[M, D]` predicted as c (`adv_pred` `[M]`). A class with
    fewer than `min_count` of either, or whose bank has fewer than `k` fingerprints, gets the bank built from all
    classes pooled. Returns the banks and the classes that fell back; raises `InputError` when even the pooled
    bank is smaller than `k`."""
    banks: list[dict[str, torch.Tensor]] = []
    fallback: list[int] = []
    shared: dict[str, torch.Tensor] | None = None
    for c in range(n_classes):
        clean_c, adv_c = f_clean[y == c], f_adv[adv_pred == c]
        bank = build(clean_c, adv_c) if len(clean_c) >= min_count and len(adv_c) >= min_count else None
        if bank is None or len(bank["index"]) < k:
            if shared is None:
                shared = build(f_clean, f_adv)
                if len(shared["index"]) < k:
                    raise InputError(f"only {len(shared['index'])} fingerprints pass the selection rule even with "
                                     f"all classes pooled; need k={k}: lower k or relax max_p/min_effect, or fit on "
                                     "more adversarial examples")
            bank = shared
            fallback.append(c)
        banks.append(bank)
    return banks, fallback
