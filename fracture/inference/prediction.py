"""What one image's scoring gives: :class:`Prediction`, and the CSV row it becomes.

A :class:`Prediction` holds a probability, or the reason there is none (``status="error"``
with a message a person can act on), with its verdict inputs (out-of-distribution
score, thresholds), its heat map and the localisation head's map and boxes. Every
predictor (:class:`~fracture.inference.predictor.Predictor`, the shared queue, the ONNX
runtime) returns these; the CSV columns are defined here, once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from fracture.data.records import region_words
from fracture.inference.gradcam import heatmap_to_image
from fracture.inference.heads import HardwareHead
from fracture.inference.localisation import (
    Box,
    boxes_in_image,
    centre_map,
    decode_boxes,
    peak_centre_logit,
)
from fracture.inference.preprocess import Geometry, shown_geometry
from fracture.inference.verdict import FRACTURE, NOT_ASSESSED, Verdict, decide
from fracture.model.folder import ModelConfig

__all__ = [
    "Source",
    "CSV_COLUMNS",
    "CLASS_COLUMN_PREFIX",
    "csv_columns",
    "Prediction",
    "SupportsPredict",
]

Source = str | os.PathLike[str] | bytes | np.ndarray
CSV_COLUMNS = (
    "path",
    "probability",
    "prediction",
    "threshold",
    "status",
    "error",
    "in_distribution",
    "ood_score",
    "box_x0",
    "box_y0",
    "box_x1",
    "box_y1",
    "box_style",
    "box_score",
    "boxes",
    "body_region",
    "body_region_probability",
    "metal_probability",
    "caution",
)
# A K-class model's CSV adds one column per class: this prefix, then the class name.
CLASS_COLUMN_PREFIX = "probability_"


def csv_columns(class_names: Sequence[str] | None = None) -> tuple[str, ...]:
    """The CSV columns: :data:`CSV_COLUMNS`, then one probability per class for a K-class model."""
    if not class_names:
        return CSV_COLUMNS
    return (*CSV_COLUMNS, *(CLASS_COLUMN_PREFIX + name for name in class_names), "top_class")


@dataclass
class Prediction:
    """The result for one input: a probability, or the reason there is none."""

    source: str
    status: str  # "ok" or "error"
    probability: float | None = None
    label: str | None = None
    threshold: float | None = None
    # Prior-corrected logit (see ModelConfig.prior_shift); None for a K-class model,
    # whose K logits are summed up by class_probabilities.
    logit: float | None = None
    error: str | None = None
    # Out-of-distribution gate (see fracture.inference.ood): False flags an input that does
    # not look like the bone radiographs the model was trained on.
    in_distribution: bool | None = None
    ood_score: float | None = None
    # Display heat at the original size, in [0, 1] on the model's absolute evidence
    # scale (see fracture.inference.gradcam.evidence_heat).
    heatmap: np.ndarray | None = field(default=None, repr=False)
    # The finding's box (normalised x0, y0, x1, y1 of the original image) and how to
    # draw it: "solid" above the high-specificity threshold, "dotted" above the
    # high-sensitivity one; None (no box) where the image is not labelled fracture.
    # With a localisation head it is the head's best box (its score in box_score);
    # without one, the strongest region of the Grad-CAM map.
    box: tuple[float, float, float, float] | None = None
    box_style: str | None = None
    box_score: float | None = None
    # The localisation head (fracture.model.localiser), for models that have one: its raw
    # outputs on the network's grid (the square input's frame; see location and
    # location_image), and every box at or above the head's box threshold in the
    # original image's frame, best first, whatever the label (for research; outputs
    # draw them only on an image labelled fracture: see drawn_boxes).
    location_outputs: np.ndarray | None = field(default=None, repr=False)
    location_boxes: list[Box] = field(default_factory=list)
    # The raw Grad-CAM evidence (logit units) on the network's grid, and where the
    # image sits in the network input; :meth:`evidence_image` maps it to the image.
    evidence: np.ndarray | None = field(default=None, repr=False)
    geometry: Geometry | None = field(default=None, repr=False)
    image: np.ndarray | None = field(default=None, repr=False)  # original uint8 RGB
    # Pooled ResNet-50 features by layer name (BatchOutput.gate_features): the OOD gate's input.
    features: dict[str, np.ndarray] | None = field(default=None, repr=False)
    # The body region the region head names (see fracture.inference.region), and its
    # probability. None when the model has no region head, the head is unsure, or the
    # OOD gate flagged the input (an untrained body part still gets the nearest region).
    body_region: str | None = None
    body_region_probability: float | None = None
    # The hardware head's probability that orthopaedic metal is visible (see
    # fracture.inference.heads.HardwareHead); None without the head or for a flagged
    # input. Where it fires, the verdict carries the metal caution.
    metal_probability: float | None = None
    # K-class models only: the calibrated probability of each class, in the model's
    # class order (they sum to 1), which class the heat map shows, and every class's
    # evidence on the network's grid (h, w, K) so another class can be shown later.
    class_probabilities: dict[str, float] | None = None
    cam_class: str | None = None
    class_evidence: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def top_class(self) -> str | None:
        """The most probable class of a K-class model (the first on a tie), else None."""
        if not self.class_probabilities:
            return None
        return max(self.class_probabilities, key=self.class_probabilities.__getitem__)

    def verdict(self, threshold: float | None = None) -> Verdict:
        """The one verdict (:func:`fracture.inference.verdict.decide`) at ``threshold``.

        ``threshold`` defaults to the one the prediction was made at; the dashboard passes
        the sidebar's operating point. Flagged inputs are not assessed at any threshold.
        """
        return decide(
            self.probability,
            self.threshold if threshold is None else threshold,
            in_distribution=self.in_distribution,
            scored=self.ok,
            error=self.error,
            top_class=self.top_class,
            metal=self.metal_probability is not None and HardwareHead.fires(self.metal_probability),
        )

    def evidence_image(self) -> np.ndarray | None:
        """The raw heat map (logit evidence, unclipped) at the original image's size."""
        if self.evidence is None or self.geometry is None:
            return None
        return heatmap_to_image(self.evidence, self.geometry)

    @property
    def location(self) -> np.ndarray | None:
        """The localisation head's centre probability per grid cell (square input's frame)."""
        return None if self.location_outputs is None else centre_map(self.location_outputs)

    def location_image(self) -> np.ndarray | None:
        """The localisation head's centre probability at the kept image's size, in [0, 1].

        That is the original size, or the display size where the predictor keeps a
        display-size image (the map is resized once, to where it is shown).
        """
        location = self.location
        if location is None or self.geometry is None:
            return None
        geometry = shown_geometry(self.geometry, self.image)
        return np.clip(heatmap_to_image(location, geometry), 0.0, 1.0)

    def default_map(self) -> np.ndarray | None:
        """The map an overlay shows by default, at the image's size, in [0, 1].

        The localisation head's "where" map (:meth:`location_image`) for a model that has
        the head, else the Grad-CAM display heat (:attr:`heatmap`).
        """
        location = self.location_image()
        return self.heatmap if location is None else location

    @property
    def location_peak(self) -> float | None:
        """The localisation head's highest centre logit on this image; None without a head."""
        if self.location_outputs is None:
            return None
        return float(peak_centre_logit(self.location_outputs))

    def location_candidates(self, min_score: float) -> list[Box]:
        """Every box the head finds down to ``min_score``, in the original image's frame.

        For evaluation (a precision-recall curve needs the low-scoring boxes too).
        """
        if self.location_outputs is None or self.geometry is None:
            return []
        return boxes_in_image(
            decode_boxes(self.location_outputs, min_score=min_score), self.geometry
        )

    @property
    def drawn_boxes(self) -> list[Box]:
        """The boxes an output draws: the head's, only where the verdict is fracture."""
        if not self.box_style or self.verdict().label != FRACTURE:
            return []
        return self.location_boxes

    def row(self) -> dict[str, Any]:
        """One CSV row: the columns of :data:`CSV_COLUMNS`, and of :func:`csv_columns` for K classes.

        ``prediction`` is the verdict's label: ``not_assessed`` for an input the OOD gate
        flagged, whose probability stays for research but whose box columns stay empty
        (a box marks a finding).
        """
        verdict = self.verdict()
        box = self.box if verdict.label != NOT_ASSESSED else None
        row = {
            "path": self.source,
            "probability": "" if self.probability is None else f"{self.probability:.6f}",
            "prediction": verdict.csv_label,
            "threshold": "" if self.threshold is None else f"{self.threshold:.6f}",
            "status": self.status,
            "error": self.error or "",
            "in_distribution": ""
            if self.in_distribution is None
            else str(self.in_distribution).lower(),
            "ood_score": "" if self.ood_score is None else f"{self.ood_score:.4f}",
            **{
                f"box_{name}": "" if box is None else f"{value:.4f}"
                for name, value in zip(("x0", "y0", "x1", "y1"), box or (0.0,) * 4)
            },
            "box_style": (self.box_style or "") if box is not None else "",
            "box_score": "" if self.box_score is None or box is None else f"{self.box_score:.3f}",
            "boxes": json.dumps([b.to_json() for b in self.drawn_boxes])
            if self.drawn_boxes
            else "",
            # A probability without a name: the head was unsure (below its minimum).
            "body_region": region_words(self.body_region)
            if self.body_region
            else ("uncertain" if self.body_region_probability is not None else ""),
            "body_region_probability": ""
            if self.body_region_probability is None
            else f"{self.body_region_probability:.3f}",
            "metal_probability": ""
            if self.metal_probability is None
            else f"{self.metal_probability:.3f}",
            "caution": verdict.caution or "",
        }
        if self.class_probabilities is not None:
            for name, value in self.class_probabilities.items():
                row[CLASS_COLUMN_PREFIX + name] = f"{value:.6f}"
            row["top_class"] = self.top_class or ""
        return row


class SupportsPredict(Protocol):
    """What every predictor offers its callers: the CLI, the pages, the DICOM node, the bench.

    :class:`Predictor` (one caller at a time, or threads each with their own
    batches) and :class:`~fracture.inference.batching.SharedPredictor` (many
    threads sharing network batches) both satisfy it, so code that only
    predicts takes either.
    """

    @property
    def config(self) -> ModelConfig: ...

    @property
    def threshold(self) -> float: ...

    def predict(
        self,
        sources: Sequence[Source],
        *,
        names: Sequence[str] | None = None,
        with_cam: bool = False,
    ) -> list[Prediction]: ...
