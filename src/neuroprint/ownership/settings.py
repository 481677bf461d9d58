"""The ownership fingerprint's default settings, in one place, and where they come from.

They were chosen on validation models only by `experiments/ownership_strength.py`: the whole ownership study at
seed 2 (its own source, data halves, local models, removal attacks and unseen references), which the reported
seeds 0 and 1 never share. Its summary is `experiments/results/ownership/validation/summary.md`.

- `EPS` (CEM's L-inf budget, pixel units of [0, 1] images): 0.1 kept the unseen references lowest (at most 53% of
  the query set, against 74% at 0.15, 90% at 0.25 and 97% at 0.35) while model modification and distillation
  stayed at AUC 1.0. A small budget leaves fewer conferrable candidates: 57 of 500 validation images pass.
- `SIZE` (ownership queries kept per query set, the most conferrable first, balanced over target classes): 100,
  held fixed throughout the validation sweep.
- `N_CANDIDATES` (validation images CEM and IPGuard start from): 2,000, so that about 200 pass at eps 0.1 and the
  query set fills its `SIZE` places. CAEAcc on n queries moves by sqrt(p (1 - p) / n) from query set to query set:
  about 7 points at 50 queries, 5 at 100. With 500 candidates (43–57 queries) an unseen reference of the
  reported seed 0 reached rho exactly.
- `N_LOCAL` (local surrogates and local references CEM optimises over): 8 + 8 and 16 + 16 brought references
  down at eps 0.25 but not at 0.15, and surrogates of other kinds (a soft-label student, an adversarially trained
  copy, another architecture) made the query set transfer to independent references; 3 + 3 stays.
- `TAU` (the bar of local conferrability): with 3 + 3 local models every tau in (0.67, 1] keeps the same examples.
- `RHO` (the verdict's CAEAcc threshold): midway between the highest validation reference (0.58) and the lowest
  model-modification or distillation surrogate (0.72) on the 100-query set from 2,000 candidates, so that neither
  side sits on the edge.
"""
from __future__ import annotations

N_LOCAL = 3
EPS = 0.1
SIZE = 100
N_CANDIDATES = 2000
TAU = 0.9
RHO = 0.65
