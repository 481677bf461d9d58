"""Training step cost of mnist-net with channels_last vs contiguous weights (what `train` uses vs the default).

One step = forward, backward and Adam update of a batch of 128 MNIST-sized images: plain cross-entropy, and NeuralFP
(eq. 14: the batch and its N probe-perturbed copies in one pass). Both variants start from the same weights;
calls are interleaved so machine noise hits them alike. Reports ms per step and the speed-up (contiguous /
channels_last; > 1 = channels_last is faster).

Run: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/training_memory_format.py [--probes 10 --repeats 10]
"""
from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
from common import emit, interleaved_medians

from neuroprint.models import Classifier, build_model
from neuroprint.models.probes import (
    NeuralFPProbes,
    ProbeConfig,
    probe_loss,
    probe_responses,
)


def step_fn(clf: Classifier, x: torch.Tensor, y: torch.Tensor, probes: NeuralFPProbes | None) -> Callable[[], None]:
    """One training step of `clf` on (x, y): cross-entropy, plus L_fp over all probes when given."""
    optimizer = torch.optim.Adam(clf.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad()
        if probes is None:
            loss = torch.nn.functional.cross_entropy(clf(x), y)
        else:
            logits, responses = probe_responses(clf, x, probes, clf.bounds)
            loss = torch.nn.functional.cross_entropy(logits, y) + probe_loss(responses, y, probes)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--probes", type=int, default=10, help="NeuralFP directions N per step")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    contiguous = Classifier(build_model("mnist-net"), mean=[0.1307], std=[0.3081]).train()
    channels_last = copy.deepcopy(contiguous).to(memory_format=torch.channels_last)
    x, y = torch.rand(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))
    probes = NeuralFPProbes.sample(ProbeConfig(n=args.probes, eps=0.01), (1, 28, 28), 10)
    medians = interleaved_medians(
        {
            "plain_contiguous": step_fn(contiguous, x, y, None),
            "plain_channels_last": step_fn(channels_last, x, y, None),
            "neuralfp_contiguous": step_fn(contiguous, x, y, probes),
            "neuralfp_channels_last": step_fn(channels_last, x, y, probes),
        },
        repeats=args.repeats,
        warmup=1,
    )
    emit(
        {
            "benchmark": "training_memory_format",
            "model": "mnist-net",
            "batch": args.batch,
            "probes": args.probes,
            **{f"{name}_ms": 1e3 * seconds for name, seconds in medians.items()},
            "speedup_plain": medians["plain_contiguous"] / medians["plain_channels_last"],
            "speedup_neuralfp": medians["neuralfp_contiguous"] / medians["neuralfp_channels_last"],
        }
    )


if __name__ == "__main__":
    main()
