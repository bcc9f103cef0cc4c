"""Input checks shared by the evaluation maths (:mod:`~fracture.evaluation.metrics`,
:mod:`~fracture.evaluation.calibration`): each raises ``ValueError`` naming the bad argument.

Labels are 0 = normal, 1 = fracture (:data:`CLASS_NAMES`); arrays must be one-dimensional,
finite and of one length, so that a metric never quietly broadcasts or skips a case.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sized
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

# Label order everywhere (confusion matrices included): 0 = normal, 1 = fracture.
CLASS_NAMES = ("normal", "fracture")


def _as_1d(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    return array


def _as_labels(labels: ArrayLike, name: str = "labels") -> np.ndarray:
    array = _as_1d(labels, name)
    if array.dtype == bool:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be 0 (normal) / 1 (fracture), got dtype {array.dtype}")
    bad = ~np.isin(array, (0, 1))  # NaN is caught here too: it is neither 0 nor 1
    if bad.any():
        example = array[bad][0]
        raise ValueError(
            f"{name} must be 0 (normal) / 1 (fracture); found {example!r} "
            f"({int(bad.sum())} invalid value(s))"
        )
    return array.astype(np.int64)


def _as_finite(values: ArrayLike, name: str) -> np.ndarray:
    array = _as_1d(values, name)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        count = int((~np.isfinite(array)).sum())
        raise ValueError(f"{name} contains {count} NaN or infinite value(s)")
    return array


def _as_probabilities(values: ArrayLike, name: str = "probabilities") -> np.ndarray:
    array = _as_finite(values, name)
    if array.min() < 0.0 or array.max() > 1.0:
        raise ValueError(
            f"{name} must lie in [0, 1], got range [{array.min():.6g}, {array.max():.6g}]; "
            "pass logits through calibrated_probability first"
        )
    return array


def _check_same_length(**arrays: Sized) -> None:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{name}={length}" for name, length in lengths.items())
        raise ValueError(f"Inputs must have the same length, got {described}")


def _check_both_classes(labels: np.ndarray, purpose: str) -> None:
    n_positive = int(labels.sum())
    if n_positive == 0 or n_positive == labels.size:
        only = CLASS_NAMES[int(labels[0])]
        raise ValueError(
            f"{purpose} needs both normal and fracture cases, but all {labels.size} "
            f"labels are {only!r}"
        )


def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _temperature(value: Any) -> float:
    temperature = _real(value, "temperature")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return temperature


def _threshold(value: Any, name: str = "threshold") -> float:
    threshold = _real(value, name)
    # Probabilities live in [0, 1]; a threshold outside it is almost always a
    # unit mistake (a percentage, or a logit) rather than a deliberate choice.
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {threshold}")
    return threshold


def _n_bootstrap(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"n_bootstrap must be a non-negative integer, got {value!r}")
    return int(value)


def _seed(value: Any) -> int:
    # None would draw fresh OS entropy: a report that cannot be reproduced.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value!r}")
    return int(value)
