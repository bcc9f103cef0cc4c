"""Every error fracture raises on purpose derives from :class:`FractureError`.

Callers (the CLI, the dashboard, a notebook) catch one type to tell "bad input
or state, with a message written for a person" from a bug. Each subclass also
keeps the built-in base it had before (``ValueError``, ``RuntimeError``), so
code that caught those still works.

Defined next to the code that builds their messages: ``DatasetLayoutError``
(:mod:`fracture.data.records`) and ``OODGateError`` (:mod:`fracture.inference.ood`).
"""

from __future__ import annotations

__all__ = [
    "FractureError",
    "InvalidImageError",
    "ModelLoadError",
    "WeightsError",
    "WeightsUnavailableError",
    "WeightsIntegrityError",
    "WeightsConversionError",
    "JobBusyError",
    "BenchError",
]


class FractureError(Exception):
    """Base class of the errors fracture reports; the message is meant for a person."""


class InvalidImageError(FractureError, ValueError):
    """A file that cannot be used as a radiograph; the message names the file and the reason."""


class ModelLoadError(FractureError, RuntimeError):
    """A model folder is missing, incomplete or fails its checksum."""


class WeightsError(FractureError, RuntimeError):
    """Base class for every ImageNet-weights problem."""


class WeightsUnavailableError(WeightsError):
    """No route produced a verified weights file."""


class WeightsIntegrityError(WeightsError):
    """A file is not the pinned, expected content."""


class WeightsConversionError(WeightsError):
    """The TF.js model could not be mapped onto Keras 3's ResNet-50."""


class JobBusyError(FractureError, RuntimeError):
    """Another training run is active; only one may run at a time."""


class BenchError(FractureError, RuntimeError):
    """A benchmark step failed; the message says which and why."""
