"""Timing benchmarks, run as scripts from the repository root (`.venv/bin/python benchmarks/<name>.py`).

`benchmarks/common.py` holds the helpers they share with the quality experiments in `experiments/`, which
import it as `benchmarks.common`.
"""
