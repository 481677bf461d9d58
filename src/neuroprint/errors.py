"""Exceptions raised on bad input or misuse. The CLI prints any `NeuroprintError` as one line and exits 2."""


class NeuroprintError(Exception):
    """Base class of every error neuroprint raises on purpose."""


class ConfigError(NeuroprintError, ValueError):
    """A parameter or name is invalid (unknown registry entry, value out of range)."""


class InputError(NeuroprintError, ValueError):
    """Data is unusable: wrong shape, values outside the pixel bounds, NaNs, empty sets, missing/corrupt files."""


class NotFittedError(NeuroprintError, RuntimeError):
    """A detector was used before `fit` (or `calibrate`)."""
