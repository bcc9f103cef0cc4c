"""Does the heat map point at the fracture? Localisation figures against radiologists' boxes.

Three figures, per fractured image with at least one box, on the raw heat map
(Grad-CAM evidence at the original image size) and the box the app draws:

* **pointing game** (Zhang et al., "Top-down Neural Attention by Excitation
  Backprop", ECCV 2016): the map's maximum lies inside a box, at tolerance 0 and
  at 3% of the image side (:func:`pointing_game`);
* **energy inside boxes**: the share of the map's positive evidence that falls
  inside the union of the boxes (the "energy-based pointing game" of Wang et al.,
  "Score-CAM", CVPRW 2020);
* **drawn-box hit rate**: the strongest-region box the app draws overlaps a
  true box with IoU >= 0.1 (a lenient detection criterion: FracAtlas boxes are
  small and the drawn box is a contour of a coarse map). An image with no box
  drawn counts as a miss.

For reference, FracAtlas's own baseline detector (YOLOv8s, Abedeen et al., Sci
Data 2023) reports box mAP50 0.56 on its test split. That is a different task
(a detector trained to output boxes, scored by precision over all predicted
boxes at IoU >= 0.5), so the figures here are not comparable to it one to one:
they score a classifier's explanation, not a detector.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from fracture.evaluation.checks import _check_same_length, _real
from fracture.evaluation.proportions import wilson_rate

__all__ = [
    "map_peak",
    "point_in_boxes",
    "pointing_game",
    "TOLERANCE",
    "MIN_IOU",
    "image_localisation",
    "summarise_localisation",
    "localiser_item",
    "summarise_localiser",
    "energy_inside",
    "box_iou",
]

Box = tuple[float, float, float, float]
TOLERANCE = 0.03  # of the image side, for the tolerant pointing game
MIN_IOU = 0.1  # a drawn box "hits" when it overlaps a true box at least this much


def _boxes(value: Any, index: int) -> np.ndarray:
    boxes = np.asarray(value if value is not None else [], dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"boxes[{index}] must be a sequence of (x0, y0, x1, y1) boxes, got shape {boxes.shape}"
        )
    if not np.isfinite(boxes).all():
        raise ValueError(f"boxes[{index}] contains NaN or infinite coordinates")
    if boxes.min() < 0.0 or boxes.max() > 1.0:
        raise ValueError(
            f"boxes[{index}] must be normalised to [0, 1], got range "
            f"[{boxes.min():.6g}, {boxes.max():.6g}]"
        )
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise ValueError(f"boxes[{index}] has a box with x1 < x0 or y1 < y0")
    return boxes


def map_peak(cam: np.ndarray) -> tuple[float, float] | None:
    """Where a map points: the normalised centre ``(x, y)`` of its maximum, None when flat.

    Pixel (row, col) becomes ``((col + 0.5) / W, (row + 0.5) / H)``; among tied
    maxima the first in row-major order is used. A constant map has no peak, so a
    dead Grad-CAM cannot point anywhere by luck.
    """
    cam = np.asarray(cam, dtype=np.float64)
    if cam.size == 0 or cam.max() == cam.min():
        return None
    row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
    height, width = cam.shape
    return (col + 0.5) / width, (row + 0.5) / height


def point_in_boxes(
    point: Sequence[float],
    boxes: Sequence[Sequence[float]] | np.ndarray,
    *,
    tolerance: float = 0.0,
) -> bool:
    """Whether a normalised point lies in any ``(x0, y0, x1, y1)`` box grown by ``tolerance``.

    Edges are inclusive. The one rule for a hit, whether the point is a heat
    map's peak (:func:`pointing_game`) or where a student clicked (the Learn page).
    """
    x, y = float(point[0]), float(point[1])
    return any(
        x0 - tolerance <= x <= x1 + tolerance and y0 - tolerance <= y <= y1 + tolerance
        for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    )


def pointing_game(
    cams: Sequence[np.ndarray | None],
    boxes: Sequence[Sequence[tuple[float, float, float, float]]],
    *,
    tolerance: float = 0.0,
) -> dict:
    """Pointing-game localisation score of class-activation maps (Zhang et al. 2016).

    For each image with at least one ground-truth box, the map "points" at its
    maximum: pixel (row, col) becomes the normalised centre
    ``(x, y) = ((col + 0.5) / W, (row + 0.5) / H)``, and it is a hit when that
    point lies in any box ``(x0, y0, x1, y1)`` (normalised, edges inclusive)
    grown by ``tolerance`` on every side. Zhang et al. allowed 15 pixels; here
    the tolerance is in normalised units so it does not depend on image size.

    The maps must cover the same extent as the image the boxes are normalised
    to: map Grad-CAM back with :func:`fracture.inference.preprocess.unletterbox`
    first, or the letterbox padding shifts every point. Images without boxes
    are not counted (their map may be ``None``). A constant map has no peak and
    counts as a miss, so a dead Grad-CAM cannot score by luck; among tied
    maxima the first in row-major order is used.

    Returns ``{"hits", "n", "score", "tolerance"}``; ``score`` is ``None`` when
    no image has a box.
    """
    tolerance = _real(tolerance, "tolerance")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    _check_same_length(cams=cams, boxes=boxes)

    hits = 0
    counted = 0
    for index, (cam, raw_boxes) in enumerate(zip(cams, boxes)):
        image_boxes = _boxes(raw_boxes, index)
        if image_boxes.shape[0] == 0:
            continue
        if cam is None:
            raise ValueError(f"cams[{index}] is None but image {index} has boxes")
        cam = np.asarray(cam, dtype=np.float64)
        if cam.ndim != 2 or cam.size == 0:
            raise ValueError(
                f"cams[{index}] must be a non-empty 2-D (H, W) map, got shape {cam.shape}"
            )
        if not np.isfinite(cam).all():
            # np.argmax would treat NaN as the maximum and point at it.
            raise ValueError(f"cams[{index}] contains NaN or infinite values")
        counted += 1
        peak = map_peak(cam)
        hits += peak is not None and point_in_boxes(peak, image_boxes, tolerance=tolerance)
    return {
        "hits": hits,
        "n": counted,
        "score": hits / counted if counted else None,
        "tolerance": tolerance,
    }


def energy_inside(heat: np.ndarray, boxes: Sequence[Box]) -> float | None:
    """Share of the positive heat inside the union of ``boxes`` (normalised); None if no heat."""
    heat = np.maximum(np.asarray(heat, np.float64), 0.0)
    total = float(heat.sum())
    if total <= 0:
        return None
    height, width = heat.shape
    inside = np.zeros(heat.shape, bool)
    for x0, y0, x1, y1 in boxes:
        inside[
            int(math.floor(y0 * height)) : int(math.ceil(y1 * height)),
            int(math.floor(x0 * width)) : int(math.ceil(x1 * width)),
        ] = True
    return float(heat[inside].sum() / total)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two normalised boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return intersection / union if union > 0 else 0.0


def image_localisation(heat: np.ndarray, boxes: Sequence[Box], drawn: Box | None) -> dict[str, Any]:
    """The three figures for one image: hits at both tolerances, energy, drawn-box hit."""
    return {
        "hit": pointing_game([heat], [boxes])["hits"] == 1,
        "hit_tolerant": pointing_game([heat], [boxes], tolerance=TOLERANCE)["hits"] == 1,
        "energy": energy_inside(heat, boxes),
        "drawn_hit": drawn is not None and max(box_iou(drawn, box) for box in boxes) >= MIN_IOU,
        "drawn": drawn is not None,
    }


def summarise_localisation(per_image: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Figures over images: rates with Wilson intervals and the mean energy inside boxes."""
    n = len(per_image)
    energies = [item["energy"] for item in per_image if item["energy"] is not None]
    return {
        "pointing_game": wilson_rate(sum(item["hit"] for item in per_image), n),
        "pointing_game_tolerant": {
            **wilson_rate(sum(item["hit_tolerant"] for item in per_image), n),
            "tolerance": TOLERANCE,
        },
        # Images with no positive evidence at all put none of it inside the box.
        "energy_inside_boxes": float(np.mean(energies + [0.0] * (n - len(energies))))
        if n
        else None,
        "drawn_box_hit_rate": {
            **wilson_rate(sum(item["drawn_hit"] for item in per_image), n),
            "min_iou": MIN_IOU,
        },
        "drawn_boxes": sum(item["drawn"] for item in per_image),
        "reference": "FracAtlas YOLOv8s detector baseline: box mAP50 0.56 (Abedeen et al. 2023); "
        "a detector's score, not comparable one to one with a classifier's heat map",
    }


