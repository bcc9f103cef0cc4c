"""The Model page's localisation figures (fracture.views.localisation) for both maps."""

from __future__ import annotations

import numpy as np

from fracture.evaluation.localisation import (
    localiser_item,
    summarise_localisation,
    summarise_localiser,
)
from fracture.inference.localisation import Box
from fracture.views.localisation import localisation_lines

TRUE = (0.2, 0.2, 0.4, 0.4)


def _heat(x: float, y: float) -> np.ndarray:
    heat = np.zeros((20, 20), np.float32)
    heat[int(y * 20), int(x * 20)] = 1.0
    return heat


def _report() -> dict:
    items = [
        # a fracture found: peak and box inside the true box
        localiser_item(1, 0.9, [TRUE], [Box(0.2, 0.2, 0.4, 0.4, 0.8)], 1, _heat(0.3, 0.3), TRUE),
        # a fracture missed: peak elsewhere, no box above the threshold
        localiser_item(1, 0.6, [TRUE], [Box(0.7, 0.7, 0.9, 0.9, 0.2)], 0, _heat(0.8, 0.8), None),
        # normals: one labelled fracture with a box, one below every threshold
        localiser_item(0, 0.5, [], [Box(0.1, 0.1, 0.2, 0.2, 0.6)], 1, None, None),
        localiser_item(0, 0.05, [], [Box(0.1, 0.1, 0.2, 0.2, 0.6)], 1, None, None),
    ]
    thresholds = {"high_sensitivity": 0.1, "high_specificity": 0.7}
    localiser = summarise_localiser(items, thresholds, box_threshold=0.3, n_bootstrap=50)
    gradcam = summarise_localisation([item["figures"] for item in items if item["figures"]])
    return {"localiser": localiser, "localisation": gradcam}


def test_localiser_rows_add_ap50_and_false_boxes_per_normal():
    report = _report()
    located = report["localiser"]
    assert located["pointing_game"]["hits"] == 1 and located["pointing_game"]["n"] == 2
    # One normal is labelled fracture at the high-sensitivity point (0.5 >= 0.1), none at 0.7.
    assert located["false_boxes_per_normal"] == {"high_sensitivity": 0.5, "high_specificity": 0.0}
    rows = {figure: value for figure, value, _ in localisation_lines(report, "localiser")}
    assert rows["Map peak inside the fracture box"].startswith("50%")
    assert "Box AP50 (as YOLOv8 computes it)" in rows
    assert rows["Boxes per normal image, high-sensitivity point"] == "0.50"
    gradcam_rows = [figure for figure, _, _ in localisation_lines(report)]
    assert "Box AP50 (as YOLOv8 computes it)" not in gradcam_rows
    assert "Map peak inside the fracture box" in gradcam_rows


def test_no_boxes_no_rows():
    assert localisation_lines({}, "localiser") == []
    assert localisation_lines({"localisation": {"pointing_game": {"n": 0}}}) == []
