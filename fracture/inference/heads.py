"""Small heads on the pooled features: one softmax over named classes, stored as ``.npz``.

The classifier's pooled ResNet-50 features (the 2048 values the
:class:`~fracture.inference.predictor.Predictor` already computes for the fracture
logit and the OOD gate) can answer more questions for the price of one matrix
product: which body region an image shows (:mod:`fracture.inference.region`) and
whether orthopaedic metal is visible (:class:`HardwareHead`). Each is multinomial
logistic regression fitted after training (:mod:`fracture.evaluation.region_fit`),
so the network and the fracture head stay bit for bit what they were. This
module is the one code path both heads share: the maths, the checks and the file.

Why the hardware head: plates and screws are the shortcut a fracture model
learns first (they mark operated, hence fractured, bones). Where the head sees
metal, every output adds :data:`fracture.inference.verdict.METAL_CAUTION`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np

from fracture.errors import FractureError
from fracture.io.files import atomic_write_npz, read_npz

__all__ = [
    "FeatureHead",
    "FeatureHeadError",
    "HardwareHead",
    "HARDWARE_ABSENT",
    "HARDWARE_PRESENT",
    "MIN_HARDWARE_PROBABILITY",
]

FORMAT_VERSION = 1
# The hardware head's two classes (the manifest's hardware column, 0 and 1).
HARDWARE_ABSENT, HARDWARE_PRESENT = "absent", "present"
# At or above this probability of metal the results carry the metal caution.
MIN_HARDWARE_PROBABILITY = 0.5

_Head = TypeVar("_Head", bound="FeatureHead")


class FeatureHeadError(FractureError, ValueError):
    """A head file that is missing parts or does not fit the features."""


@dataclass(frozen=True)
class FeatureHead:
    """Affine softmax head ``softmax(features @ weights + bias)`` over ``classes``.

    Any feature standardisation used while fitting is folded into ``weights``
    and ``bias``, so scoring needs nothing else.
    """

    classes: tuple[str, ...]
    weights: np.ndarray  # (D, C) float32
    bias: np.ndarray  # (C,) float32
    # The precision the features were computed in when it was fitted (bfloat16
    # features differ slightly from float32 ones; the card records it).
    fitted_precision: str = "float32"

    # What the head is called in messages, and what its classes are called.
    what: ClassVar[str] = "feature head"
    class_words: ClassVar[str] = "classes"

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise FeatureHeadError(f"a {self.what} needs at least two {self.class_words}")
        if len(set(self.classes)) != len(self.classes):
            raise FeatureHeadError(f"{self.class_words} repeat: {', '.join(self.classes)}")
        if self.weights.ndim != 2 or self.weights.shape[1] != len(self.classes):
            raise FeatureHeadError(
                f"weights of shape {self.weights.shape} do not give "
                f"{len(self.classes)} {self.class_words}"
            )
        if self.bias.shape != (len(self.classes),):
            raise FeatureHeadError(
                f"bias of shape {self.bias.shape} does not match the {self.class_words}"
            )
        if not (np.isfinite(self.weights).all() and np.isfinite(self.bias).all()):
            raise FeatureHeadError(f"the {self.what} has non-finite weights")

    @property
    def feature_size(self) -> int:
        return int(self.weights.shape[0])

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) for pooled features (N, D); rows sum to 1."""
        features = np.asarray(features, np.float32)
        if features.ndim == 1:
            features = features[None, :]
        if features.ndim != 2 or features.shape[1] != self.feature_size:
            raise FeatureHeadError(
                f"the {self.what} reads {self.feature_size} features per image, "
                f"got an array of shape {features.shape}"
            )
        logits = features @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)  # softmax without overflow
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the head as an ``.npz`` file, atomically."""
        return atomic_write_npz(
            path,
            {
                "format": np.array(FORMAT_VERSION, np.int64),
                "classes": np.array(self.classes, dtype=np.str_),
                "weights": self.weights.astype(np.float32),
                "bias": self.bias.astype(np.float32),
                "fitted_precision": np.array(self.fitted_precision, dtype=np.str_),
            },
        )

    @classmethod
    def load(cls: type[_Head], path: str | os.PathLike[str]) -> _Head:
        """Read a head written by :meth:`save`; raises :class:`FeatureHeadError` if it is not one."""
        stored = read_npz(
            path,
            what=cls.what,
            required=("classes", "weights", "bias"),
            formats=(FORMAT_VERSION,),
            error=FeatureHeadError,
        )
        return cls(
            classes=tuple(str(name) for name in stored["classes"]),
            weights=stored["weights"].astype(np.float32),
            bias=stored["bias"].astype(np.float32),
            fitted_precision=(
                str(stored["fitted_precision"]) if "fitted_precision" in stored else "float32"
            ),
        )


@dataclass(frozen=True)
class HardwareHead(FeatureHead):
    """Whether orthopaedic metal (plates, screws, nails) is visible: classes absent, present."""

    what: ClassVar[str] = "hardware head"
    class_words: ClassVar[str] = "classes (absent, present)"

    def __post_init__(self) -> None:
        super().__post_init__()
        if HARDWARE_PRESENT not in self.classes:
            raise FeatureHeadError(f"a hardware head needs a {HARDWARE_PRESENT!r} class")

    def metal_probability(self, features: np.ndarray) -> np.ndarray:
        """The probability (N,) that metal is visible."""
        return self.probabilities(features)[:, self.classes.index(HARDWARE_PRESENT)]

    @staticmethod
    def fires(probability: float) -> bool:
        """Whether a metal probability earns the caution."""
        return probability >= MIN_HARDWARE_PROBABILITY
