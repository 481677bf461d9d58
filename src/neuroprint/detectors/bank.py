"""Randomized neural-fingerprint bank, after Fisher, Shahar, Resheff, "Neural Fingerprints for Adversarial Attack
Detection" (arXiv 2411.04533), with additions of ours (whitening, the shift score, "stats" pooling and the output
term, below).

For every class c, many tiny random subsets of d neurons are sampled; a subset is a *fingerprint* when the mean
activation over it separates clean inputs of class c from adversarial inputs attacked *to* c (Welch t-test
p < `max_p` and |Cohen's d| >= `min_effect`). The best `bank_size` fingerprints by |d| form bank[c], each with the
clean and adversarial mean and std of its value. At test time the model's predicted class c picks the bank, and
`k` fingerprints are drawn from it **at random for every input**, so an attacker holding a copy of the model and
detector cannot know which fingerprints a given query is checked against (the authors' idea; whether it helps
against an adaptive attacker is measured in BENCHMARKS.md).

Scores (`score_kind`, higher = more adversarial), with z_j = (v_j - mu_clean_j) / s_clean_j for drawn fingerprint j:

- "shift" (the default; ours): direction-aware, uses only the clean moments and the *sign* of the fitted shift
  s_j = sign(mu_adv_j - mu_clean_j):

      score(x) = sum_j min(max(s_j z_j, 0) + back_weight * max(-s_j z_j, 0), z_cap)

  Any move away from the clean mean counts, a move in the direction seen at fit time fully: a weaker attack (CW,
  DeepFool after fitting on PGD) that shifts the fingerprints part of the way still scores high. `z_cap` (3 by
  default; None: no cap) bounds each fingerprint's share, so the heavy tail of one fingerprint on a clean input
  cannot outvote the rest of the draw.
- "lr" (the authors' likelihood-ratio test): sum_j log N(v_j; mu_adv_j, s_adv_j) - log N(v_j; mu_clean_j,
  s_clean_j). It calls a value halfway between the two Gaussians "clean", so it generalises poorly to attacks
  weaker than the one it was fit on.
- "anomaly": -sum_j log N(v_j; mu_clean_j, s_clean_j); "vote": the share of drawn fingerprints whose value is
  closer, in z-score, to the adversarial than to the clean distribution.

The output term (ours; `output_cap`, 5 by default; None or 0: off, the score above alone) adds what no fitted
direction sees: how atypical the logits are for the predicted class c. With u(x) the logits whitened by the
within-class covariance of the clean fit inputs and m_c their class-c mean,

    D(x) = mean_i (u_i(x) - m_c,i)^2,   score(x) = (S(x) - a) / b + min((D(x) - a') / b', output_cap)

where S is the fingerprint score above divided by the number of fingerprints drawn, and (a, b), (a', b') are the
mean and std of S and D on the clean fit inputs. Minimal-perturbation attacks (CW, DeepFool, EAD) stop just past
the decision boundary, so their logits are far from any class mean even when none of the fingerprints moved the
way the fit attack (e.g. PGD, which lands deep inside the target class) moved them. The term uses only clean data,
so it is attack-agnostic; the cap keeps a clean input with unusual logits (a hard digit) from outscoring an
attacked one that the fingerprints flag.

`whiten=True` (the default; ours, not in the paper) ZCA-whitens every layer with the within-class covariance of
the clean fit activations (shrunk by `shrinkage` towards its diagonal) before fingerprints are sampled and
scored: a "neuron" is then the whitened unit closest to it, and the drawn fingerprints are far less correlated.
A layer wider than 4,096 neurons (e.g. a flattened conv map) is not decorrelated but scaled per neuron by its
within-class standard deviation (the full-shrinkage limit; a [w, w] matrix would not fit), so a wide layer never
raises an error; `fit_report_["whitening"]` says which layers got what. `max_uses` keeps, walking the passing
candidates best |d| first, only those whose neurons have each been used by fewer than `max_uses` kept
fingerprints (a decorrelated bank; None or 0: the plain top |d|).

Draws (`sampling`): "seeded" (a generator seeded with `random_state` at every `score` call: reproducible, the
evaluation default), "secure" (a generator seeded from the operating system's CSPRNG at every call: for serving),
"all" (every fingerprint of the bank: the authors' code) and "fixed" (the same first `k` fingerprints of each
bank for every input: the ablation without randomisation). Scoring is one forward pass, one small matrix product
per layer (whitening) and a gather over a `[batch, k, d]` index tensor, and is differentiable with respect to the
input pixels.

Defaults, chosen on validation splits of two data draws (benchmarks/bank_selection.py) and measured on the MNIST
test split (benchmarks/detection_mnist.py, n = 2000, seed 0; BENCHMARKS.md): every named feature layer of the
classifier (`classifier.layers`; conv1..conv4, fc1, fc2, logits on mnist-net), "stats" pooling (each conv channel's
spatial mean, max and std), d = 3 of them from one layer, whitening, the shift score with z_cap = 3, k = 100,
max_uses = 30, output_cap = 5. Fit per attack, AUC >= 99.83 on all nine attacks on three data draws (EAD lowest);
fit on PGD only >= 99.38 (EAD; without the output term 96.1-97.8 whatever the fingerprint settings). The first
default (the authors' layers, no whitening, likelihood ratio, k = 30) reached only 74.8-84.3 on CW, DeepFool,
JSMA, EAD and BIM-a after fitting on PGD: conv1/conv2 (outside the authors' layer rule) and the within-class
correlation structure carry most of the signal for minimal-perturbation attacks, and the max and spread of a
channel that of sparse ones (JSMA, EAD). The authors' complete configuration is

    bank:layers=authors,pooling=flatten,subset=concat,d=50,whiten=false,score_kind=lr,k=30,max_uses=none,output_cap=none

(`layers=authors`: the last 5 top-level modules with more than 1,000 parameters, `authors_default_layers`); on
mnist-net it detects CW and DeepFool markedly worse (AUC ~96 vs ~99 fit per attack), because the flattened conv
maps (21k of 21.5k neurons) drown the dense layers and spatial neurons barely move under minimal-perturbation
attacks.

Example:
    >>> det = BankDetector().fit(classifier, x_val, y_val, x_adv_val)
    >>> det.score(x_test)          # [N] floats, higher = more adversarial
"""
from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from scipy import stats

