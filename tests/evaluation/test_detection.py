"""AP50 and the box threshold (fracture.evaluation.detection) on cases with a known answer."""

from __future__ import annotations

import pytest

from fracture.evaluation.detection import (
    average_precision,
    choose_box_threshold,
    false_boxes_per_image,
    match_detections,
)
from fracture.inference.localisation import Box

TRUE = (0.1, 0.1, 0.3, 0.3)


def test_perfect_detections_score_as_in_yolov8():
    detections = [[Box(*TRUE, 0.9)], [Box(0.5, 0.5, 0.7, 0.7, 0.8)]]
    truth = [[TRUE], [(0.5, 0.5, 0.7, 0.7)]]
    # YOLOv8's compute_ap closes the curve at (recall 1, precision 0), and the 101-point
    # trapezoid loses half of the last step: a perfect detector scores 0.995 there too.
    assert average_precision(detections, truth) == pytest.approx(0.995)


def test_a_false_positive_ranked_first_halves_the_first_precision():
    # Ranked: FP (0.9), TP (0.8). Precision envelope: 0.5 at recall 1 -> AP 0.5.
    detections = [[Box(0.6, 0.6, 0.9, 0.9, 0.9), Box(*TRUE, 0.8)]]
    assert average_precision(detections, [[TRUE]]) == pytest.approx(0.5, abs=0.01)


def test_missed_box_limits_recall():
    # One of two true boxes found: precision 1 up to recall 0.5, then YOLOv8's curve runs
    # straight to its closing point (recall 1, precision 0): 0.5 + 0.25.
    detections = [[Box(*TRUE, 0.9)], []]
    ap = average_precision(detections, [[TRUE], [(0.5, 0.5, 0.7, 0.7)]])
    assert ap == pytest.approx(0.75, abs=0.01)


def test_iou_just_below_half_is_a_miss_and_a_box_is_claimed_once():
    shifted = Box(0.1 + 0.2 / 3 + 0.001, 0.1, 0.3 + 0.2 / 3 + 0.001, 0.3, 0.9)  # IoU < 0.5
    assert average_precision([[shifted]], [[TRUE]]) == 0.0
    scores, hits, n_true = match_detections([[Box(*TRUE, 0.9), Box(*TRUE, 0.8)]], [[TRUE]])
    assert hits.tolist() == [True, False] and n_true == 1 and scores.tolist() == [0.9, 0.8]


def test_no_true_boxes_gives_none_and_no_detection_gives_zero():
    assert average_precision([[Box(*TRUE, 0.5)]], [[]]) is None
    assert average_precision([[]], [[TRUE]]) == 0.0


def test_box_threshold_is_the_f1_peak():
    # TP 0.9, FP 0.7, TP 0.5, FP 0.3: F1 is best (0.8) keeping the first three.
    detections = [
        [Box(*TRUE, 0.9), Box(0.6, 0.6, 0.8, 0.8, 0.7)],
        [Box(0.4, 0.4, 0.6, 0.6, 0.5), Box(0.0, 0.8, 0.1, 0.9, 0.3)],
    ]
    truth = [[TRUE], [(0.4, 0.4, 0.6, 0.6)]]
    assert choose_box_threshold(detections, truth) == pytest.approx(0.4)
    assert choose_box_threshold([[]], [[TRUE]], fallback=0.25) == 0.25


def test_false_boxes_per_image():
    assert false_boxes_per_image([[Box(*TRUE, 0.9)], [], []]) == pytest.approx(1 / 3)
    assert false_boxes_per_image([]) is None
