"""The adaptive-robustness table of BENCHMARKS.md from one command: every detector at every budget, worst case
over the adaptive suite (SR@5%FPR, Bryniarski et al. 2022, arXiv 2106.15023).

Each entry of `RUNS` is one `neuroprint robustness` run on MNIST (detectors fit on 2,000 validation PGD sources,
thresholds at 5% FPR on held-out clean validation images, 100 correctly classified test images attacked) whose
record lands in `experiments/results/robustness/NAME/`. A run whose record is already there is reused (so an
interrupted table resumes where it stopped); `--rerun NAME` runs it again. The table then joins every record
(`neuroprint.adaptive.report.joined_table`: one row per detector and model, one column per budget, a dagger on
cells where only part of the suite ran), with the suite's wall time per cell, into
`experiments/results/robustness/table.md`.

Run: OMP_NUM_THREADS=2 .venv/bin/python -m experiments.robustness_table [--only NAME ...] [--rerun NAME ...]
     [--table-only]
The records' `seconds` add up to about 13 hours on 2 CPU cores, about 8 of them NeuralFP's six budgets, whose L-inf
records each ran its paper's attack (36-68 min); from scratch it runs once and every other budget reuses its output.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from neuroprint.adaptive.report import joined_table, joined_wall_times, report_from_json, write_outputs
from neuroprint.adaptive.robustness import RobustnessConfig, RobustnessReport, run_robustness
from neuroprint.cli.options import train_config
from neuroprint.io import atomic_path

RESULTS = Path(__file__).resolve().parent / "results" / "robustness"
#: The shipped NeuralFP-trained mnist-net (N = 10 probes): NeuralFP is only defined on a model trained with them.
NEURALFP_MODEL = "src/neuroprint/models/weights/mnist-net-mnist-0cf2c37ce1"
BUDGETS = ["linf:0.05", "linf:0.1", "linf:0.2", "linf:0.3", "l2:1", "l2:2"]
BANKS = ["bank:sampling=secure", "bank:sampling=fixed", "bank:sampling=all"]
OTHERS = ["lid", "kdbu", "distance-space", "binary-activation", "dknn"]


@dataclass(frozen=True)
class Run:
    """One `neuroprint robustness` run: `detectors` x `budgets`, `steps` per attack, the whole suite unless
    `attacks` names some, on `model`; test images attacked unless `sources` says "validation", through the
    defender's own detectors unless `attacker_seed` gives the attacker its own copies."""

    name: str
    detectors: list[str]
    budgets: list[str]
    steps: int
    attacks: list[str] | None = None
    model: str = "mnist-net"
    sources: str = "test"
    attacker_seed: int | None = None

    def config(self) -> RobustnessConfig:
        return RobustnessConfig(detectors=self.detectors, budgets=self.budgets, attacks=self.attacks,
                                model=self.model, train=train_config(4, 0), n_fit=2000, n_attack=100,
                                steps=self.steps, sources=self.sources, attacker_seed=self.attacker_seed)


# The bank and Mahalanobis get 500 steps (their curves rise longest, docs/benchmarks/adaptive.md), the others 300.
RUNS = [
    Run("bank-secure-mahalanobis", ["bank:sampling=secure", "mahalanobis"], ["linf:0.1", "linf:0.3"], 500),
    Run("bank-secure-mahalanobis-more", ["bank:sampling=secure", "mahalanobis"], ["linf:0.2", "l2:2"], 500),
    Run("bank-secure-mahalanobis-small", ["bank:sampling=secure", "mahalanobis"], ["linf:0.05", "l2:1"], 500),
    Run("bank-fixed-all", BANKS[1:], ["linf:0.3"], 500),
    Run("bank-fixed-all-more", BANKS[1:], ["linf:0.05", "linf:0.1", "linf:0.2", "l2:1", "l2:2"], 500),
    Run("others", [*OTHERS, "nnif"], ["linf:0.1", "linf:0.3"], 300),
    Run("others-more", OTHERS, ["linf:0.2", "l2:2"], 300),
    Run("others-small", OTHERS, ["linf:0.05", "l2:1"], 300),
    Run("nnif-more", ["nnif"], ["linf:0.05", "linf:0.2", "l2:1", "l2:2"], 300),
    Run("neuralfp", ["neuralfp"], ["linf:0.1", "linf:0.3"], 300, ["joint"], NEURALFP_MODEL),
    Run("neuralfp-more", ["neuralfp"], ["linf:0.3"], 300, ["joint", "high-confidence"], NEURALFP_MODEL),
    # the whole suite on NeuralFP, one run per budget so that each finished budget lands its record
    *[Run(f"neuralfp-{budget.replace(':', '-')}", ["neuralfp"], [budget], 300, None, NEURALFP_MODEL)
      for budget in ["linf:0.3", "linf:0.1", "linf:0.2", "linf:0.05", "l2:2", "l2:1"]],
]


def recorded(run: Run, results: Path = RESULTS) -> RobustnessReport | None:
    """`run`'s report from its record under `results`, or None where it has none yet."""
    path = results / run.name / "robustness.json"
    return report_from_json(json.loads(path.read_text())) if path.is_file() else None


def run_or_reuse(run: Run, rerun: bool, results: Path = RESULTS,
                 module: str = "experiments.robustness_table") -> RobustnessReport:
    """`run`'s report: read from its record under `results`, or computed by `module --only NAME` (and its record,
    table and curves written)."""
    if not rerun and (report := recorded(run, results)) is not None:
        return report
    print(f"== {run.name}: {', '.join(run.detectors)} at {', '.join(run.budgets)}", file=sys.stderr, flush=True)
    report = run_robustness(run.config(), log=lambda message: print(message, file=sys.stderr, flush=True))
    report.command = [sys.executable, "-m", module, "--only", run.name]
    write_outputs(report, results / run.name)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [run.name for run in RUNS]
    parser.add_argument("--only", nargs="+", choices=names,
                        help="run only these (the table still joins every record already there)")
    parser.add_argument("--rerun", nargs="+", choices=names, default=[], help="run these again even if recorded")
    parser.add_argument("--table-only", action="store_true", help="only join the records already there")
    args = parser.parse_args()
    reports = []
    for run in RUNS:
        if not args.table_only and (not args.only or run.name in args.only):
            reports.append(run_or_reuse(run, run.name in args.rerun))
        elif (report := recorded(run)) is not None:
            reports.append(report)
    attacked = " or ".join(str(n) for n in sorted({a.n for r in reports for o in r.outcomes for a in o.attacks}))
    table = (joined_table(reports, BUDGETS) + f"\n\nWall time of the whole suite (minutes on the {attacked} attacked "
             "images, 2 CPU cores, as recorded when each cell was computed):\n\n" + joined_wall_times(reports, BUDGETS))
    with atomic_path(RESULTS / "table.md") as tmp:
        tmp.write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
