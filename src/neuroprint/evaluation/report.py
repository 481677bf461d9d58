"""Tables, ROC plots and JSON files from an `EvalReport` (written atomically), and the report back from its JSON."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from neuroprint.evaluation import metrics
from neuroprint.evaluation.examples import Example
from neuroprint.evaluation.protocol import EvalConfig
from neuroprint.evaluation.results import AttackSummary, DetectionResult, EvalReport
from neuroprint.io import atomic_path, write_json


def markdown_table(report: EvalReport) -> str:
    """Rows = detectors, columns = attacks; cells `AUC / TPR@5%FPR` in percent (like NeuralFP Table 1).

    A last row gives each attack's success rate on the test split, and a header line the fit attacks.
    """
    attacks = [a.spec for a in report.attacks if a.split == "test"]
    detectors = list(dict.fromkeys(r.detector for r in report.results))
    cell = {
        (r.detector, r.attack): "fit failed" if r.auc is None or r.tpr_at_fpr05 is None
        else f"{100 * r.auc:.2f} / {100 * r.tpr_at_fpr05:.1f}"
        for r in report.results
    }
    fit = report.config.fit_attacks
    lines = [
        f"Detection on {report.config.dataset} (model clean accuracy {100 * report.clean_accuracy:.2f}%), "
        + ("each detector fit on the attack it is tested on" if fit is None else f"fit on {'+'.join(fit)} only")
        + "; cells: AUC / TPR at 5% FPR (%)",
        "",
        "| detector | " + " | ".join(attacks) + " |",
        "|---|" + "---|" * len(attacks),
    ]
    for det in detectors:
        lines.append(f"| {det} | " + " | ".join(cell.get((det, a), "–") for a in attacks) + " |")
    rates = {a.spec: a for a in report.attacks if a.split == "test"}
    lines.append(
        "| *attack success* | "
        + " | ".join(f"{100 * rates[a].success_rate:.1f}% of {rates[a].n_attacked}" for a in attacks)
        + " |"
    )
    return "\n".join(lines)


def roc_figure(report: EvalReport) -> Figure:
    """One panel per test attack (one row up to four, then rows of three), one ROC curve per detector (results
    without ROC points are left out)."""
    attacks = list(dict.fromkeys(r.attack for r in report.results))
    cols = len(attacks) if len(attacks) <= 4 else 3
    rows = math.ceil(len(attacks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    for ax, attack in zip(axes.flat, attacks, strict=False):
        for r in (r for r in report.results if r.attack == attack and r.auc is not None and r.roc[0]):
            ax.plot(r.roc[0], r.roc[1], label=f"{r.detector} (AUC {100 * (r.auc or 0):.1f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        ax.set(title=attack, xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
    return tidy_panels(fig, len(attacks))


def roc_plot(report: EvalReport, path: str | Path) -> None:
    """`roc_figure` saved as PNG at `path`."""
    save_figure(roc_figure(report), path)


def tidy_panels(fig: Figure, used: int) -> Figure:
    """Blank the panels of `fig` after the first `used` and lay it out; returns `fig`."""
    for ax in fig.axes[used:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> None:
    """Write `fig` to `path` as PNG, atomically, and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


def write_outputs(report: EvalReport, out_dir: str | Path, json_path: str | Path | None = None) -> dict[str, Path]:
    """Write `results.md`, `roc.png` and the JSON record (to `json_path`, default `out_dir/results.json`)."""
    out = Path(out_dir)
    paths = {"table": out / "results.md", "roc": out / "roc.png", "json": Path(json_path or out / "results.json")}
    with atomic_path(paths["table"]) as tmp:
        tmp.write_text(markdown_table(report) + "\n")
    roc_plot(report, paths["roc"])
    write_json(paths["json"], report.to_json())
    return paths


def report_from_json(record: dict[str, Any]) -> EvalReport:
    """The `EvalReport` of a record written by `EvalReport.to_json` (its ROC points recomputed from the per-image
    scores; a record without scores gives results without ROC points). Fields this version does not know are
    ignored; a missing field raises KeyError, a malformed one TypeError or ValueError."""
    attacks = []
    for a in record["attacks"]:
        attacks.append(from_fields(AttackSummary, a))
        if a.get("val"):
            attacks.append(from_fields(AttackSummary, a["val"]))
    results = [from_fields(DetectionResult, r) for r in record["results"]]
    for r in results:
        if r.clean_scores and r.adv_scores:
            fprs, tprs = metrics.roc(r.clean_scores, r.adv_scores)
            r.roc = (fprs.tolist(), tprs.tolist())
    settings = record["config"]
    config = EvalConfig(dataset=record["dataset"], model=record["model"]["name"],
                        attacks=[a.spec for a in attacks if a.split == "test"],
                        detectors=list(dict.fromkeys(r.detector for r in results)),
                        fit_attacks=settings["fit_attacks"], n_fit=settings["n_fit"], n_test=settings["n_test"],
                        seed=record["seed"])
    return EvalReport(config, record["model"]["clean_accuracy"], record["model"]["dir"], attacks, results,
                      [from_fields(Example, e) for e in record.get("examples") or []], record.get("command"))


def from_fields(cls: type, values: dict[str, Any]) -> Any:
    """A dataclass `cls` from the keys of `values` it has as fields (others are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})
