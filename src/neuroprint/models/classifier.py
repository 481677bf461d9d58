"""`Classifier`: a trained network seen through pixel-space inputs, with normalisation inside and named layers."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from neuroprint.errors import ConfigError, InputError
from neuroprint.models.probes import NeuralFPProbes


class Classifier(nn.Module):
    """Wrap a network so that every caller feeds raw pixels in `bounds` (NCHW, float).

    Normalisation ``(x - mean) / std`` is applied inside, once, so attacks and detectors never see normalised data.
    `layers` names the submodules (``module.named_modules()`` names) whose outputs are the feature layers used by
    detectors; by default every top-level child that holds parameters.

    Example:
        >>> clf = Classifier(build_model("mnist-net"), mean=[0.1307], std=[0.3081])
        >>> clf.logits(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        bounds: tuple[float, float] = (0.0, 1.0),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        layers: Sequence[str] | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if not bounds[0] < bounds[1]:
            raise ConfigError(f"bounds must satisfy low < high, got {bounds}")
        self.module = module
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.register_buffer("mean", _channel_tensor(mean, 0.0, "mean"))
        self.register_buffer("std", _channel_tensor(std, 1.0, "std"))
        if bool((self.std <= 0).any()):
            raise ConfigError(f"std must be > 0, got {std}")
        names = dict(module.named_modules())
        if layers is None:
            layers = [n for n, child in module.named_children() if any(True for _ in child.parameters())]
        unknown = [n for n in layers if n not in names or n == ""]
        if unknown:
            raise ConfigError(f"unknown layer(s) {unknown}; valid: {', '.join(n for n in names if n)}")
        self.layers: tuple[str, ...] = tuple(layers)
        self._num_classes = num_classes if num_classes is not None else _last_linear_width(module)
        #: NeuralFP probes the network was trained to respond to (set by training, saved with checkpoints).
        self.probes: NeuralFPProbes | None = None
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits `[N, num_classes]` (on the model's device) for pixels `x` `[N, C, H, W]` in `bounds`.

        `x` may live on any device: it is moved to the model's (differentiably), so callers need not track it.
        """
        x = x.to(self.mean.device)
        return self.module((x - self.mean) / self.std)

    logits = forward

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Predicted labels `[N]` (int64), computed in batches in eval mode."""
        self.eval()
        out = [self(x[i : i + batch_size].to(self.device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)

    @property
    def num_classes(self) -> int:
        """Number of output classes (the width of the logits)."""
        return self._num_classes

    def check_input(self, x: torch.Tensor, name: str = "x") -> None:
        """Raise `InputError` unless `x` is a non-empty finite float NCHW tensor inside `bounds`."""
        check_images(x, self.bounds, name)

    def layer_outputs(self, x: torch.Tensor, layers: Sequence[str] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One forward pass; returns logits and the raw outputs of `layers` (default `self.layers`). Safe to call
        from several threads at once on the same model (each call keeps the outputs of its own pass).

        Gradients flow through the returned tensors, so detectors built on them stay differentiable in `x`.
        """
        wanted = tuple(layers) if layers is not None else self.layers
        modules = dict(self.module.named_modules())
        unknown = [n for n in wanted if n not in modules]
        if unknown:
            raise ConfigError(f"unknown layer(s) {unknown}; valid: {', '.join(n for n in modules if n)}")
        captured: dict[str, torch.Tensor] = {}
        caller = threading.get_ident()  # hooks are shared by every thread running the module: keep only our pass

        def keep(name: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
            def hook(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
                if threading.get_ident() == caller:
                    captured[name] = out
            return hook

        hooks = [modules[n].register_forward_hook(keep(n)) for n in wanted]
        try:
            logits = self(x)
        finally:
            for h in hooks:
                h.remove()
        return logits, {n: captured[n] for n in wanted}


def last_linear(classifier: Classifier) -> nn.Linear:
    """The classifier's last `nn.Linear` module (embedding -> logits); `ConfigError` if it has none."""
    linears = [m for m in classifier.module.modules() if isinstance(m, nn.Linear)]
    if not linears or linears[-1].out_features != classifier.num_classes:
        raise ConfigError("this needs a classifier whose last nn.Linear maps the embedding to the logits")
    return linears[-1]


@contextmanager
def input_gradients_only(*models: nn.Module) -> Iterator[None]:
    """Turn off parameter gradients of `models` for the block (attacks need only input gradients: faster, and
    no `.grad` is left on the caller's models); the parameters that required gradients do so again afterwards."""
    trainable = [p for m in models for p in m.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def check_images(x: torch.Tensor, bounds: tuple[float, float] = (0.0, 1.0), name: str = "x") -> None:
    """Raise `InputError` unless `x` is a non-empty, finite, floating NCHW tensor with values inside `bounds`."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise InputError(f"{name} must have shape [N, C, H, W], got {list(x.shape)}")
    if x.shape[0] == 0:
        raise InputError(f"{name} is empty (0 images)")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a float tensor of pixels in {list(bounds)}, got dtype {x.dtype}")
    if not bool(torch.isfinite(x.detach()).all()):
        raise InputError(f"{name} contains NaN or infinite values")
    lo, hi = float(x.detach().min()), float(x.detach().max())
    if lo < bounds[0] - 1e-6 or hi > bounds[1] + 1e-6:
        raise InputError(f"{name} has values in [{lo:.4g}, {hi:.4g}], outside the pixel bounds {list(bounds)}")


def _channel_tensor(values: Sequence[float] | None, default: float, name: str) -> torch.Tensor:
    if values is None:
        return torch.full((1, 1, 1, 1), default)
    t = torch.as_tensor(list(values), dtype=torch.float32)
    if t.ndim != 1 or t.numel() == 0:
        raise ConfigError(f"{name} must be a non-empty list of per-channel values, got {values}")
    return t.view(1, -1, 1, 1)


def _last_linear_width(module: nn.Module) -> int:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("cannot infer num_classes (the model has no nn.Linear); pass num_classes=")
    return int(linears[-1].out_features)