from neuroprint.checks import check_bool, check_float, check_int, check_layers
from neuroprint.detectors.base import Detector, resolve_layers
from neuroprint.errors import ConfigError, InputError
from neuroprint.features import POOLINGS, Pooling, activations, extract
from neuroprint.models.classifier import Classifier
from neuroprint.registry import DETECTORS

SCORE_KINDS = ("lr", "anomaly", "vote", "shift")
SAMPLINGS = ("seeded", "secure", "all", "fixed")
SUBSETS = ("concat", "layer")
_VAR_FLOOR = 1e-8  # variance floor: a fingerprint whose value never varies cannot produce inf/NaN scores
_CHUNK = 2048  # candidates evaluated at once while building a bank (bounds memory)
_MAX_WHITEN = 4096  # widest layer `whiten` gives a full [width, width] matrix; wider ones: per-neuron scaling
AUTHORS = "authors"  # `layers=["authors"]` (spec `layers=authors`): the authors' rule, `authors_default_layers`


def authors_default_layers(classifier: Classifier, n_layers: int = 5, min_params: int = 1000) -> list[str]:
    """The last `n_layers` top-level child modules with more than `min_params` parameters (the authors' choice)."""
    big = [n for n, m in classifier.module.named_children() if sum(p.numel() for p in m.parameters()) > min_params]
    if not big:
        raise ConfigError(f"the model has no top-level module with more than {min_params} parameters; pass layers=")
    return big[-n_layers:]


