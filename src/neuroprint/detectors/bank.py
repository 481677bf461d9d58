"""Randomized neural-fingerprint bank, after Fisher, Shahar, Resheff, "Neural Fingerprints for Adversarial Attack
Detection" (arXiv 2411.04533), with additions of ours (whitening, the shift score, "stats" pooling, the output term).

For every class c, many tiny random subsets of d neurons are sampled; a subset is a *fingerprint* when the mean
activation over it separates clean inputs of class c from adversarial inputs attacked *to* c (Welch t-test
p < `max_p` and |Cohen's d| >= `min_effect`; `fingerprint_selection`). The best `bank_size` by |d| form bank[c].
At test time the predicted class picks the bank and `k` fingerprints are drawn from it **at random for every
input**, so an attacker holding the model and the detector cannot know which fingerprints check a given query.

- Scores (`score_kind`, higher = more adversarial; `bank_scores`): "shift" (default; ours), "lr" (the authors'
  likelihood ratio), "anomaly", "vote". The output term (`output_term`, `output_cap`; ours) adds how atypical the
  logits are for the predicted class: score = (S - a) / b + min((D - a') / b', output_cap), S the fingerprint
  score per drawn fingerprint, D the output distance, (a, b) and (a', b') their clean fit mean and std.
- `whiten` (default; ours): every layer is whitened with the within-class covariance of the clean fit activations
  (`whitening`); `max_uses` keeps a bank whose neurons are each in fewer than `max_uses` fingerprints.
- Draws (`sampling`): "seeded" (a generator seeded with `random_state` at every call: reproducible evaluation),
  "secure" (seeded from the OS CSPRNG at every call: serving), "all" (every fingerprint: the authors' code),
  "fixed" (the first `k` of each bank for every input: the ablation without randomisation). A "secure" bank's
  threshold is set on `CALIBRATION_DRAWS` draws per clean image, since one query's score is random in the draw.
- The key (`secret_key`): the candidate subsets are sampled with `random_state` (reproducible research), or with
  `secret_key=True` from a seed drawn from the OS CSPRNG at fit and kept nowhere, so that an attacker holding the
  method, the code, the model and the data cannot rebuild the bank; the saved bank is then the only copy of the
  secret and belongs on the server (the guard fits this way by default).

Scoring is one forward pass, one small matrix product per layer and a gather over `[N, k, d]` indices, and is
differentiable in the input pixels. The defaults were chosen on validation splits (experiments/bank_selection.py;
measurements in docs/benchmarks/bank.md). The authors' complete configuration is

    bank:layers=authors,pooling=flatten,subset=concat,d=50,whiten=false,score_kind=lr,k=30,max_uses=none,output_cap=none

The module holds the detector class only (fitting, drawing, scoring, persistence; ~350 lines, most of them the
validated hyperparameters); its pure pieces live in the modules named above.

Example:
    >>> det = BankDetector().fit(classifier, x_val, y_val, x_adv_val)
    >>> det.score(x_test)          # [N] floats, higher = more adversarial
"""
from __future__ import annotations

import functools
import math
import secrets
from collections.abc import Sequence
from typing import Any, Literal

import torch

from neuroprint.checks import check_bool, check_float, check_int, check_layers, check_optional_cap
from neuroprint.detectors.bank_scores import SCORE_FUNCTIONS, Drawn
from neuroprint.detectors.base import Detector, FeatureSpec, resolve_layers
from neuroprint.detectors.fingerprint_selection import (
    check_subset_width,
    class_banks,
    pad_banks,
    sample_subsets,
    select_fingerprints,
)
from neuroprint.detectors.output_term import fit_class_centres, output_distance
from neuroprint.detectors.whitening import MAX_ZCA_WIDTH, whiten, within_class_whiteners
from neuroprint.errors import ConfigError, InputError
from neuroprint.features import POOLINGS, Features, Pooling, activations, extract
from neuroprint.models.classifier import Classifier
from neuroprint.registry import DETECTORS

