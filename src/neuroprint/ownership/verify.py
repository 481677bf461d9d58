"""Ownership verification (Lukas et al. 2021, arXiv 1912.00888, eq. 7): the suspect model's *CAEAcc* is the share
of the ownership queries on which it predicts their target label; a suspect with CAEAcc >= rho is judged a
surrogate (stolen from the source model). The suspect is sent the queries only and answers labels only.

Suspects: a local `Classifier` (`LocalSuspect`) or an HTTP endpoint (`HTTPSuspect`) that answers
``POST {"inputs": [[[[...]]]]}`` (a JSON list of N images `[C, H, W]`, pixels in [0, 1]) with ``{"labels": [...]}``.
"""
from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Protocol

import torch

from neuroprint.checks import check_float, check_int
from neuroprint.errors import InputError
from neuroprint.models.classifier import Classifier
from neuroprint.ownership import settings
from neuroprint.ownership.queries import QuerySet


class Suspect(Protocol):
    """Anything that returns predicted labels `[N]` (int64) for images `[N, C, H, W]`."""

    def labels(self, x: torch.Tensor) -> torch.Tensor: ...


class LocalSuspect:
    """A suspect model held locally (e.g. a checkpoint loaded with `load_checkpoint`)."""

    def __init__(self, classifier: Classifier, batch_size: int = 256) -> None:
        self.classifier = classifier
        self.batch_size = check_int("batch_size", batch_size)

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.classifier.predict(x, self.batch_size)
        except RuntimeError as exc:
            raise InputError(f"the suspect model cannot take inputs of shape {list(x.shape[1:])} "
                             f"({str(exc).splitlines()[0]})") from None


class HTTPSuspect:
    """A suspect model behind an HTTP endpoint that returns top-1 labels for a JSON batch (see the module doc)."""

    def __init__(self, url: str, batch_size: int = 64, timeout: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError(f"suspect URL must start with http:// or https://, got {url!r}")
        self.url = url
        self.batch_size = check_int("batch_size", batch_size)
        self.timeout = check_float("timeout", timeout, 0.0, 3600.0)

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._query(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)])

    def _query(self, x: torch.Tensor) -> torch.Tensor:
        body = json.dumps({"inputs": x.tolist()}).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace").strip()[:200]
            raise InputError(f"suspect at {self.url} answered HTTP {exc.code} for inputs of shape "
                             f"{list(x.shape[1:])}: {detail}") from None
        except (OSError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
            raise InputError(f"cannot reach the suspect at {self.url} ({exc})") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(f"suspect at {self.url} did not answer JSON") from None
        labels = answer.get("labels") if isinstance(answer, dict) else None
        if not isinstance(labels, list) or len(labels) != len(x) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in labels
        ):
            raise InputError(f"suspect at {self.url} must answer {{\"labels\": [{len(x)} integers]}}, got {str(answer)[:120]}")
        return torch.tensor(labels, dtype=torch.long)


@dataclass(frozen=True)
class Verification:
    """CAEAcc in [0, 1] of one suspect on one query set, and the verdict at threshold `rho`."""

    cae_acc: float
    n: int
    rho: float
    is_surrogate: bool

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


def cae_accuracy(suspect: Suspect, queries: QuerySet) -> float:
    """Share of the queries on which `suspect` predicts the target label (eq. 7), in [0, 1]."""
    labels = suspect.labels(queries.x)
    if labels.shape != queries.target.shape:
        raise InputError(f"the suspect returned {list(labels.shape)} labels for {len(queries)} queries")
    return float((labels == queries.target).float().mean())


def verify(suspect: Suspect, queries: QuerySet, rho: float = settings.RHO) -> Verification:
    """CAEAcc of `suspect` and the verdict: surrogate when CAEAcc >= `rho` (in [0, 1])."""
    rho = check_float("rho", rho, 0.0, 1.0, low_open=False)
    acc = cae_accuracy(suspect, queries)
    return Verification(acc, len(queries), rho, acc >= rho)
