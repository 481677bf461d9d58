"""Tables, convergence curves and the JSON record of a `RobustnessReport` (written atomically), and the report
back from its JSON."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from neuroprint.adaptive import make_adaptive_attack
from neuroprint.adaptive.robustness import (
    AttackOutcome,
    Budget,
    DetectorOutcome,
    RobustnessConfig,
    RobustnessReport,
)
from neuroprint.evaluation.report import from_fields, save_figure, tidy_panels
from neuroprint.io import atomic_path, write_json


def markdown_table(report: RobustnessReport) -> str:
    """Per detector and budget: SR@FPR (%) of every attack, the worst case over them (per image), the budget's
    attack success with no detector, and the FPR reached on clean test images."""
    c = report.config
    attacks = list(dict.fromkeys(a.attack for o in report.outcomes for a in o.attacks))
    pct = f"{100 * c.fpr:g}%"
    lines = [
        (f"SR@{pct}FPR on {c.dataset} (model clean accuracy {100 * report.clean_accuracy:.2f}%): share of "
         f"{_attacked(report)} attacked {c.sources} images misclassified and not flagged, in %; detectors fit on "
         f"{c.fit_attack}, thresholds at {pct} FPR on clean validation images; {c.steps} steps x {c.restarts} "
         f"restart(s) per attack"
         + ("." if c.attacker_seed is None else
            f"; the attacker attacks through its own copy of each detector (seed {c.attacker_seed}).")),
        "",
        "| detector | budget | " + " | ".join(attacks) + " | **worst case** | no detector | FPR test |",
        "|---|---|" + "---|" * len(attacks) + "---|---|---|",
    ]
    for o in report.outcomes:
        if o.error is not None:
            lines.append(f"| {o.detector} | – | not evaluated: {o.error} |" + " |" * (len(attacks) + 2))
            continue
        for budget, worst in o.worst_case.items():
            sr = {a.attack: a.sr for a in o.attacks if a.budget == budget}
            cells = [("n/a" if math.isnan(sr[a]) else f"{100 * sr[a]:.1f}") if a in sr else "–" for a in attacks]
            none = o.no_detector.get(budget)
            lines.append(f"| {o.detector} | {budget} | " + " | ".join(cells) + f" | **{100 * worst:.1f}** | "
                         + (f"{100 * none:.1f}" if none is not None else "–") + f" | {100 * (o.fpr_test or 0):.1f} |")
    lines += ["", "Attacker's gradient per detector: "
              + "; ".join(f"{o.detector}: {o.gradient}" for o in report.outcomes if o.error is None) + "."]
    return "\n".join(lines)


@dataclass(frozen=True)
class Cell:
    """One detector at one budget in a joined table: worst-case and no-detector rates (%), the attacks that ran,
    whether they were the detector's whole suite, the steps per attack and the suite's wall time (seconds, on
    the images attacked)."""

    worst: float
    no_detector: float
    attacks: tuple[str, ...]
    full_suite: bool
    steps: int
    seconds: float


def join_reports(reports: list[RobustnessReport]) -> tuple[dict[str, dict[str, Cell]], dict[str, list[float]]]:
    """Per row (a detector, with its model when that is not `mnist-net`) and budget the `Cell` of `reports`, and
    per row the FPRs (%) reached on clean test images. Where several reports hold a cell, the one that ran more of
    the suite wins."""
    cells: dict[str, dict[str, Cell]] = {}
    fpr_test: dict[str, list[float]] = {}
    for report in reports:
        model = Path(report.config.model).name
        for outcome in report.outcomes:
            if outcome.error is not None:
                continue
            label = outcome.detector if model == "mnist-net" else f"{outcome.detector} ({model})"
            fpr_test.setdefault(label, []).append(100 * (outcome.fpr_test or 0.0))
            name = outcome.detector.split(":")[0]
            suite = {make_adaptive_attack(spec).name for spec in RobustnessConfig([name]).suite(name)}
            for budget, worst in outcome.worst_case.items():
                ran = [a for a in outcome.attacks if a.budget == budget and a.error is None]
                names = tuple(a.attack for a in ran)
                no_detector = max((a.fooled for a in ran), default=math.nan)  # as `_measure_budget` defines it
                cell = Cell(100 * worst, 100 * no_detector, names, suite <= set(names), report.config.steps,
                            sum(a.seconds for a in ran))
                old = cells.setdefault(label, {}).get(budget)
                if old is None or (cell.full_suite, len(cell.attacks)) > (old.full_suite, len(old.attacks)):
                    cells[label][budget] = cell
    return cells, fpr_test


def _budget_header(budgets: list[str]) -> tuple[list[str], str]:
    """The budgets' canonical keys and the Markdown header cells naming them."""
    columns = [str(Budget.parse(b)) for b in budgets]
    return columns, " | ".join(f"{'L-inf' if b.startswith('linf') else 'L2'} {b.split(':')[1]}" for b in columns)