SCORE_KINDS = tuple(SCORE_FUNCTIONS)
SAMPLINGS = ("seeded", "secure", "all", "fixed")
SUBSETS = ("concat", "layer")
#: secure draws per clean image when setting the threshold (`drawn_scores`)
CALIBRATION_DRAWS = 20
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
    - `random_state` seeds the candidate subsets and the "seeded" draw; `secret_key` (default False; the guard
      sets True) samples the candidates from a seed drawn from the OS CSPRNG and kept nowhere instead.
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
        secret_key: bool = False,
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
        check_bool("secret_key", secret_key)
        max_uses = check_optional_cap("max_uses", max_uses, integer=True)
        z_cap, output_cap = check_optional_cap("z_cap", z_cap), check_optional_cap("output_cap", output_cap)
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
        self.secret_key = secret_key
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

    @property
    def feature_spec(self) -> FeatureSpec | None:
        """The layers (fitted, or as configured) pooled with `pooling`; None for the authors' layer rule before
        fitting (which layers it picks depends on the classifier)."""
        if getattr(self, "layers_", None) is not None:
            return FeatureSpec(tuple(self.layers_), self.pooling)
        if self.layers == [AUTHORS]:
            return None
        return FeatureSpec(None if self.layers is None else tuple(self.layers), self.pooling)

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
        layers = self.feature_layers(classifier)
        clean, adv = (extract(classifier, images, layers, self.pooling) for images in (x, x_adv))
        return self.fit_features(classifier, clean, y, adv)

    def fit_features(self, classifier: Classifier, features: Features, y: torch.Tensor,
                     features_adv: Features) -> BankDetector:
        """`fit` on activations extracted as `feature_spec` says (clean with labels `y`, and adversarial)."""
        self.classifier_ = classifier
        self.layers_ = self.feature_layers(classifier)
        self._check_feature_pair(features, features_adv, tuple(self.layers_))
        widths = [int(features[n].shape[1]) for n in self.layers_]
        check_subset_width(self.d, self.subset, widths)
        f_clean, f_adv = (torch.cat([f[n] for n in self.layers_], dim=1) for f in (features, features_adv))
        self.fit_banks(f_clean, y.cpu(), f_adv, features_adv.logits.argmax(1), widths, classifier.num_classes)
        if self.output_cap is not None:
            self.fit_output_term(features.logits, f_clean, y.cpu())
        return self

    def fit_banks(self, f_clean: torch.Tensor, y: torch.Tensor, f_adv: torch.Tensor, adv_pred: torch.Tensor,
                  widths: list[int], n_classes: int) -> None:
        """Whiten and build the banks from activations: clean `[N, D]` with labels `y` `[N]`, adversarial `[M, D]`
        with predicted classes `adv_pred` `[M]`; `widths` are the neurons per layer of the concatenation. A class
        with fewer than `min_adv` clean or adversarial inputs, or fewer than `k` passing fingerprints, uses a bank
        built from all classes pooled (`class_banks`; `fit_report_["fallback_classes"]`)."""
        self.whiteners_ = within_class_whiteners(f_clean, y, widths, n_classes, self.shrinkage) if self.whiten else ()
        f_clean, f_adv = whiten(f_clean, self.whiteners_), whiten(f_adv, self.whiteners_)
        generator = torch.Generator().manual_seed(secrets.randbits(63) if self.secret_key else self.random_state)
        report: dict[str, Any] = {"sampled_layers": [n for n, w in zip(self.layers_, widths, strict=True)
                                                     if self.subset == "concat" or w >= self.d],
                                  "whitening": {n: ("none" if not self.whiten else "zca" if w <= MAX_ZCA_WIDTH else
                                                    "per-neuron") for n, w in zip(self.layers_, widths, strict=True)}}
        build = functools.partial(self.build_bank, widths=widths, generator=generator)
        banks, fallback = class_banks(f_clean, y, f_adv, adv_pred, n_classes, build, self.k, self.min_adv)
        report["fallback_classes"] = fallback
        report["classes"] = {str(c): {"n_clean": int((y == c).sum()), "n_adv": int((adv_pred == c).sum()),
                                      "n_fingerprints": len(bank["index"]), "fallback": c in fallback}
                             for c, bank in enumerate(banks)}
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
        """The output term's state from the clean fit inputs: logits `[N, K]`, activations `[N, D]`, labels `[N]`
        (`output_term.fit_class_centres`, then the clean mean and std of both terms for their normalisation)."""
        self.output_whitener_, self.output_means_ = fit_class_centres(logits, y, len(self.bank_sizes_), self.min_adv,
                                                                      self.shrinkage)
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
        return self.score_activations(*self.checked_activations(x))

    def score_features(self, features: Features) -> torch.Tensor:
        """`score` from precomputed activations (`feature_spec`) and their logits; one call is one draw."""
        return self.score_activations(*self.checked_feature_activations(features))

    def calibration_scores(self, x_clean: torch.Tensor) -> torch.Tensor:
        """Clean scores for the threshold (`Detector.calibrate`): with `sampling="secure"`, `CALIBRATION_DRAWS`
        draws per image `[N * draws]` from one forward pass, else `score` `[N]`."""
        return self.drawn_scores(*self.checked_activations(x_clean))

    def calibration_scores_features(self, features: Features) -> torch.Tensor:
        """`calibration_scores` from precomputed activations (`feature_spec`) of clean images."""
        return self.drawn_scores(*self.checked_feature_activations(features))

    def checked_activations(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`activations` of images `x` on the CPU, after checking that the bank is fitted and `x` is valid."""
        self._check_fitted()
        self.classifier_.check_input(x)
        logits, feats = self.activations(x.to(self.classifier_.device))
        return logits.cpu(), feats.cpu()

    def checked_feature_activations(self, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits `[N, K]`, concatenated activations `[N, D]`) of precomputed `features`, after checking them."""
        self._check_fitted()
        self._check_features(features, tuple(self.layers_), "features")
        return features.logits.cpu(), torch.cat([features[n] for n in self.layers_], dim=1).cpu()

    def drawn_scores(self, logits: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """`score_activations` of logits `[N, K]` and activations `[N, D]` over `CALIBRATION_DRAWS` independent
        draws for `sampling="secure"` (`[N * draws]`, draw-major), else once (`[N]`): the threshold is a quantile
        of the score a single query gets, random in the image *and* in the draw, and pooling draws estimates it
        with less noise than one draw per image."""
        draws = CALIBRATION_DRAWS if self.sampling == "secure" else 1
        return torch.cat([self.score_activations(logits, feats) for _ in range(draws)])

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
        """D `[N]` of logits `[N, K]` for predicted classes `pred` `[N]` (`output_term.output_distance`)."""
        return output_distance(logits, pred, self.output_whitener_, self.output_means_)

    def fingerprint_score(self, pred: torch.Tensor, feats: torch.Tensor, per_fingerprint: bool = False) -> torch.Tensor:
        """The `score_kind` score `[N]` (`bank_scores`) of the fingerprints drawn for predicted classes `pred` `[N]`
        from concatenated activations `feats` `[N, D]`: the sum over the drawn fingerprints, or with
        `per_fingerprint` (and always for "vote") the mean, whose scale depends neither on `k` nor on
        `sampling="all"` (the output term normalises this mean)."""
        scores, valid = self.fingerprint_scores(pred, feats, self.draw(pred))
        total = (scores * valid).sum(1)
        return total / valid.sum(1) if per_fingerprint or self.score_kind == "vote" else total

    def fingerprint_scores(self, pred: torch.Tensor, feats: torch.Tensor,
                           slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per fingerprint, the `score_kind` score `[N, m]` of bank slots `slots` `[N, m]` (as `draw` returns) of
        the banks of predicted classes `pred` `[N]`, from concatenated activations `feats` `[N, D]`, and a float
        mask `[N, m]` that is 0 on padding slots (a class whose bank is smaller than the widest)."""
        feats = whiten(feats, self.whiteners_)
        neurons = self.index_[pred[:, None], slots].long()  # [N, m, d]
        n, m, d = neurons.shape
        rows = (pred[:, None], slots)
        drawn = Drawn(feats.gather(1, neurons.view(n, m * d)).view(n, m, d).mean(-1), self.mu_clean_[rows],
                      self.sd_clean_[rows], self.mu_adv_[rows], self.sd_adv_[rows])
        valid = (slots < self.bank_sizes_[pred][:, None]).float()
        return SCORE_FUNCTIONS[self.score_kind](drawn, self.back_weight, self.z_cap), valid

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
