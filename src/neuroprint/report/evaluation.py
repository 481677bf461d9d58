"""The HTML report of an evaluation record (`neuroprint evaluate`): tables, ROC curves, score histograms, the
attacks' success and perturbation sizes, and a grid of example images with every detector's verdict."""
from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from neuroprint.evaluation.report import markdown_table, report_from_json, roc_figure, tidy_panels
from neuroprint.evaluation.results import DetectionResult, EvalReport
from neuroprint.report.html import (
    Part,
    Section,
    esc,
    figure_html,
    markdown_html,
    png_uri,
    provenance_section,
    table_html,
)

CLEAN, ADVERSARIAL = "#2d7dd2", "#d1495b"
ROC_CAPTION = ("ROC curve per test attack, one line per detector: adversarial test images are the "
               "positives, clean test images the negatives")
HISTOGRAM_CAPTION = (
    "Scores of clean (blue) and adversarial (red) test images per detector and attack, with the detector's "
    "threshold (dashed; 5% FPR on clean validation images): red to the right of it is caught. Each panel "
    "spans the 0.5-99.5% quantiles of its scores and the threshold; scores beyond are counted in the outer "
    "bins."
)
ATTACK_CAPTION = ("Attack success on the test images and mean perturbation size of the successful examples "
                  "(pixel units of [0, 1] images)")
EXAMPLES_LEGEND = (
    "<p>The first successful adversarial examples of each attack on the test split (no selection). Verdicts: "
    '<span class="verdict right">right</span> a clean image passed or an attacked one was flagged; '
    '<span class="verdict wrong">wrong</span> otherwise. Perturbations are amplified to fill the colour '
    "scale (white = unchanged, red = brighter, blue = darker).</p>"
)


def evaluation_part(record: dict[str, Any]) -> Part:
    """Every section of an evaluation record's report, under the heading "Detection on <dataset>"."""
    report = report_from_json(record)
    attacks = attack_table(report) + figure_html(attack_figure(report), ATTACK_CAPTION)
    return Part(f"Detection on {report.config.dataset}", [
        Section("Detection", _detection_intro(report) + markdown_html(markdown_table(report))),
        Section("ROC curves", figure_html(roc_figure(report), ROC_CAPTION)),
        Section("Score distributions", _histograms(report)),
        Section("Examples", example_grids(report)),
        Section("Attacks", attacks),
        Section("All metrics", metrics_table(report)),
        provenance_section(record),
    ])


def _detection_intro(report: EvalReport) -> str:
    fit = report.config.fit_attacks
    how = (f"Every detector was fit once, on clean and {'+'.join(fit)} validation images, and tested on "
           "every attack: the other columns are attacks it never saw." if fit else
           "Every detector was fit on clean validation images and the attack of its column.")
    return (f"<p>{esc(how)} Test images are disjoint from the validation images; only correctly classified "
            "clean images and successful adversarial examples count; thresholds are set at 5% false-positive "
            "rate on held-out clean validation images.</p>")


def metrics_table(report: EvalReport) -> str:
    """Every result's metrics: AUC with its 95% bootstrap interval, TPR at 5% FPR, FPR at 95%/99% TPR,
    detection accuracy at the validation threshold (all in %), image counts, the threshold and the timings;
    below the table, why a detector could not be fit."""
    def pct(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.2f}"

    def number(value: float | None, scale: float, digits: str) -> str:
        return "–" if value is None else f"{scale * value:{digits}}"

    rows = [[r.detector, r.attack, "+".join(r.fit_attacks) or "clean only", pct(r.auc),
             f"{pct(r.auc_ci95[0])}–{pct(r.auc_ci95[1])}" if r.auc_ci95 else "–", pct(r.tpr_at_fpr05),
             pct(r.fpr_at_tpr95), pct(r.fpr_at_tpr99), pct(r.detection_accuracy), r.n_clean, r.n_adv,
             number(r.threshold, 1, ".4g"), number(r.fit_seconds, 1, ".1f"),
             number(r.score_seconds_per_image, 1000, ".2f")] for r in report.results]
    header = ["detector", "attack", "fit on", "AUC", "AUC 95% CI", "TPR@5%FPR", "FPR@95%TPR", "FPR@99%TPR",
              "detection acc.", "clean", "adversarial", "threshold", "fit (s)", "score (ms/image)"]
    failures = dict.fromkeys((r.detector, "+".join(r.fit_attacks), r.error)
                             for r in report.results if r.error)
    notes = "".join(f'<p class="muted">{esc(det)} could not be fit on {esc(fit)}: {esc(error)}</p>'
                    for det, fit, error in failures)
    return table_html(header, rows) + notes


def _histograms(report: EvalReport) -> str:
    if not any(r.clean_scores and r.adv_scores for r in report.results):
        return "<p>This record holds no per-image scores (it was written before they were recorded).</p>"
    return figure_html(score_histograms(report), HISTOGRAM_CAPTION, dpi=80)


