"""Box decoding from the localisation head (fracture.inference.localisation) on constructed maps."""

from __future__ import annotations

import numpy as np
import pytest

from fracture.inference.localisation import (
    Box,
    boxes_in_image,
    centre_map,
    decode_boxes,
    iou,
    non_maximum_suppression,
)
from fracture.inference.preprocess import letterbox
from fracture.model.localiser import OUTPUT_CHANNELS

GRID = 24


def _outputs(peaks: list[tuple[int, int, float, float, float]]) -> np.ndarray:
    """Head outputs with a centre logit peak per (row, col, score, width, height) in cells."""
    out = np.zeros((GRID, GRID, OUTPUT_CHANNELS), np.float32)
    out[..., 0] = -8.0  # sigmoid ~ 0.0003: below the candidate floor
    for row, col, score, width, height in peaks:
        out[row, col, 0] = np.log(score / (1 - score))
        out[row, col, 3:5] = np.log([width, height])
    return out


def test_two_separate_peaks_give_two_boxes_in_score_order():
    boxes = decode_boxes(_outputs([(5, 5, 0.6, 2, 4), (18, 12, 0.9, 3, 3)]))
    assert [round(b.score, 3) for b in boxes] == [0.9, 0.6]
    strong, weak = boxes
    # Centre of cell (18, 12) is (12.5, 18.5) cells; 3 x 3 cells wide.
    assert strong.coordinates == pytest.approx(
        (11 / GRID, 17 / GRID, 14 / GRID, 20 / GRID), abs=1e-6
    )
    assert weak.coordinates == pytest.approx((4.5 / GRID, 3.5 / GRID, 6.5 / GRID, 7.5 / GRID))


def test_offset_moves_the_centre_within_its_cell():
    out = _outputs([(10, 10, 0.8, 2, 2)])
    out[10, 10, 1:3] = (0.25, -0.25)
    (box,) = decode_boxes(out)
    assert ((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2) == pytest.approx(
        (10.75 / GRID, 10.25 / GRID)
    )


def test_neighbouring_cells_of_one_peak_are_not_separate_boxes():
    out = _outputs([(8, 8, 0.9, 2, 2)])
    out[8, 9, 0] = np.log(0.5 / 0.5)  # a shoulder of the same peak
    out[8, 9, 3:5] = np.log([2, 2])
    boxes = decode_boxes(out)
    assert len(boxes) == 1 and boxes[0].score == pytest.approx(0.9)


def test_min_score_and_max_boxes():
    out = _outputs([(3, 3, 0.2, 1, 1), (10, 10, 0.5, 1, 1), (20, 20, 0.7, 1, 1)])
    assert len(decode_boxes(out, min_score=0.3)) == 2
    assert [round(b.score, 2) for b in decode_boxes(out, max_boxes=1)] == [0.7]
    assert decode_boxes(_outputs([])) == []


def test_nms_drops_the_weaker_of_two_overlapping_boxes():
    a = Box(0.1, 0.1, 0.5, 0.5, 0.9)
    b = Box(0.12, 0.1, 0.52, 0.5, 0.8)  # IoU ~0.9 with a
    c = Box(0.6, 0.6, 0.9, 0.9, 0.7)
    assert non_maximum_suppression([b, c, a]) == [a, c]
    assert iou((0, 0, 1, 1), (0.5, 0, 1, 1)) == pytest.approx(0.5)
    assert iou((0, 0, 0.2, 0.2), (0.5, 0.5, 1, 1)) == 0.0


def test_boxes_move_from_the_letterbox_to_the_image():
    # A 200 x 100 (w x h) image in a 24 px square: content rows 6..18.
    _, geometry = letterbox(np.zeros((100, 200, 3), np.uint8), GRID)
    inside = Box(0.25, 6 / GRID, 0.75, 12 / GRID, 0.5)
    on_padding = Box(0.0, 0.0, 1.0, 5 / GRID, 0.5)
    moved = boxes_in_image([inside, on_padding], geometry)
    assert len(moved) == 1
    assert moved[0].coordinates == pytest.approx((0.25, 0.0, 0.75, 0.5), abs=1e-6)


def test_centre_map_is_a_probability_map():
    heat = centre_map(_outputs([(4, 4, 0.75, 1, 1)]))
    assert heat.shape == (GRID, GRID) and heat.max() == pytest.approx(0.75)
    assert 0.0 <= heat.min()


def test_decode_refuses_other_shapes():
    with pytest.raises(ValueError, match="H, W, 5"):
        decode_boxes(np.zeros((GRID, GRID, 3)))
