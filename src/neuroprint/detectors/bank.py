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

Scores (`score_kind`, higher = more adversarial; formulas in `bank_scores`): "shift" (the default; ours) counts
each drawn fingerprint's move away from its clean mean, fully in the direction the fit attack moved it and
`back_weight` against it, capped at `z_cap` per fingerprint, so a weaker attack than the one fit on still scores
high; "lr" (the authors' likelihood-ratio test), "anomaly" (clean negative log-likelihood) and "vote".

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

`whiten=True` (the default; ours, not in the paper) whitens every layer with the within-class covariance of the
clean fit activations before fingerprints are sampled and scored (`whitening`), so the drawn fingerprints are far
less correlated; `max_uses` keeps only fingerprints whose neurons are each used by fewer than `max_uses` kept ones
(`fingerprint_selection.select_fingerprints`).

Draws (`sampling`): "seeded" (a generator seeded with `random_state` at every `score` call: reproducible, the
evaluation default), "secure" (a generator seeded from the operating system's CSPRNG at every call: for serving),
"all" (every fingerprint of the bank: the authors' code) and "fixed" (the same first `k` fingerprints of each
bank for every input: the ablation without randomisation). Scoring is one forward pass, one small matrix product
per layer (whitening) and a gather over a `[batch, k, d]` index tensor, and is differentiable with respect to the
input pixels.

Defaults (every named feature layer, "stats" pooling, d = 3 from one layer, whitening, the shift score with
z_cap = 3, k = 100, max_uses = 30, output_cap = 5) were chosen on validation splits (benchmarks/bank_selection.py);
their measurements and the ablations behind them are in BENCHMARKS.md. The authors' complete configuration is

    bank:layers=authors,pooling=flatten,subset=concat,d=50,whiten=false,score_kind=lr,k=30,max_uses=none,output_cap=none

(`layers=authors`: the last 5 top-level modules with more than 1,000 parameters, `authors_default_layers`).

Example:
    >>> det = BankDetector().fit(classifier, x_val, y_val, x_adv_val)
    >>> det.score(x_test)          # [N] floats, higher = more adversarial
"""
from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from typing import Any, Literal

import torch

from neuroprint.checks import check_bool, check_float, check_int, check_layers
from neuroprint.detectors.bank_scores import SCORE_FUNCTIONS, Drawn
from neuroprint.detectors.base import Detector, resolve_layers
from neuroprint.detectors.fingerprint_selection import (
    check_subset_width,
    pad_banks,
    sample_subsets,
    select_fingerprints,
)
from neuroprint.detectors.whitening import MAX_ZCA_WIDTH, whiten, within_class_whiteners
from neuroprint.errors import ConfigError, InputError
from neuroprint.features import POOLINGS, Pooling, activations, extract
from neuroprint.models.classifier import Classifier
from neuroprint.registry import DETECTORS

SCORE_KINDS = tuple(SCORE_FUNCTIONS)
SAMPLINGS = ("seeded", "secure", "all", "fixed")
SUBSETS = ("concat", "layer")
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

    def batched_activations(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Batched and gradient-free: logits `[N, K]`, concatenated activations `[N, D]`, neurons per layer."""
        feats = extract(self.classifier_, x, self.layers_, self.pooling)
        widths = [int(feats[n].shape[1]) for n in self.layers_]
        return feats.logits, torch.cat([feats[n] for n in self.layers_], dim=1), widths

    def feature_layers(self, classifier: Classifier) -> list[str]:
        """The layers to read: the classifier's named feature layers (`layers` None), the authors' rule
        (`["authors"]`) or the given names."""
        if self.layers == [AUTHORS]:
            return authors_default_layers(classifier)
        return list(resolve_layers(self.layers, classifier))

    # -- fitting -----------------------------------------------------------------------------------------------
    def fit(self, classifier: Classifier, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None = None) -> BankDetector:
        """Build bank[c] for every class from clean images `x` (labels `y`) and adversarial images `x_adv`.

        Clean images count for their label `y`; adversarial images for the class the model predicts on them.
        """
        x_adv = self._check_fit_inputs(classifier, x, y, x_adv)
        self.classifier_ = classifier
        self.layers_ = self.feature_layers(classifier)
        logits, f_clean, widths = self.batched_activations(x)  # unknown layer names fail here
        check_subset_width(self.d, self.subset, widths)
        logits_adv, f_adv, _ = self.batched_activations(x_adv)
        self.fit_banks(f_clean, y.cpu(), f_adv, logits_adv.argmax(1), widths, classifier.num_classes)
        if self.output_cap is not None:
            self.fit_output_term(logits, f_clean, y.cpu())
        return self

    def fit_banks(self, f_clean: torch.Tensor, y: torch.Tensor, f_adv: torch.Tensor, adv_pred: torch.Tensor,
                  widths: list[int], n_classes: int) -> None:
        """Whiten and build the banks from activations: clean `[N, D]` with labels `y` `[N]`, adversarial `[M, D]`
        with predicted classes `adv_pred` `[M]`; `widths` are the neurons per layer of the concatenation. A class
        with fewer than `min_adv` clean or adversarial inputs, or fewer than `k` passing fingerprints, uses a bank
        built from all classes pooled (`fit_report_["fallback_classes"]`)."""
        self.whiteners_ = within_class_whiteners(f_clean, y, widths, n_classes, self.shrinkage) if self.whiten else ()
        f_clean, f_adv = whiten(f_clean, self.whiteners_), whiten(f_adv, self.whiteners_)
        generator = torch.Generator().manual_seed(self.random_state)
        banks: list[dict[str, torch.Tensor]] = []
        report: dict[str, Any] = {"classes": {}, "fallback_classes": [],
                                  "sampled_layers": [n for n, w in zip(self.layers_, widths, strict=True)
                                                     if self.subset == "concat" or w >= self.d],
                                  "whitening": {n: ("none" if not self.whiten else "zca" if w <= MAX_ZCA_WIDTH else
                                                    "per-neuron") for n, w in zip(self.layers_, widths, strict=True)}}
        shared: dict[str, torch.Tensor] | None = None
        for c in range(n_classes):
            clean_c, adv_c = f_clean[y == c], f_adv[adv_pred == c]
            bank = None
            if len(clean_c) >= self.min_adv and len(adv_c) >= self.min_adv:
                bank = self.build_bank(clean_c, adv_c, widths, generator)
            if bank is None or len(bank["index"]) < self.k:
                if shared is None:
                    shared = self.build_bank(f_clean, f_adv, widths, generator)
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
        self.set_banks(banks)
        self.fit_report_ = report

    def build_bank(self, clean: torch.Tensor, adv: torch.Tensor, widths: list[int],
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One bank from (whitened) clean `[Nc, D]` and adversarial `[Na, D]` activations: `n_candidates` subsets
        sampled with `generator`, selected by this detector's rule (`select_fingerprints`)."""
        index = sample_subsets(widths, self.n_candidates, self.d, self.subset, generator)
        return select_fingerprints(clean, adv, index, self.max_p, self.min_effect, self.bank_size, self.max_uses)

    def set_banks(self, banks: list[dict[str, torch.Tensor]]) -> None:
        """Store per-class banks (from `build_bank`) as padded `[C, B, ...]` tensors with per-class counts."""
        self.bank_sizes_, padded = pad_banks(banks)
        self.index_, self.effect_ = padded["index"], padded["effect"]
        self.mu_clean_, self.sd_clean_ = padded["mu_clean"], padded["sd_clean"]
        self.mu_adv_, self.sd_adv_ = padded["mu_adv"], padded["sd_adv"]

    def fit_output_term(self, logits: torch.Tensor, f_clean: torch.Tensor, y: torch.Tensor) -> None:
        """The output term's state from the clean fit inputs: logits `[N, K]`, activations `[N, D]`, labels `[N]`.

        A class with fewer than `min_adv` clean inputs (a fallback class) is centred on the mean of all of them.
        """
        n_classes = len(self.bank_sizes_)
        (self.output_whitener_,) = within_class_whiteners(logits, y, [logits.shape[1]], n_classes, self.shrinkage)
        white = logits @ self.output_whitener_
        self.output_means_ = torch.stack([white[y == c].mean(0) if int((y == c).sum()) >= self.min_adv
                                          else white.mean(0) for c in range(n_classes)])
        pred = logits.argmax(1)
        values = (self.fingerprint_score(pred, f_clean, per_fingerprint=True), self.output_distance(logits, pred))
        self.output_norm_ = torch.tensor([s for v in values for s in (float(v.mean()), max(float(v.std()), 1e-6))])

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
            return self.fingerprint_score(pred, feats)
        mean_s, std_s, mean_d, std_d = self.output_norm_
        outlying = (self.output_distance(logits, pred) - mean_d) / std_d
        fingerprints = (self.fingerprint_score(pred, feats, per_fingerprint=True) - mean_s) / std_s
        return fingerprints + outlying.clamp(max=self.output_cap)

    def output_distance(self, logits: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """D `[N]`: mean squared distance of the whitened logits `[N, K]` from their predicted class's clean mean."""
        return ((logits @ self.output_whitener_ - self.output_means_[pred]) ** 2).mean(1)

    def fingerprint_score(self, pred: torch.Tensor, feats: torch.Tensor, per_fingerprint: bool = False) -> torch.Tensor:
        """The `score_kind` score `[N]` (`bank_scores`) of the fingerprints drawn for predicted classes `pred` `[N]`
        from concatenated activations `feats` `[N, D]`: the sum over the drawn fingerprints, or with
        `per_fingerprint` (and always for "vote") the mean, whose scale depends neither on `k` nor on
        `sampling="all"` (the output term normalises this mean)."""
        feats = whiten(feats, self.whiteners_)
        slots = self.draw(pred)  # [N, k]
        neurons = self.index_[pred[:, None], slots].long()  # [N, k, d]
        n, k, d = neurons.shape
        rows = (pred[:, None], slots)
        drawn = Drawn(feats.gather(1, neurons.view(n, k * d)).view(n, k, d).mean(-1), self.mu_clean_[rows],
                      self.sd_clean_[rows], self.mu_adv_[rows], self.sd_adv_[rows])
        valid = (slots < self.bank_sizes_[pred][:, None]).float()  # only "all" can reach padding
        total = (SCORE_FUNCTIONS[self.score_kind](drawn, self.back_weight, self.z_cap) * valid).sum(1)
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
