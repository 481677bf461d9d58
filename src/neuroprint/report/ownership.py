"""The HTML report of an ownership record (`neuroprint ownership evaluate`): the suspects table with AUCs and
verdicts, the ROC curve, CAEAcc per suspect and the query sets."""
from __future__ import annotations

import json
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from neuroprint.ownership.experiment import OwnershipReport
from neuroprint.ownership.report import METHOD_NAMES, markdown_table, report_from_json, roc_figure
from neuroprint.report import html

KIND_COLOURS = {"surrogate": "#d1495b", "reference": "#2d7dd2"}


def ownership_part(record: dict[str, Any]) -> html.Part:
    """Every section of an ownership record's report, under the heading "Ownership on <dataset>"."""
    report = report_from_json(record)
    roc = ("CAEAcc as a test of surrogate (positive) against reference (negative), suspects that kept their "
           "accuracy only")
    cae = (f"CAEAcc of every suspect per query set; dashed: the verdict threshold rho = "
           f"{report.config.rho}; hollow markers: suspects that lost their accuracy (not counted)")
    query_sets = [[METHOD_NAMES.get(m, m), facts.get("n"),
                   json.dumps({k: v for k, v in facts.items() if k != "n"}, sort_keys=True, default=str)]
                  for m, facts in report.query_sets.items()]
    return html.Part(f"Ownership on {report.config.dataset}", [
        html.Section("Ownership verification", html.markdown_html(markdown_table(report))),
        html.Section("ROC curve", html.figure_html(roc_figure(report), roc)),
        html.Section("CAEAcc per suspect", html.figure_html(cae_figure(report), cae)),
        html.Section("Query sets", html.table_html(["method", "inputs", "details"], query_sets)),
        html.provenance_section(record),
    ])


def cae_figure(report: OwnershipReport) -> Figure:
    """One panel per query-set method: every suspect's CAEAcc (%), coloured by kind, with the threshold
    rho."""
    methods = list(report.auc)
    names = [s.name for s in report.suspects]
    fig, axes = plt.subplots(1, len(methods), squeeze=False, sharey=True,
                             figsize=(4.2 * len(methods) + 2.5, max(2.4, 1.0 + 0.26 * len(names))))
    for ax, method in zip(axes[0], methods, strict=True):
        for y, s in enumerate(report.suspects):
            colour = KIND_COLOURS.get(s.kind, "grey")
            ax.scatter(100 * s.cae_acc[method], y, s=28, color=colour if s.counts else "white",
                       edgecolors=colour, label=s.kind if s.counts else None)
        ax.axvline(100 * report.config.rho, color="black", linestyle="--", linewidth=1)
        ax.set(title=METHOD_NAMES.get(method, method), xlabel="CAEAcc (%)", xlim=(-2, 102))
        ax.title.set_fontsize(10)
        handles, labels = ax.get_legend_handles_labels()
        first = {label: handle for handle, label in zip(handles, labels, strict=True)}  # one entry per kind
        if first:
            ax.legend(first.values(), first.keys(), fontsize=7, loc="best")
    axes[0, 0].set_yticks(range(len(names)), names, fontsize=7)
    axes[0, 0].set_ylim(len(names) - 0.5, -0.5)  # first suspect on top
    fig.tight_layout()
    return fig
