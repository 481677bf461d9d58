"""The HTML report of an ownership record (`neuroprint ownership evaluate`): the suspects table with AUCs and
verdicts, the ROC curve, CAEAcc per suspect and the fingerprints."""
from __future__ import annotations

import json
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from neuroprint.ownership.experiment import OwnershipReport
from neuroprint.ownership.report import METHOD_NAMES, markdown_table, report_from_json, roc_figure
from neuroprint.report.html import (
    Part,
    Section,
    figure_html,
    markdown_html,
    provenance_section,
    table_html,
)

KIND_COLOURS = {"surrogate": "#d1495b", "reference": "#2d7dd2"}


def ownership_part(record: dict[str, Any]) -> Part:
    """Every section of an ownership record's report, under the heading "Ownership on <dataset>"."""
    report = report_from_json(record)
    roc = ("CAEAcc as a test of surrogate (positive) against reference (negative), suspects that kept their "
           "accuracy only")
    cae = (f"CAEAcc of every suspect per fingerprint; dashed: the verdict threshold rho = "
           f"{report.config.rho}; hollow markers: suspects that lost their accuracy (not counted)")
    fingerprints = [[METHOD_NAMES.get(m, m), fp.get("n"),
                     json.dumps({k: v for k, v in fp.items() if k != "n"}, sort_keys=True, default=str)]
                    for m, fp in report.fingerprints.items()]
    return Part(f"Ownership on {report.config.dataset}", [
        Section("Ownership verification", markdown_html(markdown_table(report))),
        Section("ROC curve", figure_html(roc_figure(report), roc)),
        Section("CAEAcc per suspect", figure_html(cae_figure(report), cae)),
        Section("Fingerprints", table_html(["method", "inputs", "details"], fingerprints)),
        provenance_section(record),
    ])


def cae_figure(report: OwnershipReport) -> Figure:
    """One panel per fingerprint method: every suspect's CAEAcc (%), coloured by kind, with the threshold
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
