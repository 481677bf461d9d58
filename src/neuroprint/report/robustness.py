"""The HTML report of a robustness record (`neuroprint robustness`): SR@FPR per attack and budget, the worst
case, every attack's cost and convergence curves."""
from __future__ import annotations

import math
from typing import Any

from neuroprint.adaptive.report import convergence_figure, markdown_table, report_from_json
from neuroprint.adaptive.robustness import RobustnessReport
from neuroprint.report.html import (
    Part,
    Section,
    figure_html,
    markdown_html,
    provenance_section,
    table_html,
)


def robustness_part(record: dict[str, Any]) -> Part:
    """Every section of a robustness record's report, under the heading "Adaptive attacks on <dataset>"."""
    report = report_from_json(record)
    c = report.config
    intro = ("<p>Attackers who know the classifier and the detector (its threshold included) attack "
             "correctly classified test images within each budget; an image counts as lost when it is "
             f"misclassified and not flagged (SR@{100 * c.fpr:g}%FPR, lower = a stronger defence). The "
             "worst case is per image over every attack.</p>")
    curves = ("Share of attacked images evading the attacker's copy of the detector after each step; a curve "
              "still rising at the right edge needed more steps")
    return Part(f"Adaptive attacks on {c.dataset}", [
        Section("Adaptive attacks", intro + markdown_html(markdown_table(report))),
        Section("Worst case", worst_case_table(report)),
        Section("Convergence", figure_html(convergence_figure(report), curves)),
        Section("Every attack", attack_table(report)),
        provenance_section(record),
    ])


def worst_case_table(report: RobustnessReport) -> str:
    """Per detector and budget: the worst-case SR@FPR, the attack success with no detector judging, the FPR
    the threshold reaches on clean test images (all in %), the threshold and the attacker's gradient."""
    rows = []
    for o in report.outcomes:
        if o.error is not None:
            rows.append([o.detector, "–", "–", "–", "–", "–", f"not evaluated: {o.error}"])
            continue
        for budget, worst in o.worst_case.items():
            none = o.no_detector.get(budget)
            rows.append([o.detector, budget, f"{100 * worst:.1f}",
                         "–" if none is None else f"{100 * none:.1f}", f"{100 * (o.fpr_test or 0):.1f}",
                         "–" if o.threshold is None else f"{o.threshold:.4g}", o.gradient])
    return table_html(["detector", "budget", "worst-case SR (%)", "no detector (%)", "FPR on clean test (%)",
                       "threshold", "attacker's gradient"], rows)


def attack_table(report: RobustnessReport) -> str:
    """Every attack run: images, fooled, evading the attacker's view and SR@FPR (%), steps, restarts and
    cost."""
    def pct(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{100 * value:.1f}"

    rows = [[a.detector, a.budget, a.attack, a.n, pct(a.fooled), pct(a.evaded_attacker_view), pct(a.sr),
             a.steps, a.restarts, f"{a.seconds:.1f}",
             "–" if a.ms_per_image_step is None else f"{a.ms_per_image_step:.2f}", a.error or ""]
            for o in report.outcomes for a in o.attacks]
    return table_html(["detector", "budget", "attack", "images", "fooled (%)", "evaded view (%)", "SR (%)",
                       "steps", "restarts", "seconds", "ms per image-step", "error"], rows)
