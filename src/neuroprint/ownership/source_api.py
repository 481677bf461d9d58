"""The source model as its prediction API shows it to an extraction attacker (Lukas et al. 2021, arXiv 1912.00888,
section 5: restricting the API to the top-1 label is the usual defence against extraction).

An extraction attack gets a `SourceAPI`, never the model: it sends images and reads back top-1 labels, or
probability vectors where the API returns them, and every image sent is counted. Model-modification attacks
(fine-tuning, pruning) hold the weights instead and get the model itself.
"""
from __future__ import annotations

import torch

from neuroprint.errors import ConfigError
from neuroprint.models.classifier import Classifier

OUTPUTS = ("labels", "probabilities")


class SourceAPI:
    """Queries to `model` that return `outputs`: "labels" (top-1 only) or "probabilities" (softmax vectors, from
    which the top-1 label also follows). `queries` counts the images sent so far."""

    def __init__(self, model: Classifier, outputs: str = "labels") -> None:
        if outputs not in OUTPUTS:
            raise ConfigError(f"unknown API outputs {outputs!r}; valid: {', '.join(OUTPUTS)}")
        self._model, self.outputs, self.queries = model, outputs, 0

    @property
    def num_classes(self) -> int:
        return self._model.num_classes

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """Top-1 labels `[N]` (int64) of images `x` `[N, C, H, W]`."""
        self.queries += len(x)
        return self._model.predict(x)

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Softmax vectors `[N, K]` of images `x` `[N, C, H, W]`; refused by a labels-only API."""
        if self.outputs != "probabilities":
            raise ConfigError("this source API returns top-1 labels only; an attack that reads probabilities needs "
                              "outputs='probabilities'")
        self.queries += len(x)
        self._model.eval()
        return torch.cat([self._model(x[i : i + batch_size].to(self._model.device)).softmax(1).cpu()
                          for i in range(0, len(x), batch_size)])
