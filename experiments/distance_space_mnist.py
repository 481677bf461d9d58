"""Feature-distance-space detectors on MNIST: the eight variants of Carrara et al. 2018 (Table 2) and KD+BU.

Every detector is fit on validation clean + adversarial images of one attack and tested on the same attack's test
images (the leak-free protocol of `neuroprint.evaluation.protocol`); cells give AUC / TPR at 5% FPR, and the last
column the macro-AUC (unweighted mean over the attacks), as in the paper's Table 2. Adversarial sets are cached under
`<out>/cache` (point it at an existing cache to reuse attacks). Writes `<out>/table2.json`, `<out>/table2.md`.

Run (about 20 minutes on 2 CPU cores with cached attacks):
  OMP_NUM_THREADS=1 .venv/bin/python -m experiments.distance_space_mnist --n 2000 --out runs/bench/distance
The L-BFGS column attacks images itself (about 1 s per MNIST image on one core), so it runs on fewer images:
  OMP_NUM_THREADS=1 .venv/bin/python -m experiments.distance_space_mnist --n 500 \
      --attacks lbfgs fgsm bim-a bim-b pgd mifgsm --out runs/bench/distance/n500
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from neuroprint.evaluation.protocol import EvalConfig, run_evaluation
from neuroprint.evaluation.report import write_outputs
from neuroprint.evaluation.results import EvalReport
from neuroprint.specs import parse_spec

ATTACKS = ["fgsm", "bim-a", "bim-b", "pgd", "mifgsm", "cw", "deepfool", "jsma", "ead"]
VARIANTS = [  # the paper's row order: LSTM before MLP, medoid before centroid, cos before L2
    f"distance-space:head={head},pivot={pivot},metric={metric}"
    for pivot, head, metric in itertools.product(("medoid", "centroid"), ("lstm", "mlp"), ("cos", "l2"))
]
DETECTORS = [*VARIANTS, "kdbu"]


def label(spec: str) -> str:
    """`LSTM + M + cos` for a distance-space spec (the paper's labels), `KD+BU` for kdbu, else the spec."""
    name, params = parse_spec(spec)
    if name == "kdbu" and not params:
        return "KD+BU"
    if name != "distance-space":
        return spec
    head, pivot, metric = params.pop("head", "lstm"), params.pop("pivot", "medoid"), params.pop("metric", "cos")
    extra = "".join(f", {k}={v}" for k, v in params.items())
    return f"{head.upper()} + {pivot[0].upper()} + {'L2' if metric == 'l2' else 'cos'}{extra}"


def table2(report: EvalReport) -> str:
    """Markdown: rows = detectors, columns = attacks then macro-AUC and mean fit time; cells AUC / TPR@5%FPR (%)."""
    attacks = [a.spec for a in report.attacks if a.split == "test"]
    by = {(r.detector, r.attack): r for r in report.results}
    lines = [
        (f"{report.config.dataset}, {report.config.model} (clean accuracy {100 * report.clean_accuracy:.2f}%), "
         "each detector fit on the attack it is tested on; cells: AUC / TPR at 5% FPR (%)"),
        "",
        "| method | " + " | ".join(attacks) + " | macro-AUC | fit s |",
        "|---|" + "---|" * (len(attacks) + 2),
    ]
    for det in dict.fromkeys(r.detector for r in report.results):
        rows = [by.get((det, a)) for a in attacks]
        cells = [
            "–" if r is None or r.auc is None or r.tpr_at_fpr05 is None else f"{100 * r.auc:.2f} / {100 * r.tpr_at_fpr05:.1f}"
            for r in rows
        ]
        aucs = [r.auc for r in rows if r is not None and r.auc is not None]
        fits = [r.fit_seconds for r in rows if r is not None and r.fit_seconds is not None]
        macro = f"{100 * np.mean(aucs):.2f}" if len(aucs) == len(attacks) else "–"
        fit = f"{np.mean(fits):.0f}" if fits else "–"
        lines.append(f"| {label(det)} | " + " | ".join(cells) + f" | {macro} | {fit} |")
    summaries = {a.spec: a for a in report.attacks if a.split == "test"}
    lines.append("| *attack success (test)* | " + " | ".join(
        f"{100 * summaries[a].success_rate:.1f}% of {summaries[a].n_attacked}" for a in attacks) + " | | |")
    lines.append("| *mean L2 / L-inf* | " + " | ".join(
        f"{summaries[a].mean_l2:.2f} / {summaries[a].mean_linf:.2f}" for a in attacks) + " | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.distance_space_mnist", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="source images per split (half clean, half attacked)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/distance"))
    parser.add_argument("--attacks", nargs="+", default=ATTACKS)
    parser.add_argument("--detectors", nargs="+", default=DETECTORS)
    parser.add_argument("--dataset", default="mnist", help="for quick dry runs: digits with --model small-cnn")
    parser.add_argument("--model", default="mnist-net")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the benchmark machine is shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = EvalConfig(
        dataset=args.dataset, model=args.model, attacks=args.attacks, detectors=args.detectors, n_fit=args.n,
        n_test=args.n, seed=args.seed, cache_dir=args.out / "cache", device=args.device,
    )
    start = time.perf_counter()
    report = run_evaluation(config, progress=False, log=lambda msg: print(msg, flush=True))
    write_outputs(report, args.out / "table2", args.out / "table2.json")
    table = table2(report)
    (args.out / "table2.md").write_text(table + "\n")
    print(table, flush=True)
    print(json.dumps({"seconds": time.perf_counter() - start, "n": args.n, "attacks": args.attacks}), flush=True)


if __name__ == "__main__":
    main()
