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
with the card's checksums); :mod:`fracture.inference.heads`, shared with the
hardware head, owns the file's contents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fracture.inference.heads import FeatureHead, FeatureHeadError

__all__ = [
    "RegionHead",
    "RegionHeadError",
    "MIN_REGION_PROBABILITY",
]

# -- Configurable parameters ---------------------------------------------------------
# Below this probability the head names no region: a 5-way guess at 0.4 is not a
# statement worth showing a clinician.
MIN_REGION_PROBABILITY = 0.5

# One error for every small head (fracture.inference.heads); the old name stays.
RegionHeadError = FeatureHeadError


@dataclass(frozen=True)
class RegionHead(FeatureHead):
    """The body-region head: a :class:`~fracture.inference.heads.FeatureHead` over regions."""

    what: ClassVar[str] = "region head"
    class_words: ClassVar[str] = "regions"

    def name(self, probabilities: np.ndarray) -> tuple[str | None, float]:
        """The most likely region and its probability; no name below the minimum."""
        index = int(np.argmax(probabilities))
        probability = float(probabilities[index])
        return (self.classes[index] if probability >= MIN_REGION_PROBABILITY else None), probability
