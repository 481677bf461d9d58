"""`QuerySet`: the ownership queries of a source model, its verification key (inputs + target labels +
provenance), saved as a directory
with `queries.safetensors` (tensors `x` `[N, C, H, W]` float32 pixels, `target` `[N]` int64) and
`queries.json` (method, eps, thresholds, source-model facts, seeds, versions, git hash). Nothing is pickled.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from neuroprint.errors import InputError
from neuroprint.io import atomic_path, git_commit, read_json, versions, write_json
from neuroprint.models.classifier import check_images

FORMAT_VERSION = 1
METHODS = ("cem", "ipguard")
TENSORS, META = "queries.safetensors", "queries.json"


@dataclass
class QuerySet:
    """Ownership queries `x` `[N, C, H, W]` and the labels `target` `[N]` the source model gives them.

    `method` is ``cem`` or ``ipguard``; `meta` holds how they were made (eps, seeds, conferrability, source model).
    """

    x: torch.Tensor
    target: torch.Tensor
    method: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"unknown query-set method {self.method!r}; valid: {', '.join(METHODS)}")
        if not isinstance(self.meta, dict):
            raise InputError(f"query-set meta must be a JSON object, got {type(self.meta).__name__}")
        if len(self.x) == 0:
            raise InputError("the query set is empty (0 inputs); generation kept none: lower tau or raise n_candidates")
        check_images(self.x, name="ownership queries")
        if self.target.shape != (len(self.x),) or self.target.dtype != torch.long:
            raise InputError(f"query-set targets must be int64 [{len(self.x)}], got {self.target.dtype} "
                             f"{list(self.target.shape)}")

    def __len__(self) -> int:
        return len(self.x)

    def save(self, directory: str | Path) -> None:
        """Write the query-set directory atomically (a temp directory renamed into place)."""
        from safetensors.torch import save_file

        record = {"format_version": FORMAT_VERSION, "method": self.method, "n": len(self),
                  "input_shape": list(self.x.shape[1:]), "meta": self.meta, "versions": versions(), "git": git_commit()}
        with atomic_path(directory, directory=True) as tmp:
            save_file({"x": self.x.contiguous().cpu(), "target": self.target.contiguous().cpu()}, str(tmp / TENSORS))
            write_json(tmp / META, record)

    @classmethod
    def load(cls, directory: str | Path) -> QuerySet:
        """Read a query-set directory; a missing, corrupt or inconsistent one raises `InputError` naming it."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not directory.is_dir():
            raise InputError(f"expected a query-set directory at {directory} (with {META} and {TENSORS}); it does not exist")
        record = read_json(directory / META)
        if not isinstance(record, dict) or record.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{directory / META} is not a query-set file of format version {FORMAT_VERSION}")
        try:
            tensors = load_file(str(directory / TENSORS))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise InputError(f"cannot read query-set tensors from {directory / TENSORS} ({exc})") from None
        if set(tensors) != {"x", "target"}:
            raise InputError(f"{directory / TENSORS} must hold tensors x and target, got {sorted(tensors)}")
        queries = cls(tensors["x"], tensors["target"], str(record.get("method")), record.get("meta", {}))
        if len(queries) != record.get("n"):
            raise InputError(f"{directory / TENSORS} holds {len(queries)} inputs but {directory / META} says {record.get('n')}")
        return queries


def select_balanced(target: torch.Tensor, score: torch.Tensor, size: int, num_classes: int) -> torch.Tensor:
    """Indices of at most `size` entries, balanced over target classes: classes take turns, each giving its
    highest-`score` remaining entry (so a class with few candidates gives all it has)."""
    queues = [idx[score[idx].argsort(descending=True, stable=True)].tolist()
              for idx in (torch.nonzero(target == k).flatten() for k in range(num_classes))]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < size and any(depth < len(q) for q in queues):
        chosen.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return torch.tensor(sorted(chosen[:size]), dtype=torch.long)
