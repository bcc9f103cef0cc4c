"""Does the heat map point at the fracture? Localisation figures against radiologists' boxes.

Three figures, per fractured image with at least one box, on the raw heat map
(Grad-CAM evidence at the original image size) and the box the app draws:

* **pointing game** (Zhang et al., "Top-down Neural Attention by Excitation
  Backprop", ECCV 2016): the map's maximum lies inside a box, at tolerance 0 and
  at 3% of the image side (:func:`fracture.evaluation.metrics.pointing_game`);
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

from fracture.evaluation.metrics import pointing_game
from fracture.evaluation.proportions import wilson_rate

__all__ = [
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
