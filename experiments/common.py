"""Helpers shared by the experiments: the provenance record, interleaved timing, peak memory, and readers of
the adversarial-set caches that `experiments.detection_mnist` writes.

The timing benchmarks need the same helpers. They run as scripts (`python benchmarks/x.py`) and import them as
`common`, so the one implementation lives in `benchmarks/common.py`; the experiments, run as modules from the
repository root, import it from there.
"""
from __future__ import annotations

from benchmarks.common import PeakRSS, emit, interleaved_medians, load_cached_attack, load_cached_model

__all__ = ["PeakRSS", "emit", "interleaved_medians", "load_cached_attack", "load_cached_model"]
