"""Tables, ROC plot and JSON of an ownership experiment (`OwnershipReport`), written atomically, and the report
back from its JSON."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from neuroprint.evaluation.report import from_fields, save_figure
from neuroprint.io import atomic_path, write_json
from neuroprint.ownership.cem import CEMConfig
from neuroprint.ownership.experiment import OwnershipConfig, OwnershipReport
from neuroprint.ownership.ipguard import IPGuardConfig
from neuroprint.ownership.scoring import SuspectResult, auc_against_references, counted, family_summary

METHOD_NAMES = {"cem": "CEM (conferrable)", "ipguard": "IPGuard"}


def markdown_table(report: OwnershipReport) -> str:
    """One row per unseen suspect: test accuracy, whether it counts, CAEAcc per query set and its AUC against all
    references; then the overall AUCs and the conferrability comparison (when run)."""
    methods = list(report.auc)
    cfg = report.config
    lines = [
        f"Ownership on {cfg.dataset}: source {cfg.architecture} at {100 * report.source_accuracy:.2f}% test accuracy; "
        f"CEM eps {cfg.cem.eps}, tau {cfg.tau}; query sets: "
        + ", ".join(f"{m} {report.query_sets[m]['n']} inputs" for m in methods),
        "",
        "| suspect | kind | test acc (%) | agrees with source (%) | queries | counts | "
        + " | ".join(f"{METHOD_NAMES.get(m, m)} CAEAcc (%) / AUC" for m in methods) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(methods),
    ]
    for s in report.suspects:
        cells = []
        for m in methods:
            auc = f" / {auc_against_references(s, report.suspects, m):.2f}" if s.kind == "surrogate" else ""
            cells.append(f"{100 * s.cae_acc[m]:.0f}{auc}")
        agreement = "" if s.agreement is None else f"{100 * s.agreement:.2f}"
        queries = "weights" if s.queries is None and s.kind == "surrogate" else f"{s.queries or ''}"
        lines.append(f"| {s.name} | {s.kind} | {100 * s.test_accuracy:.2f} | {agreement} | {queries} | "
                     f"{'yes' if s.counts else 'no (accuracy lost)'} | " + " | ".join(cells) + " |")
    lines += ["", "ROC AUC of CAEAcc, surrogates vs references (those that kept their accuracy): "
              + ", ".join(f"{METHOD_NAMES.get(m, m)} {_fmt(v)}" for m, v in report.auc.items()),
              "", *family_table(report.suspects, methods),
              "", f"Verdicts at rho = {cfg.rho}: " + "; ".join(_verdicts(report, m) for m in methods)]
    if report.conferrability:
        lines += ["", "Mean conferrability on the unseen models of successful examples (success rate in brackets):", "",
                  "| eps | " + " | ".join(dict.fromkeys(r["attack"] for r in report.conferrability)) + " |",
                  "|---|" + "---|" * len(dict.fromkeys(r["attack"] for r in report.conferrability))]
        for eps in dict.fromkeys(r["eps"] for r in report.conferrability):
            row = [r for r in report.conferrability if r["eps"] == eps]
            lines.append(f"| {eps} | " + " | ".join(f"{_fmt(r['conferrability'])} ({100 * r['success_rate']:.0f}%)"
                                                     for r in row) + " |")
    return "\n".join(lines)


def family_table(suspects: list[SuspectResult], methods: list[str]) -> list[str]:
    """Per removal family and for the references (counted suspects only): mean agreement with the source on clean
    test images, and per query set the mean CAEAcc and the family's AUC against the references."""
    summaries = {m: family_summary(suspects, m) for m in methods}
    lines = ["By removal family (suspects that kept their accuracy):", "",
             "| family | suspects (counted) | agrees with source (%) | "
             + " | ".join(f"{METHOD_NAMES.get(m, m)} CAEAcc (%) / AUC" for m in methods) + " |",
             "|---|---|---|" + "---|" * len(methods)]
    for i, row in enumerate(summaries[methods[0]]):
        cells = [f"{_pct(summaries[m][i]['cae_acc'])} / {_fmt(summaries[m][i]['auc'])}" for m in methods]
        lines.append(f"| {row['family']} | {row['n']} ({row['counted']}) | {_pct(row['agreement'])} | "
                     + " | ".join(cells) + " |")
    return lines


def _pct(value: object) -> str:
    return "n/a" if not isinstance(value, float) or math.isnan(value) else f"{100 * value:.1f}"


def _verdicts(report: OwnershipReport, method: str) -> str:
    """How many counted surrogates and references reach CAEAcc >= rho with `method`'s query set."""
    rho = report.config.rho
    surrogates = [s for s in counted(report.suspects) if s.kind == "surrogate"]
    references = [s for s in counted(report.suspects) if s.kind == "reference"]
    caught = sum(s.cae_acc[method] >= rho for s in surrogates)
    accused = sum(s.cae_acc[method] >= rho for s in references)
    return (f"{METHOD_NAMES.get(method, method)} flags {caught} of {len(surrogates)} surrogates and {accused} of "
            f"{len(references)} references")


def _query_sets(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The record's query sets (records written before neuroprint called them so hold them as "fingerprints")."""
    return record["fingerprints"] if "query_sets" not in record and "fingerprints" in record else record["query_sets"]


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def roc_figure(report: OwnershipReport) -> Figure:
    """ROC curves of CAEAcc (counted surrogates positive, references negative), one per query-set method."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    kept = counted(report.suspects)
    labels = [s.kind == "surrogate" for s in kept]
    for method, auc in report.auc.items():
        if math.isnan(auc):
            continue
        fpr, tpr, _ = roc_curve(labels, [s.cae_acc[method] for s in kept])
        ax.plot(fpr, tpr, label=f"{METHOD_NAMES.get(method, method)} (AUC {auc:.2f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    ax.set(title="surrogate vs reference", xlabel="false positive rate", ylabel="true positive rate")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def roc_plot(report: OwnershipReport, path: str | Path) -> None:
    """`roc_figure` saved as PNG at `path`."""
    save_figure(roc_figure(report), path, dpi=120)


def write_outputs(report: OwnershipReport, out_dir: str | Path) -> dict[str, Path]:
    """Write `results.md`, `results.json` and `roc.png` into `out_dir`; returns their paths."""
    out = Path(out_dir)
    paths = {"markdown": out / "results.md", "json": out / "results.json", "roc": out / "roc.png"}
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(markdown_table(report) + "\n")
    write_json(paths["json"], report.to_json())
    roc_plot(report, paths["roc"])
    return paths


def report_from_json(record: dict[str, Any]) -> OwnershipReport:
    """The `OwnershipReport` of a record written by `OwnershipReport.to_json`. Fields this version does not know
    are ignored; a missing field raises KeyError, a malformed one TypeError or ValueError."""
    c = record["config"]
    config = from_fields(OwnershipConfig, {**c, "cem": from_fields(CEMConfig, c["cem"]),
                                           "ipguard": from_fields(IPGuardConfig, c["ipguard"]),
                                           "cache_dir": Path(c["cache_dir"])})
    return OwnershipReport(config, record["source_accuracy"], _query_sets(record),
                           [from_fields(SuspectResult, s) for s in record["suspects"]], record["auc"],
                           record["conferrability"], record["seconds"], record["provenance"], record.get("command"))