def localiser_item(
    label: int,
    probability: float | None,
    truth: Sequence[Box],
    candidates: list[Any],
    shown: int,
    heat: np.ndarray | None,
    drawn: Box | None,
) -> dict[str, Any]:
    """What the localisation head gave for one image, for :func:`summarise_localiser`.

    ``candidates`` are all its boxes down to the lowest score (the AP curve needs them),
    ``shown`` how many pass its box threshold, ``heat`` its centre map at the image's size.
    """
    figures = image_localisation(heat, truth, drawn) if heat is not None and truth else None
    return {
        "label": label,
        "probability": probability,
        "truth": list(truth),
        "candidates": candidates,
        "shown": shown,
        "figures": figures,
    }


def summarise_localiser(
    items: Sequence[dict[str, Any]],
    thresholds: dict[str, float],
    *,
    box_threshold: float,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The localisation head's figures on a split (:func:`localiser_item` per image).

    On the fractured images with boxes: the pointing game and the heat inside the boxes
    of its map, and box AP50 (:mod:`fracture.evaluation.detection`) with a bootstrap
    interval over images. On the normal images: how many boxes an output would draw per
    image at each operating point (boxes are drawn only on an image labelled fracture).
    """
    from fracture.evaluation.detection import average_precision

    boxed = [item for item in items if item["label"] == 1 and item["truth"]]
    normals = [item for item in items if item["label"] == 0]
    figures = summarise_localisation([item["figures"] for item in boxed if item["figures"]])
    detections = [item["candidates"] for item in boxed]
    truth = [item["truth"] for item in boxed]
    ap50 = average_precision(detections, truth)
    rng = np.random.default_rng(seed)
    resampled = []
    for _ in range(n_bootstrap if boxed else 0):
        pick = rng.integers(0, len(boxed), len(boxed))
        value = average_precision([detections[i] for i in pick], [truth[i] for i in pick])
        if value is not None:
            resampled.append(value)
    false_boxes = {
        name: float(
            np.mean(
                [
                    item["shown"] if (item["probability"] or 0.0) >= threshold else 0
                    for item in normals
                ]
            )
        )
        if normals
        else None
        for name, threshold in thresholds.items()
    }
    return {
        **figures,
        "ap50": ap50,
        "ap50_ci": [float(np.quantile(resampled, 0.025)), float(np.quantile(resampled, 0.975))]
        if resampled
        else None,
        "n_boxed": len(boxed),
        "false_boxes_per_normal": false_boxes,
        "n_normal": len(normals),
        "box_threshold": box_threshold,
        "reference": "FracAtlas YOLOv8s on a clean split: box AP50 0.48 (a reproduction; the "
        "paper's 0.56 also trained on its test images)",
    }
