"""Boxes from the localisation head: peaks of the centre map, sizes, non-maximum suppression.

The head (:mod:`fracture.model.localiser`) scores every cell of a 24 x 24 grid as a
fracture centre and regresses the box around it (CenterNet: Zhou et al., "Objects as
Points", 2019). Decoding, as CenterNet does it:

1. the centre score is the sigmoid of the centre logit;
2. a peak is a cell that is the maximum of its 3 x 3 neighbourhood (a max-pool
   replaces non-maximum suppression between neighbouring cells);
3. each peak gives one box, centred at the cell plus its predicted sub-cell offset,
   with the predicted width and height;
4. boxes that overlap a higher-scoring one by IoU > :data:`NMS_IOU` are dropped (rare
   after step 2, but two peaks two cells apart can describe one long fracture).

Coordinates are normalised: first to the square network input, then, with the
letterbox :class:`~fracture.inference.preprocess.Geometry`, to the original image,
which is the frame every output (overlay, CSV, DICOM) uses.

The centre map itself is the "where" heat map the Predict page shows by default. It is
a probability per cell in fixed units, not stretched to each image's peak: an image
with no fracture-like finding shows an empty map.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from fracture.inference.preprocess import Geometry
from fracture.model.localiser import CENTRE, OFFSET, SIZE

__all__ = [
    "Box",
    "centre_map",
    "peak_centre_logit",
    "decode_boxes",
    "boxes_in_image",
    "iou",
    "non_maximum_suppression",
    "NMS_IOU",
    "MIN_CANDIDATE_SCORE",
]

# -- Configurable parameters ---------------------------------------------------------
NMS_IOU = 0.5
# Candidates below this centre score are never decoded (they would only slow the
# precision-recall curve of the evaluation down; no display threshold is this low).
MIN_CANDIDATE_SCORE = 0.01


@dataclass(frozen=True)
class Box:
    """A fracture box, normalised to its frame (x to the right, y down, both in [0, 1])."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @property
    def coordinates(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    def to_json(self) -> dict[str, float]:
        return {key: round(value, 4) for key, value in asdict(self).items()}


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(values, -30.0, 30.0)))


def centre_map(outputs: np.ndarray) -> np.ndarray:
    """The centre probability per cell, (H, W) float32 in [0, 1], from the head's (H, W, 5)."""
    return _sigmoid(np.asarray(outputs, np.float32)[..., CENTRE][..., 0]).astype(np.float32)


def peak_centre_logit(outputs: np.ndarray) -> np.ndarray:
    """The highest centre logit of each image's (..., H, W, 5) outputs: (...,) float64.

    How sure the head is that a fracture's centre lies *somewhere*: the evidence
    that ``ModelConfig.localiser_weight`` adds to the classifier's logit.
    """
    centre = np.asarray(outputs, np.float64)[..., CENTRE][..., 0]
    return centre.max(axis=(-2, -1))


def _peaks(scores: np.ndarray) -> np.ndarray:
    """A boolean map of cells that are the maximum of their 3 x 3 neighbourhood."""
    padded = np.pad(scores, 1, mode="constant", constant_values=-np.inf)
    height, width = scores.shape
    neighbourhood = np.max(
        [padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)], axis=0
    )
    return scores >= neighbourhood


def iou(a: tuple[float, ...] | np.ndarray, b: tuple[float, ...] | np.ndarray) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def non_maximum_suppression(boxes: list[Box], max_iou: float = NMS_IOU) -> list[Box]:
    """The boxes, best first, without any that overlaps a better one by more than ``max_iou``."""
    kept: list[Box] = []
    for box in sorted(boxes, key=lambda b: -b.score):
        if all(iou(box.coordinates, other.coordinates) <= max_iou for other in kept):
            kept.append(box)
    return kept


def decode_boxes(
    outputs: np.ndarray, *, min_score: float = MIN_CANDIDATE_SCORE, max_boxes: int = 100
) -> list[Box]:
    """Boxes from the head's (H, W, 5) outputs, normalised to the square network input, best first.

    Only peaks scoring at least ``min_score`` become boxes; at most ``max_boxes`` are kept.
    """
    outputs = np.asarray(outputs, np.float32)
    if outputs.ndim != 3 or outputs.shape[-1] != 5:
        raise ValueError(f"expected the localiser's (H, W, 5) outputs, got shape {outputs.shape}")
    scores = centre_map(outputs)
    height, width = scores.shape
    rows, cols = np.nonzero(_peaks(scores) & (scores >= min_score))
    order = np.argsort(-scores[rows, cols], kind="stable")[: 4 * max_boxes]
    candidates = []
    for row, col in zip(rows[order], cols[order]):
        offset = outputs[row, col, OFFSET]
        size = np.exp(np.clip(outputs[row, col, SIZE], -4.0, np.log(max(height, width))))
        cx = (col + 0.5 + offset[0]) / width
        cy = (row + 0.5 + offset[1]) / height
        half_w, half_h = size[0] / (2 * width), size[1] / (2 * height)
        x0, y0 = float(max(0.0, cx - half_w)), float(max(0.0, cy - half_h))
        x1, y1 = float(min(1.0, cx + half_w)), float(min(1.0, cy + half_h))
        if x1 > x0 and y1 > y0:
            candidates.append(Box(x0, y0, x1, y1, score=float(scores[row, col])))
    return non_maximum_suppression(candidates)[:max_boxes]


def boxes_in_image(boxes: list[Box], geometry: Geometry) -> list[Box]:
    """The boxes moved from the square network input's frame to the original image's.

    Parts of a box over the letterbox padding are cut off; a box wholly on the padding
    is dropped.
    """
    size = geometry.size
    moved = []
    for box in boxes:
        x0 = (box.x0 * size - geometry.left) / geometry.width
        x1 = (box.x1 * size - geometry.left) / geometry.width
        y0 = (box.y0 * size - geometry.top) / geometry.height
        y1 = (box.y1 * size - geometry.top) / geometry.height
        x0, x1 = max(0.0, x0), min(1.0, x1)
        y0, y1 = max(0.0, y0), min(1.0, y1)
        if x1 > x0 and y1 > y0:
            moved.append(Box(x0, y0, x1, y1, box.score))
    return moved