@DETECTORS.register("bank")
class BankDetector(Detector):
    """Randomized fingerprint bank (module docstring: method, defaults and why). Parameters:

    - `layers`: None (default) for every named feature layer of the classifier (`classifier.layers`), `"authors"`
      or `["authors"]` (spec `layers=authors`) for the authors' rule (`authors_default_layers`: the last 5
      top-level modules with more than 1,000 parameters), or layer names (spec `layers=conv1+fc1`);
      `pooling`: "stats" (the default: the spatial mean, max and standard deviation of every conv channel, so a
      perturbation confined to a few pixels, as JSMA and EAD make, still moves a "neuron"), "avg" (the mean
      only) or "flatten" (every spatial neuron, the authors' choice).
    - `d`: neurons per fingerprint; `subset`: "layer" (all d neurons from one layer, chosen at random per
      candidate among the layers with at least d neurons) or "concat" (any neurons of the concatenated layers;
      with flattened conv maps these dominate the concatenation, which hides the small dense layers).
    - `n_candidates` sampled per class, `bank_size` kept per class (best |Cohen's d| first), `k` drawn per input.
    - `max_p` (Welch t-test) and `min_effect` (|Cohen's d|): the selection rule.
    - `min_adv`: a class with fewer adversarial examples attacked to it (or fewer clean examples) uses a bank
      built from all classes (reported in `fit_report_`).
    - `score_kind`: "shift" (default), "lr" (the authors'), "anomaly" or "vote"; `back_weight` in [0, 1]: the
      weight "shift" gives to moves against the fitted direction (1: symmetric |z|, 0: one-sided); `z_cap`
      (default 3; None or 0: no cap): the most one fingerprint adds to the "shift" score.
    - `whiten` (default True; ZCA per layer up to 4,096 neurons, per-neuron scaling above) with `shrinkage` in
      [0, 1]; `max_uses` (default 30; None or 0: no cap; spec `max_uses=none`).
    - `output_cap` (default 5; None or 0: off): the most the output term (module docstring) adds, in standard
      deviations of its value on clean fit inputs.
    """

    name = "bank"
    #: per-layer whitening matrices `[w, w]` set by `fit` when `whiten=True`; empty: activations used as they are
    whiteners_: tuple[torch.Tensor, ...] = ()
    #: output term (set by `fit` when `output_cap` is on): logit whitener `[K, K]`, class means `[C, K]` of the
    #: whitened logits, and the clean fit mean and std of the fingerprint score and of D, `[4]`
    output_whitener_: torch.Tensor
    output_means_: torch.Tensor
    output_norm_: torch.Tensor

    def __init__(
        self,
        layers: Sequence[str] | str | None = None,
        pooling: Pooling = "stats",
        d: int = 3,
        subset: Literal["concat", "layer"] = "layer",
        n_candidates: int = 10000,
        bank_size: int = 2000,
        k: int = 100,
        max_p: float = 1e-3,
        min_effect: float = 1.5,
        min_adv: int = 10,
        score_kind: Literal["lr", "anomaly", "vote", "shift"] = "shift",
        sampling: Literal["seeded", "secure", "all", "fixed"] = "seeded",
        random_state: int = 0,
        back_weight: float = 0.3,
        whiten: bool = True,
        shrinkage: float = 0.05,
        max_uses: int | None = 30,
        z_cap: float | None = 3.0,
        output_cap: float | None = 5.0,
    ) -> None:
        for pname, value, low in (("d", d, 1), ("n_candidates", n_candidates, 1), ("bank_size", bank_size, 1),
                                  ("k", k, 1), ("min_adv", min_adv, 2)):
            check_int(pname, value, low)
        if k > bank_size:
            raise ConfigError(f"k (fingerprints drawn per input) must be <= bank_size, got k={k} > bank_size={bank_size}")
        if not 0.0 < max_p <= 1.0:
            raise ConfigError(f"max_p must be in (0, 1], got {max_p}")
        if min_effect < 0:
            raise ConfigError(f"min_effect must be >= 0, got {min_effect}")
        check_float("back_weight", back_weight, 0.0, 1.0, low_open=False)
        check_float("shrinkage", shrinkage, 0.0, 1.0, low_open=False)
        check_bool("whiten", whiten)
        if max_uses is not None:
            check_int("max_uses", max_uses, 0)
            max_uses = max_uses or None  # 0: no cap, like None (for configs that cannot write None)
        if z_cap is not None:
            check_float("z_cap", z_cap, 0.0, math.inf, low_open=False)
            z_cap = z_cap or None  # 0: no cap, like None
        if output_cap is not None:
            check_float("output_cap", output_cap, 0.0, math.inf, low_open=False)
            output_cap = output_cap or None  # 0: off, like None
        for pname, value, valid in (("score_kind", score_kind, SCORE_KINDS), ("sampling", sampling, SAMPLINGS),
                                    ("subset", subset, SUBSETS), ("pooling", pooling, POOLINGS)):
            if value not in valid:
                raise ConfigError(f"unknown {pname} {value!r}; valid: {', '.join(valid)}")
        self.layers = check_layers([layers] if isinstance(layers, str) else layers)
        self.pooling = pooling
        self.d = d
        self.subset = subset
        self.n_candidates = n_candidates
        self.bank_size = bank_size
        self.k = k
        self.max_p = max_p
        self.min_effect = min_effect
        self.min_adv = min_adv
        self.score_kind = score_kind
        self.sampling = sampling
        self.random_state = random_state
        self.back_weight = back_weight
        self.whiten = whiten
        self.shrinkage = shrinkage
        self.max_uses = max_uses
        self.z_cap = z_cap
        self.output_cap = output_cap

    # -- features ----------------------------------------------------------------------------------------------
    def activations(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits `[N, K]`, concatenated activations `[N, D]`) of images `x` in one forward pass, differentiable in
        `x`: what `score_activations` reads."""
        logits, acts = activations(self.classifier_, x, self.layers_, self.pooling)
        return logits, torch.cat([acts[n] for n in self.layers_], dim=1)

    def _batched_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Batched and gradient-free: logits [N, K], concatenated activations [N, D], neurons per layer."""
        feats = extract(self.classifier_, x, self.layers_, self.pooling)
        widths = [int(feats[n].shape[1]) for n in self.layers_]
        return feats.logits, torch.cat([feats[n] for n in self.layers_], dim=1), widths

    # -- fitting -----------------------------------------------------------------------------------------------
    def fit(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None = None) -> BankDetector:
        """Build bank[c] for every class from clean images `x` (labels `y`) and adversarial images `x_adv`.

        Clean images count for their label `y`; adversarial images for the class the model predicts on them.
        """
        x_adv = self._check_fit_inputs(classifier, x, y, x_adv)
        self.classifier_ = classifier
        self.layers_ = self._resolve_layers(classifier)
        logits, f_clean, widths = self._batched_features(x)  # unknown layer names fail here
        self._check_widths(widths)
        logits_adv, f_adv, _ = self._batched_features(x_adv)
        self._fit_features(f_clean, y.cpu(), f_adv, logits_adv.argmax(1), widths, classifier.num_classes)
        if self.output_cap is not None:
            self._fit_output(logits, f_clean, y.cpu())
        return self

    def _resolve_layers(self, classifier: Classifier) -> list[str]:
        """The layers to read: the classifier's named feature layers (None), the authors' rule (["authors"]) or
        the given names."""
        if self.layers == [AUTHORS]:
            return authors_default_layers(classifier)
        return list(resolve_layers(self.layers, classifier))

    def _fit_features(self, f_clean: torch.Tensor, y: torch.Tensor, f_adv: torch.Tensor, adv_pred: torch.Tensor,
                      widths: list[int], n_classes: int) -> None:
        """Build the banks from activations: clean `[N, D]` with labels `y` `[N]`, adversarial `[M, D]` with
        predicted classes `adv_pred` `[M]`; `widths` are the neurons per layer of the concatenation."""
        self.whiteners_ = self._whiteners(f_clean, y, widths, n_classes) if self.whiten else ()
        f_clean, f_adv = self._whitened(f_clean), self._whitened(f_adv)
        generator = torch.Generator().manual_seed(self.random_state)
        banks: list[dict[str, torch.Tensor]] = []
        report: dict[str, Any] = {"classes": {}, "fallback_classes": [],
                                  "sampled_layers": [n for n, w in zip(self.layers_, widths, strict=True)
                                                     if self.subset == "concat" or w >= self.d],
                                  "whitening": {n: ("none" if not self.whiten else "zca" if w <= _MAX_WHITEN else
                                                    "per-neuron") for n, w in zip(self.layers_, widths, strict=True)}}
        shared: dict[str, torch.Tensor] | None = None
        for c in range(n_classes):
            clean_c, adv_c = f_clean[y == c], f_adv[adv_pred == c]
            bank = None
            if len(clean_c) >= self.min_adv and len(adv_c) >= self.min_adv:
                bank = self._build_bank(clean_c, adv_c, widths, generator)
            if bank is None or len(bank["index"]) < self.k:
                if shared is None:
                    shared = self._build_bank(f_clean, f_adv, widths, generator)
                    if len(shared["index"]) < self.k:
                        raise InputError(
                            f"only {len(shared['index'])} fingerprints pass the selection rule (p < {self.max_p}, "
                            f"|d| >= {self.min_effect}) even with all classes pooled; need k={self.k}: lower k or "
                            "relax max_p/min_effect, or fit on more adversarial examples"
                        )
                bank = shared
                report["fallback_classes"].append(c)
            banks.append(bank)
            report["classes"][str(c)] = {"n_clean": len(clean_c), "n_adv": len(adv_c), "n_fingerprints":
                                         len(bank["index"]), "fallback": c in report["fallback_classes"]}
        self._set_banks(banks)
        self.fit_report_ = report

    def _fit_output(self, logits: torch.Tensor, f_clean: torch.Tensor, y: torch.Tensor) -> None:
        """The output term's state from the clean fit inputs: logits `[N, K]`, activations `[N, D]`, labels `[N]`.

        A class with fewer than `min_adv` clean inputs (a fallback class) is centred on the mean of all of them.
        """
        n_classes = len(self.bank_sizes_)
        (self.output_whitener_,) = self._whiteners(logits, y, [logits.shape[1]], n_classes)
        white = logits @ self.output_whitener_
        self.output_means_ = torch.stack([white[y == c].mean(0) if int((y == c).sum()) >= self.min_adv
                                          else white.mean(0) for c in range(n_classes)])
        pred = logits.argmax(1)
        values = (self._fingerprint_score(pred, f_clean, per_fingerprint=True), self._output_distance(logits, pred))
        self.output_norm_ = torch.tensor([s for v in values for s in (float(v.mean()), max(float(v.std()), 1e-6))])

    def _check_widths(self, widths: list[int]) -> None:
        """Raise `ConfigError` when `d` exceeds what the layers (neurons per layer: `widths`) offer.

        In "layer" mode, layers narrower than `d` are simply never sampled.
        """
        if self.subset == "concat" and self.d > sum(widths):
            raise ConfigError(f"d={self.d} neurons per fingerprint exceeds the concatenated layers ({sum(widths)} neurons)")
        if self.subset == "layer" and self.d > max(widths):
            raise ConfigError(f"d={self.d} neurons per fingerprint exceeds every chosen layer (widest: {max(widths)})")

    def _whiteners(
        self, f_clean: torch.Tensor, y: torch.Tensor, widths: list[int], n_classes: int
    ) -> tuple[torch.Tensor, ...]:
        """Per layer, the symmetric (ZCA) inverse square root `[w, w]` of the within-class covariance of the clean
        activations `f_clean` `[N, D]` (labels `y` `[N]`), shrunk by `shrinkage` towards its diagonal. A layer wider
        than 4,096 neurons gets the limit of full shrinkage instead, stored as a vector `[w]`: every neuron divided
        by its within-class standard deviation (no decorrelation; a [w, w] matrix would not fit in memory)."""
        centred = f_clean.double().clone()
        for c in range(n_classes):
            rows = y == c
            if rows.any():
                centred[rows] -= centred[rows].mean(0)
        dof = max(len(centred) - len(torch.unique(y)), 1)
        out: list[torch.Tensor] = []
        for block in centred.split(widths, dim=1):
            if block.shape[1] > _MAX_WHITEN:
                var = (block**2).sum(0) / dof
                out.append(var.clamp(min=max(1e-6 * float(var.max()), _VAR_FLOOR)).rsqrt().float())
                continue
            cov = block.T @ block / dof
            cov = (1.0 - self.shrinkage) * cov + self.shrinkage * torch.diag(torch.diag(cov))
            evals, evecs = torch.linalg.eigh(cov)
            evals = evals.clamp(min=max(1e-6 * float(evals.max()), _VAR_FLOOR))  # dead neurons: bounded gain
            out.append(((evecs * evals.rsqrt()) @ evecs.T).float())
        return tuple(out)

    def _whitened(self, feats: torch.Tensor) -> torch.Tensor:
        """Concatenated activations `[N, D]` with every layer multiplied by its whitener (a matrix, or a vector of
        per-neuron scales for a wide layer); unchanged without."""
        if not self.whiteners_:
            return feats
        blocks = feats.split([len(w) for w in self.whiteners_], dim=1)
        return torch.cat([b @ w if w.dim() == 2 else b * w for b, w in zip(blocks, self.whiteners_, strict=True)],
                         dim=1)

    def _candidates(self, widths: list[int], generator: torch.Generator) -> torch.Tensor:
        """[n_candidates, d] neuron indices (distinct within a row) into the concatenated activations."""
        if self.subset == "concat":  # chunked: a full [n_candidates, D] key matrix can take gigabytes
            rows = [torch.rand(min(256, self.n_candidates - i), sum(widths), generator=generator).topk(self.d, dim=1).indices
                    for i in range(0, self.n_candidates, 256)]
            return torch.cat(rows)
        offsets = torch.tensor([0, *np.cumsum(widths)[:-1].tolist()])
        out = torch.empty(self.n_candidates, self.d, dtype=torch.long)
        usable = torch.tensor([i for i, w in enumerate(widths) if w >= self.d])
        layer = usable[torch.randint(len(usable), (self.n_candidates,), generator=generator)]
        for i, width in enumerate(widths):
            rows = (layer == i).nonzero().flatten()
            if len(rows):
                keys = torch.rand(len(rows), width, generator=generator)
                out[rows] = keys.topk(self.d, dim=1).indices + offsets[i]
        return out

    def _build_bank(
        self, clean: torch.Tensor, adv: torch.Tensor, widths: list[int], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Sample candidates, apply the selection rule, keep the best `bank_size` by |Cohen's d|."""
        index = self._candidates(widths, generator)
        moments = [self._moments(clean, index[i : i + _CHUNK]) + self._moments(adv, index[i : i + _CHUNK])
                   for i in range(0, len(index), _CHUNK)]
        m_c, v_c, m_a, v_a = (torch.cat([m[j] for m in moments]).double() for j in range(4))
        n_c, n_a = len(clean), len(adv)
        v_c, v_a = v_c + _VAR_FLOOR, v_a + _VAR_FLOOR
        se2 = v_c / n_c + v_a / n_a
        t = (m_a - m_c) / se2.sqrt()
        dof = se2**2 / ((v_c / n_c) ** 2 / (n_c - 1) + (v_a / n_a) ** 2 / (n_a - 1))
        p = torch.from_numpy(2.0 * stats.t.sf(np.abs(t.numpy()), dof.numpy()))
        pooled = (((n_c - 1) * v_c + (n_a - 1) * v_a) / (n_c + n_a - 2)).sqrt()
        effect = (m_a - m_c) / pooled
        keep = (p < self.max_p) & (effect.abs() >= self.min_effect) & torch.isfinite(effect)
        order = keep.nonzero().flatten()
        order = order[effect[order].abs().argsort(descending=True)]
        order = order[self._spread(index[order], clean.shape[1])] if self.max_uses is not None else order[: self.bank_size]
        return {
            "index": index[order].to(torch.int32),
            "mu_clean": m_c[order].float(), "sd_clean": v_c[order].sqrt().float(),
            "mu_adv": m_a[order].float(), "sd_adv": v_a[order].sqrt().float(),
            "effect": effect[order].float(),
        }

    def _spread(self, rows: torch.Tensor, n_neurons: int) -> torch.Tensor:
        """Positions of the fingerprints `rows` `[n, d]` (neuron indices, best first) kept by the greedy `max_uses`
        rule: a fingerprint is kept while each of its neurons is in fewer than `max_uses` kept ones; at most
        `bank_size` are kept."""
        assert self.max_uses is not None
        uses = np.zeros(n_neurons, dtype=np.int64)
        kept: list[int] = []
        for i, row in enumerate(rows.numpy()):
            if (uses[row] < self.max_uses).all():
                uses[row] += 1
                kept.append(i)
                if len(kept) == self.bank_size:
                    break
        return torch.tensor(kept, dtype=torch.long)

    @staticmethod
    def _moments(features: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and unbiased variance over inputs of every candidate's value (mean of its neurons)."""
        values = torch.nn.functional.embedding_bag(index, features.T.contiguous(), mode="mean")  # [n_cand, n]
        return values.mean(1), values.var(1)

    def _set_banks(self, banks: list[dict[str, torch.Tensor]]) -> None:
        """Pad the per-class banks into [C, B, ...] tensors with per-class counts, for vectorised scoring."""
        sizes = torch.tensor([len(b["index"]) for b in banks])
        width = int(sizes.max())
        self.bank_sizes_ = sizes

        def stack(key: str, fill: float) -> torch.Tensor:
            rows = []
            for b in banks:
                t = b[key]
                pad = torch.full((width - len(t), *t.shape[1:]), fill, dtype=t.dtype)
                rows.append(torch.cat([t, pad]))
            return torch.stack(rows)

        self.index_ = stack("index", 0)
        self.mu_clean_, self.sd_clean_ = stack("mu_clean", 0.0), stack("sd_clean", 1.0)
        self.mu_adv_, self.sd_adv_ = stack("mu_adv", 0.0), stack("sd_adv", 1.0)
        self.effect_ = stack("effect", 0.0)

    # -- scoring -----------------------------------------------------------------------------------------------
    def draw(self, pred: torch.Tensor) -> torch.Tensor:
        """Bank slots `[N, k]` (or `[N, B]` for sampling="all") to check for inputs predicted as `pred` `[N]`."""
        sizes = self.bank_sizes_[pred]
        width = self.index_.shape[1]
        if self.sampling == "all":
            return torch.arange(width).expand(len(pred), width)
        if self.sampling == "fixed":
            return torch.arange(self.k).expand(len(pred), self.k)
        seed = self.random_state if self.sampling == "seeded" else secrets.randbits(63)
        generator = torch.Generator().manual_seed(seed)
        keys = torch.rand(len(pred), width, generator=generator)
        keys[torch.arange(width)[None, :] >= sizes[:, None]] = math.inf  # never draw padding
        return keys.topk(self.k, dim=1, largest=False).indices  # k distinct fingerprints per input

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Score `[N]` for images `x` `[N, C, H, W]` in the pixel bounds (higher = more adversarial)."""
        self._check_fitted()
        self.classifier_.check_input(x)
        logits, feats = self.activations(x.to(self.classifier_.device))
        return self.score_activations(logits.cpu(), feats.cpu())

    def score_activations(self, logits: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Score `[N]` from logits `[N, K]` and concatenated activations `feats` `[N, D]` (from `activations`): the
        fingerprint score, plus the output term when `output_cap` is on. Differentiable in both; one call is one
        draw (for sampling "seeded" or "secure"), so several calls on the same activations give EOT samples."""
        pred = logits.argmax(1)
        if self.output_cap is None:
            return self._fingerprint_score(pred, feats)
        mean_s, std_s, mean_d, std_d = self.output_norm_
        outlying = (self._output_distance(logits, pred) - mean_d) / std_d
        fingerprints = (self._fingerprint_score(pred, feats, per_fingerprint=True) - mean_s) / std_s
        return fingerprints + outlying.clamp(max=self.output_cap)

    def _output_distance(self, logits: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """D `[N]`: mean squared distance of the whitened logits `[N, K]` from their predicted class's clean mean."""
        return ((logits @ self.output_whitener_ - self.output_means_[pred]) ** 2).mean(1)

    def _fingerprint_score(
        self, pred: torch.Tensor, feats: torch.Tensor, per_fingerprint: bool = False
    ) -> torch.Tensor:
        """The `score_kind` score `[N]` of the fingerprints drawn for predicted classes `pred` `[N]` from
        concatenated activations `feats` `[N, D]`; `per_fingerprint`: divided by the number drawn (the output term
        normalises this mean, so that its scale does not depend on `k` or on `sampling="all"`)."""
        feats = self._whitened(feats)
        slots = self.draw(pred)  # [N, k]
        neurons = self.index_[pred[:, None], slots].long()  # [N, k, d]
        n, k, d = neurons.shape
        values = feats.gather(1, neurons.view(n, k * d)).view(n, k, d).mean(-1)  # [N, k]
        mu_c, sd_c = self.mu_clean_[pred[:, None], slots], self.sd_clean_[pred[:, None], slots]
        mu_a, sd_a = self.mu_adv_[pred[:, None], slots], self.sd_adv_[pred[:, None], slots]
        valid = (slots < self.bank_sizes_[pred][:, None]).float()  # only "all" can reach padding
        z_c, z_a = (values - mu_c) / sd_c, (values - mu_a) / sd_a
        log_clean = -0.5 * z_c**2 - sd_c.log()
        log_adv = -0.5 * z_a**2 - sd_a.log()
        if self.score_kind == "lr":
            per_fp = log_adv - log_clean
        elif self.score_kind == "anomaly":
            per_fp = -log_clean
        elif self.score_kind == "shift":
            toward = torch.sign(mu_a - mu_c) * z_c  # z-shift in the direction the fit attack moved the fingerprint
            per_fp = toward.clamp(min=0) + self.back_weight * (-toward).clamp(min=0)
            if self.z_cap is not None:
                per_fp = per_fp.clamp(max=self.z_cap)  # one fingerprint's heavy tail cannot outvote the others
        else:
            per_fp = (z_a.abs() < z_c.abs()).float()
        total = (per_fp * valid).sum(1)
        return total / valid.sum(1) if per_fingerprint or self.score_kind == "vote" else total

    # -- persistence -------------------------------------------------------------------------------------------
    def state_dict_(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"index": self.index_, "bank_sizes": self.bank_sizes_, "mu_clean": self.mu_clean_,
                   "sd_clean": self.sd_clean_, "mu_adv": self.mu_adv_, "sd_adv": self.sd_adv_, "effect": self.effect_,
                   **{f"whiten_{i}": w for i, w in enumerate(self.whiteners_)}}
        if self.output_cap is not None:
            tensors |= {"output_whitener": self.output_whitener_, "output_means": self.output_means_,
                        "output_norm": self.output_norm_}
        return tensors, {"layers": self.layers_, "fit_report": self.fit_report_, "n_whiteners": len(self.whiteners_)}

    def load_state_(self, tensors: dict[str, torch.Tensor], extras: dict[str, Any]) -> None:
        self.index_, self.bank_sizes_ = tensors["index"], tensors["bank_sizes"]
        self.mu_clean_, self.sd_clean_ = tensors["mu_clean"], tensors["sd_clean"]
        self.mu_adv_, self.sd_adv_, self.effect_ = tensors["mu_adv"], tensors["sd_adv"], tensors["effect"]
        self.layers_, self.fit_report_ = extras["layers"], extras["fit_report"]
        self.whiteners_ = tuple(tensors[f"whiten_{i}"] for i in range(extras.get("n_whiteners", 0)))
        if self.output_cap is not None:
            if "output_means" not in tensors:
                raise InputError("this saved bank has no output term (saved by an older neuroprint); refit it, or "
                                 "load it with output_cap=none in its config.json params")
            self.output_whitener_ = tensors["output_whitener"]
            self.output_means_, self.output_norm_ = tensors["output_means"], tensors["output_norm"]

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the fitted bank tensors."""
        return sum(t.numel() * t.element_size() for t in self.state_dict_()[0].values())
