"""Box-detection figures: AP50 as the FracAtlas paper reports it, and false boxes per image.

FracAtlas (Abedeen et al., Sci Data 2023) reports its YOLOv8 detector's box mAP50: with
one class, the average precision at an IoU of 0.5. It is computed here the way
YOLOv8 and COCO compute it:

1. every predicted box of every image, sorted by score, best first;
2. a prediction is a true positive when it overlaps a not yet matched true box of its
   image by IoU >= 0.5 (the best-scoring prediction claims a true box first, as in
   COCO's matching); every other prediction is a false positive;
3. precision and recall along that order; the precision envelope (the best precision
   at this recall or any higher one);
4. the area under it, sampled at 101 recall points from 0 to 1 (COCO's interpolation,
   which YOLOv8's ``compute_ap`` also uses, down to its closing point at recall 1 and
   precision 0: a perfect detector scores 0.995, as in YOLOv8's reports, and the curve
   runs straight from the last recall reached to that point).

Recall counts every true box, so a fracture the detector never boxes lowers AP.
Images without true boxes add only false positives (for "AP50 on fractured images",
pass only the fractured images).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fracture.inference.localisation import Box, iou

__all__ = [
    "average_precision",
    "match_detections",
    "choose_box_threshold",
    "false_boxes_per_image",
    "IOU_THRESHOLD",
]

IOU_THRESHOLD = 0.5
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)

TrueBoxes = Sequence[tuple[float, float, float, float]]


def match_detections(
    detections: Sequence[Sequence[Box]],
    truth: Sequence[TrueBoxes],
    iou_threshold: float = IOU_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores and true-positive flags of all detections, best first, and the number of true boxes."""
    if len(detections) != len(truth):
        raise ValueError(f"{len(detections)} images of detections but {len(truth)} of true boxes")
    entries = [(box.score, image, box) for image, boxes in enumerate(detections) for box in boxes]
    entries.sort(key=lambda entry: -entry[0])
    claimed = [np.zeros(len(t), bool) for t in truth]
    scores = np.array([entry[0] for entry in entries], np.float64)
    hits = np.zeros(len(entries), bool)
    for k, (_, image, box) in enumerate(entries):
        best, best_iou = -1, iou_threshold
        for j, true_box in enumerate(truth[image]):
            overlap = iou(box.coordinates, true_box)
            if not claimed[image][j] and overlap >= best_iou:
                best, best_iou = j, overlap
        if best >= 0:
            claimed[image][best] = True
            hits[k] = True
    return scores, hits, sum(len(t) for t in truth)


def average_precision(
    detections: Sequence[Sequence[Box]],
    truth: Sequence[TrueBoxes],
    iou_threshold: float = IOU_THRESHOLD,
) -> float | None:
    """AP at ``iou_threshold`` over all images (see the module docstring); None without true boxes."""
    _, hits, n_true = match_detections(detections, truth, iou_threshold)
    if n_true == 0:
        return None
    if hits.size == 0:
        return 0.0
    true_positives = np.cumsum(hits)
    recall = true_positives / n_true
    precision = true_positives / np.arange(1, hits.size + 1)
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[1.0], precision, [0.0]])
    envelope = np.flip(np.maximum.accumulate(np.flip(precision)))
    sampled = np.interp(_RECALL_POINTS, recall, envelope)
    return float(np.trapezoid(sampled, _RECALL_POINTS))


def false_boxes_per_image(shown: Sequence[Sequence[Box]]) -> float | None:
    """The mean number of boxes shown per image: on normal images every box is a false one."""
    if not shown:
        return None
    return float(np.mean([len(boxes) for boxes in shown]))


def choose_box_threshold(
    detections: Sequence[Sequence[Box]],
    truth: Sequence[TrueBoxes],
    iou_threshold: float = IOU_THRESHOLD,
    fallback: float = 0.3,
) -> float:
    """The score above which boxes are shown: the one with the best F1 of box detection.

    The way a detector's confidence threshold is usually set (YOLOv8 reports its F1
    curve's peak). Choose it on images the head did not train on; ``fallback`` when
    no detection is right.
    """
    scores, hits, n_true = match_detections(detections, truth, iou_threshold)
    if n_true == 0 or not hits.any():
        return fallback
    true_positives = np.cumsum(hits)
    precision = true_positives / np.arange(1, hits.size + 1)
    recall = true_positives / n_true
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1))
    # Halfway to the next lower score, so that a box scoring exactly the chosen one shows.
    lower = scores[best + 1] if best + 1 < scores.size else 0.0
    return float(min(max((scores[best] + lower) / 2, 1e-3), 0.999))
