"""Body-region head: which part of the skeleton a radiograph shows (hand, leg, hip, shoulder).

A second, small head on the classifier's own pooled ResNet-50 features (the
2048 values the :class:`~fracture.inference.predictor.Predictor` already
computes for the fracture logit and the OOD gate), so naming the region costs
one matrix product and no extra network call. It is multinomial logistic
regression, fitted by :mod:`fracture.evaluation.region_fit` on the training
split's region labels (FracAtlas: the ``region`` column of ``manifest.csv``).

Why a head on frozen features rather than a second output trained with the
network: the fracture head and the features it reads stay bit for bit what
they were, so the region head cannot cost the fracture AUROC anything (the
multi-task requirement "within 0.005" holds by construction), and the head can
be refitted in minutes when the region labels change, without retraining.
The price: the features were not shaped for regions. On FracAtlas they do not
need to be (see the model card for the per-region validation accuracy).

The head reports a region only when its probability reaches
:data:`MIN_REGION_PROBABILITY`; below that the region is "uncertain" and no
name is shown. Its classes are only the regions it was trained on: an image
of another body part (a chest, a skull) still gets the nearest of them, which
is why the predictor withholds the region for inputs the OOD gate flags.

Stored as ``region_head.npz`` inside a model folder (the folder's owner,
:class:`~fracture.model.folder.ModelFolder`, knows the file name and covers it
with the card's checksums); this module owns the file's contents.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fracture.errors import FractureError
from fracture.io.files import atomic_write_npz, read_npz

__all__ = [
    "RegionHead",
    "RegionHeadError",
    "MIN_REGION_PROBABILITY",
]

# -- Configurable parameters ---------------------------------------------------------
# Below this probability the head names no region: a 5-way guess at 0.4 is not a
# statement worth showing a clinician.
MIN_REGION_PROBABILITY = 0.5
FORMAT_VERSION = 1


class RegionHeadError(FractureError, ValueError):
    """A region-head file that is missing parts or does not fit the features."""


@dataclass(frozen=True)
class RegionHead:
    """Affine softmax head ``softmax(features @ weights + bias)`` over ``classes``.

    Any feature standardisation used while fitting is folded into ``weights``
    and ``bias``, so scoring needs nothing else.
    """

    classes: tuple[str, ...]
    weights: np.ndarray  # (D, R) float32
    bias: np.ndarray  # (R,) float32
    # The precision the features were computed in when it was fitted (bfloat16
    # features differ slightly from float32 ones; the card records it).
    fitted_precision: str = "float32"

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise RegionHeadError("a region head needs at least two regions")
        if len(set(self.classes)) != len(self.classes):
            raise RegionHeadError(f"region names repeat: {', '.join(self.classes)}")
        if self.weights.ndim != 2 or self.weights.shape[1] != len(self.classes):
            raise RegionHeadError(
                f"weights of shape {self.weights.shape} do not give {len(self.classes)} regions"
            )
        if self.bias.shape != (len(self.classes),):
            raise RegionHeadError(f"bias of shape {self.bias.shape} does not match the regions")
        if not (np.isfinite(self.weights).all() and np.isfinite(self.bias).all()):
            raise RegionHeadError("the region head has non-finite weights")

    @property
    def feature_size(self) -> int:
        return int(self.weights.shape[0])

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Region probabilities (N, R) for pooled features (N, D); rows sum to 1."""
        features = np.asarray(features, np.float32)
        if features.ndim == 1:
            features = features[None, :]
        if features.ndim != 2 or features.shape[1] != self.feature_size:
            raise RegionHeadError(
                f"the region head reads {self.feature_size} features per image, "
                f"got an array of shape {features.shape}"
            )
        logits = features @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)  # softmax without overflow
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def name(self, probabilities: np.ndarray) -> tuple[str | None, float]:
        """The most likely region and its probability; no name below the minimum."""
        index = int(np.argmax(probabilities))
        probability = float(probabilities[index])
        return (self.classes[index] if probability >= MIN_REGION_PROBABILITY else None), probability

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
    def load(cls, path: str | os.PathLike[str]) -> "RegionHead":
        """Read a head written by :meth:`save`; raises :class:`RegionHeadError` if it is not one."""
        stored = read_npz(
            path,
            what="region head",
            required=("classes", "weights", "bias"),
            formats=(FORMAT_VERSION,),
            error=RegionHeadError,
        )
        return cls(
            classes=tuple(str(name) for name in stored["classes"]),
            weights=stored["weights"].astype(np.float32),
            bias=stored["bias"].astype(np.float32),
            fitted_precision=(
                str(stored["fitted_precision"]) if "fitted_precision" in stored else "float32"
            ),
        )
