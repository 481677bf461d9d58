"""Guarding a deployed model: fit detectors on a checkpoint into a guard directory, score images, serve over HTTP.

`fit_guard(GuardConfig(...))` -> `Guard`; `Guard.save(dir)` / `Guard.load(dir)`; `Guard.score(x)` -> `GuardScores`;
`neuroprint.guard.service.create_app(guard)` is the FastAPI service (imported on demand: it needs FastAPI).
"""
from neuroprint.guard.fit import GuardConfig, fit_guard
from neuroprint.guard.guard import Guard, GuardScores

__all__ = ["Guard", "GuardConfig", "GuardScores", "fit_guard"]