def score_histograms(report: EvalReport, bins: int = 30) -> Figure:
    """Rows = detectors, columns = test attacks: histograms of clean and adversarial scores and the
    threshold."""
    detectors = list(dict.fromkeys(r.detector for r in report.results))
    attacks = list(dict.fromkeys(r.attack for r in report.results))
    fig, axes = plt.subplots(len(detectors), len(attacks), squeeze=False,
                             figsize=(3.2 * len(attacks), 2.4 * len(detectors)))
    found = {(r.detector, r.attack): r for r in report.results}
    for (i, det), (j, attack) in ((d, a) for d in enumerate(detectors) for a in enumerate(attacks)):
        ax = axes[i, j]
        ax.set_title(f"{det} vs {attack}", fontsize=9)
        result = found.get((det, attack))
        if result is None or not (result.clean_scores and result.adv_scores):
            note = "not tested" if result is None else "fit failed" if result.error else "no scores recorded"
            ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, color="grey")
            ax.set(xticks=[], yticks=[])
            continue
        _histogram(ax, result, bins)
    return tidy_panels(fig, len(fig.axes))


def _histogram(ax: Axes, result: DetectionResult, bins: int) -> None:
    clean, adv = np.asarray(result.clean_scores), np.asarray(result.adv_scores)
    low, high = np.quantile(np.r_[clean, adv], [0.005, 0.995])
    if result.threshold is not None:
        low, high = min(low, result.threshold), max(high, result.threshold)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    for values, colour, label in ((clean, CLEAN, "clean"), (adv, ADVERSARIAL, "adversarial")):
        ax.hist(np.clip(values, low, high), bins=edges, color=colour, alpha=0.55, label=label)
    if result.threshold is not None:
        ax.axvline(result.threshold, color="black", linestyle="--", linewidth=1)
    ax.tick_params(labelsize=7)
    ax.set_xlabel("score (higher = more adversarial)", fontsize=7)


def attack_table(report: EvalReport) -> str:
    """Per attack: images attacked, success rate (%), mean L2 and L-inf of successful examples (pixel units)
    and seconds, on the test split and (where detectors were fit on it) the validation split."""
    val = {a.spec: a for a in report.attacks if a.split == "val"}
    rows = []
    for a in (a for a in report.attacks if a.split == "test"):
        v = val.get(a.spec)
        rows.append([a.spec, a.n_attacked, f"{100 * a.success_rate:.1f}", _size(a.mean_l2),
                     _size(a.mean_linf), f"{a.seconds:.1f}", v.n_attacked if v else "–",
                     f"{100 * v.success_rate:.1f}" if v else "–"])
    return table_html(["attack", "test images attacked", "success (%)", "mean L2", "mean L-inf", "seconds",
                       "validation images attacked", "validation success (%)"], rows)


def _size(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


def attack_figure(report: EvalReport) -> Figure:
    """Three bar panels over the test attacks: success rate (%), mean L2 and mean L-inf of successful
    examples."""
    tests = [a for a in report.attacks if a.split == "test"]
    names = [a.spec for a in tests]
    fig, axes = plt.subplots(1, 3, figsize=(11, 2.3 + 0.05 * max(len(name) for name in names)))
    panels = (("success (%)", [100 * a.success_rate for a in tests]), ("mean L2", [a.mean_l2 for a in tests]),
              ("mean L-inf", [a.mean_linf for a in tests]))
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.bar(range(len(names)), [0 if v is None or math.isnan(v) else v for v in values], color="#5b7db1")
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
    return tidy_panels(fig, 3)


def example_grids(report: EvalReport) -> str:
    """Per test attack, a grid of its example images: clean source (true label), adversarial image (the label
    the classifier gives it), the amplified perturbation, and per detector its score and verdict on both."""
    if not report.examples:
        return "<p>This record holds no example images (it was written before they were recorded).</p>"
    out = [EXAMPLES_LEGEND]
    results = {(r.detector, r.attack): r for r in report.results}
    detectors = list(dict.fromkeys(r.detector for r in report.results))
    for attack in dict.fromkeys(e.attack for e in report.examples):
        shown = [e for e in report.examples if e.attack == attack]
        rows = [
            ["clean", *[_img(e.clean_png, f"clean, label {e.label}") + f"label {e.label}" for e in shown]],
            ["attacked", *[_img(e.adversarial_png, f"attacked, classified {e.adv_pred}")
                           + f"classified {e.adv_pred}" for e in shown]],
            ["perturbation", *[_img(e.perturbation_png, "perturbation") + f"L2 {e.l2:.2f}, L-inf {e.linf:.2f}"
                               for e in shown]],
            *[[esc(det), *[_verdicts(results.get((det, attack)), i) for i in range(len(shown))]]
              for det in detectors],
        ]
        header = ["", *[f"test image {e.source_index}" for e in shown]]
        out.append(f"<h4>{esc(attack)}</h4>" + table_html(header, rows, raw=True, css_class="examples"))
    return "\n".join(out)


def _img(png: str, alt: str) -> str:
    return f'<img class="px" src="{png_uri(png)}" alt="{esc(alt)}">'


def _verdicts(result: DetectionResult | None, i: int) -> str:
    """The detector's verdicts on example `i`: clean source and adversarial image, each right or wrong."""
    if result is None or result.threshold is None or not result.example_scores:
        return '<span class="muted">–</span>'
    out = []
    for kind, label in (("clean", "clean"), ("adversarial", "attacked")):
        score = result.example_scores[kind][i]
        flagged = score > result.threshold
        right = flagged == (kind == "adversarial")
        out.append(f'<span class="verdict {"right" if right else "wrong"}">{label}: '
                   f'{"flagged" if flagged else "passed"} {score:.3g}</span>')
    return "<br>".join(out)