def joined_table(reports: list[RobustnessReport], budgets: list[str]) -> str:
    """Markdown: worst-case SR@FPR (%) per row of `join_reports` and budget; in brackets the highest
    misclassification rate of one attack (what the classifier alone concedes; recomputed from the attacks, so
    records written before `no_detector` meant that read alike). A cell from only part of the detector's suite is
    marked with a dagger and its attacks are listed below the table (a lower bound from weaker attacks)."""
    cells, fpr_test = join_reports(reports)
    columns, header = _budget_header(budgets)
    lines = [f"| detector | {header} | steps | FPR on clean test (%) |", "|---|" + "---|" * (len(columns) + 2)]
    partial = []
    for label, row in cells.items():
        shown = []
        for budget in columns:
            cell = row.get(budget)
            if cell is None:
                shown.append("–")
                continue
            shown.append(f"**{cell.worst:.1f}**{'' if cell.full_suite else '†'} ({cell.no_detector:.0f})")
            if not cell.full_suite:
                partial.append(f"{label} at {budget}: {', '.join(cell.attacks)}")
        steps = "/".join(str(s) for s in sorted({cell.steps for cell in row.values()}))
        lines.append(f"| {label} | " + " | ".join(shown) + f" | {steps} | "
                     f"{min(fpr_test[label]):.1f}–{max(fpr_test[label]):.1f} |")
    if partial:
        lines += ["", "† Part of the suite only (a lower bound from weaker attacks): " + "; ".join(partial) + "."]
    return "\n".join(lines)


def joined_wall_times(reports: list[RobustnessReport], budgets: list[str]) -> str:
    """Markdown: per row of `join_reports` and budget, the minutes the suite took on the images attacked (images
    that evade stop early, so a strong detector costs more than a broken one)."""
    cells, _ = join_reports(reports)
    columns, header = _budget_header(budgets)
    lines = [f"| detector | {header} |", "|---|" + "---|" * len(columns)]
    for label, row in cells.items():
        lines.append(f"| {label} | " + " | ".join(f"{row[b].seconds / 60:.1f}" if b in row else "–" for b in columns)
                     + " |")
    return "\n".join(lines)


def _attacked(report: RobustnessReport) -> int:
    """How many test images were attacked (the correctly classified ones among those drawn)."""
    return next((a.n for o in report.outcomes for a in o.attacks), report.config.n_attack)


def convergence_figure(report: RobustnessReport) -> Figure:
    """One panel per (detector, budget): the share of images evading the attacker's view after each step, one
    line per attack; a curve that is still rising at the right edge says the attack needed more steps."""
    panels = [(o, b) for o in report.outcomes for b in o.worst_case]
    cols = min(4, max(len(panels), 1))
    rows = max(math.ceil(len(panels) / cols), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, (o, budget) in zip(axes.flat, panels, strict=False):
        for a in (a for a in o.attacks if a.budget == budget and a.curve):
            ax.plot(range(1, len(a.curve) + 1), [100 * v for v in a.curve], label=a.attack, linewidth=1)
        ax.set(title=f"{o.detector} {budget}", xlabel="step", ylabel="evading (%)", ylim=(0, 101))
        ax.title.set_fontsize(9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="lower right")
    return tidy_panels(fig, len(panels))


def convergence_plot(report: RobustnessReport, path: str | Path) -> None:
    """`convergence_figure` saved as PNG at `path`."""
    save_figure(convergence_figure(report), path, dpi=100)


def write_outputs(report: RobustnessReport, out_dir: str | Path, json_path: str | Path | None = None) -> dict[str, Path]:
    """Write `robustness.md`, `convergence.png` and the JSON record (`json_path`, default `out_dir/robustness.json`)."""
    out = Path(out_dir)
    paths = {"table": out / "robustness.md", "curves": out / "convergence.png",
             "json": Path(json_path or out / "robustness.json")}
    with atomic_path(paths["table"]) as tmp:
        tmp.write_text(markdown_table(report) + "\n")
    convergence_plot(report, paths["curves"])
    write_json(paths["json"], report.to_json())
    return paths


def report_from_json(record: dict[str, Any]) -> RobustnessReport:
    """The `RobustnessReport` of a record written by `RobustnessReport.to_json`. Fields this version does not
    know are ignored; a missing field raises KeyError, a malformed one TypeError or ValueError."""
    c = record["config"]
    config = RobustnessConfig(detectors=c["detectors"], budgets=c["budgets"], attacks=c["attacks"],
                              dataset=record["dataset"], model=record["model"]["name"], fit_attack=c["fit_attack"],
                              n_fit=c["n_fit"], n_attack=c["n_attack"], steps=c["steps"], restarts=c["restarts"],
                              eot=c["eot"], fpr=c["fpr"], seed=record["seed"], sources=c.get("sources", "test"),
                              attacker_seed=c.get("attacker_seed"))
    outcomes = [from_fields(DetectorOutcome, {**o, "attacks": [from_fields(AttackOutcome, a) for a in o["attacks"]]})
                for o in record["outcomes"]]
    return RobustnessReport(config, record["model"]["clean_accuracy"], record["model"]["dir"], outcomes,
                            record["seconds"], record.get("command"))
