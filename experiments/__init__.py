"""Quality experiments behind BENCHMARKS.md: detection, NeuralFP, NNIF, distance spaces, ownership.

Each module runs from the repository root, e.g. `.venv/bin/python -m experiments.detection_mnist --help`; the
records of the runs reported in BENCHMARKS.md are in `experiments/results/<topic>/`. Timing benchmarks live in
`benchmarks/`.
"""
