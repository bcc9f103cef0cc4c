"""The "Where" and "Why" maps, and the boxes at the chosen operating point (fracture.views.overlays).

Predictions are built by hand here (no network): the rules under test are which
map a view draws and which boxes a verdict allows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fracture.inference.localisation import Box
from fracture.inference.prediction import Prediction
from fracture.inference.preprocess import letterbox
from fracture.views import overlays

from conftest import radiograph_like

THRESHOLDS = {"high_sensitivity": 0.3, "high_specificity": 0.7}


def _prediction(probability: float, *, located: bool = True, in_distribution: bool = True):
    image = radiograph_like(1)
    _, geometry = letterbox(image, 64)
    outputs = None
    boxes: list[Box] = []
    if located:
        outputs = np.full((4, 4, 5), -6.0, np.float32)
        outputs[1, 2, 0] = 3.0  # one strong centre
        boxes = [Box(0.5, 0.2, 0.7, 0.4, 0.92), Box(0.1, 0.6, 0.2, 0.7, 0.35)]
    heat = np.zeros(image.shape[:2], np.float32)
    heat[10:20, 10:20] = 0.8
    return Prediction(
        source="x.png",
        status="ok",
        probability=probability,
        threshold=0.5,
        in_distribution=in_distribution,
        heatmap=heat,
        image=image,
        geometry=geometry,
        location_outputs=outputs,
        location_boxes=boxes,
    )


def test_where_is_the_default_view_only_with_a_localisation_head():
    assert overlays.views_of(_prediction(0.8)) == [overlays.WHERE, overlays.WHY]
    assert overlays.views_of(_prediction(0.8, located=False)) == [overlays.WHY]
    assert set(overlays.VIEW_NAMES.values()) == {"Where (localisation)", "Why (Grad-CAM)"}


def test_the_two_views_draw_different_maps_in_fixed_units():
    prediction = _prediction(0.8)
    where = overlays.map_for(prediction, overlays.WHERE)
    why = overlays.map_for(prediction, overlays.WHY)
    assert where.shape == why.shape == prediction.image.shape[:2]
    assert 0.0 <= where.min() and where.max() <= 1.0
    # The localisation peak is where the head put its centre (top right), not the CAM's square.
    row, column = np.unravel_index(np.argmax(where), where.shape)
    assert column > where.shape[1] // 3 and row < where.shape[0] // 2
    assert not np.allclose(where, why)
    # A display-size image gets a map of its own size.
    assert overlays.map_for(prediction, overlays.WHERE, size=(40, 30)).shape == (40, 30)


def test_boxes_follow_the_verdict_at_the_chosen_point():
    prediction = _prediction(0.5)
    # Labelled fracture at the high-sensitivity point: every head box, with its score.
    low = overlays.boxes_at(prediction, 0.3, THRESHOLDS)
    assert [mark.score for mark in low] == [0.92, 0.35]
    assert {mark.style for mark in low} == {"dotted"}
    assert low[0].label == "92%"
    # Labelled normal at the high-specificity point: no box at all.
    assert overlays.boxes_at(prediction, 0.7, THRESHOLDS) == []
    # Above the high-specificity threshold the boxes are solid.
    assert {m.style for m in overlays.boxes_at(_prediction(0.9), 0.7, THRESHOLDS)} == {"solid"}
    # A flagged image is never boxed.
    flagged = _prediction(0.99, in_distribution=False)
    assert overlays.boxes_at(flagged, 0.3, THRESHOLDS) == []


def test_without_a_head_the_box_is_the_grad_cam_strongest_region():
    prediction = _prediction(0.5, located=False)
    marks = overlays.boxes_at(prediction, 0.3, THRESHOLDS)
    assert len(marks) == 1 and marks[0].score is None
    x0, y0, x1, y1 = marks[0].box
    width, height = prediction.image.shape[1], prediction.image.shape[0]
    assert x0 * width <= 15 <= x1 * width and y0 * height <= 15 <= y1 * height


def test_overlay_draws_boxes_only_where_labelled_fracture():
    prediction = _prediction(0.5)
    fracture = overlays.overlay_for(prediction, overlays.WHERE, 0.3, THRESHOLDS)
    normal = overlays.overlay_for(prediction, overlays.WHERE, 0.7, THRESHOLDS)
    height, width = prediction.image.shape[:2]
    # The best box's top edge: white where labelled fracture, not where labelled normal.
    edge = (round(0.2 * height), slice(round(0.55 * width), round(0.65 * width)))
    assert (fracture[edge] == 255).all(axis=-1).mean() > 0.5
    assert (normal[edge] == 255).all(axis=-1).mean() < 0.5
    # "Where" without a head falls back to "Why".
    plain = _prediction(0.5, located=False)
    np.testing.assert_array_equal(
        overlays.overlay_for(plain, overlays.WHERE, 0.7, THRESHOLDS),
        overlays.overlay_for(plain, overlays.WHY, 0.7, THRESHOLDS),
    )


def test_window_and_level_change_only_the_display():
    image = np.array([[[0] * 3, [64] * 3, [128] * 3, [255] * 3]], np.uint8)
    np.testing.assert_array_equal(overlays.windowed(image, 1.0, 0.5), image)
    narrow = overlays.windowed(image, 0.5, 0.5)
    assert narrow[0, 0, 0] == 0 and narrow[0, 3, 0] == 255 and narrow[0, 2, 0] == 128
    assert narrow[0, 1, 0] < 64  # more contrast around the level
    prediction = _prediction(0.5)
    before = prediction.image.copy()
    overlays.overlay_for(prediction, overlays.WHY, 0.3, THRESHOLDS, window=0.3, level=0.2)
    np.testing.assert_array_equal(prediction.image, before)


@pytest.mark.parametrize("heat, empty", [(0.0, True), (0.04, True), (0.2, False)])
def test_the_empty_map_note_uses_the_display_floor(heat, empty):
    assert overlays.map_is_empty(np.full((4, 4), heat, np.float32)) is empty


def test_viewer_figure_zooms_and_carries_boxes_and_a_fixed_colour_scale():
    prediction = _prediction(0.5)
    marks = overlays.boxes_at(prediction, 0.3, THRESHOLDS)
    picture = overlays.overlay_for(prediction, overlays.WHERE, 0.3, THRESHOLDS, show_boxes=False)
    figure = overlays.viewer_figure(picture, marks, unit=overlays.map_unit(overlays.WHERE))
    spec = json.loads(figure.to_json())
    assert len(spec["layout"]["shapes"]) == 2
    assert [a["text"] for a in spec["layout"]["annotations"]] == ["92%", "35%"]
    assert spec["layout"]["shapes"][0]["line"]["dash"] == "dot"
    scale = spec["data"][1]["marker"]
    assert (scale["cmin"], scale["cmax"], scale["showscale"]) == (0.0, 1.0, True)
    assert spec["layout"]["dragmode"] == "pan"
    assert spec["data"][0]["source"].startswith("data:image/jpeg;base64,")
    # No colour scale when the map is switched off.
    assert len(overlays.viewer_figure(picture).data) == 1


def test_the_report_draws_the_where_map_and_every_box_with_its_score():
    from fracture.views import report

    prediction = _prediction(0.5)
    entry = report.image_report(prediction, 0.3, "high_sensitivity", thresholds=THRESHOLDS)
    assert entry.map_view == overlays.WHERE
    assert [(box.score, box.label) for box in entry.boxes] == [
        (0.92, "localisation head"),
        (0.35, "localisation head"),
    ]
    header = report.ReportHeader("m", "1")
    lines = dict(report.report_lines(entry, header))
    assert lines["Box 1"].startswith("localisation head, score 92%")
    assert lines["Map"].startswith("Where (localisation)")
    normal = report.image_report(prediction, 0.7, "high_specificity", thresholds=THRESHOLDS)
    assert normal.boxes == () and normal.verdict == "normal"
    why = report.image_report(prediction, 0.3, "x", thresholds=THRESHOLDS, view=overlays.WHY)
    assert why.map_view == overlays.WHY and why.heatmap.max() == pytest.approx(0.8)


def test_the_zip_draws_the_where_map_and_boxes_only_where_labelled_fracture():
    import io
    import zipfile

    from PIL import Image

    from fracture.views import results

    def picture(threshold: float) -> np.ndarray:
        data = results.overlay_zip([_prediction(0.5)], 0.45, threshold, thresholds=THRESHOLDS)
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            member = archive.read("x_gradcam.png")
            text = Image.open(io.BytesIO(member)).info.get("Description", "")
            return np.asarray(Image.open(io.BytesIO(member)).convert("RGB")), text

    boxed, caption = picture(0.3)
    plain, _ = picture(0.7)
    assert "Where (localisation)" in caption
    height, width = _prediction(0.5).image.shape[:2]
    edge = (round(0.2 * height), slice(round(0.55 * width), round(0.65 * width)))
    assert (boxed[edge] == 255).all(axis=-1).mean() > 0.5
    assert (plain[edge] == 255).all(axis=-1).mean() < 0.5
