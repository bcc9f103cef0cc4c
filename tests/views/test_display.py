"""Display-size images for the Predict page (fracture.views.display)."""

from __future__ import annotations

import cv2
import numpy as np

from fracture.views import display

from conftest import radiograph_like


def test_large_images_shrink_to_display_size_keeping_aspect_and_heatmap_alignment():
    image = radiograph_like(1, height=2400, width=1800)
    heatmap = np.zeros((2400, 1800), np.float32)
    heatmap[1200:1600, 900:1300] = 1.0  # a hot square, to check it stays where it was
    small, small_heat = display.fit_for_display(image, heatmap)
    assert small.shape == (display.DISPLAY_MAX_SIDE, 720, 3) and small.dtype == np.uint8
    assert small_heat.shape == small.shape[:2]
    rows, cols = np.nonzero(small_heat > 0.5)
    assert (
        abs(rows.mean() / 960 - 1400 / 2400) < 0.01 and abs(cols.mean() / 720 - 1100 / 1800) < 0.01
    )


def test_small_images_are_left_alone():
    image = radiograph_like(2, height=300, width=200)
    small, heat = display.fit_for_display(image, None)
    assert small is image and heat is None


def test_jpeg_round_trips_at_the_same_size_and_is_smaller_than_png():
    image = display.fit_for_display(radiograph_like(3, height=1200, width=1000), None)[0]
    encoded = display.jpeg(image)
    decoded = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == image.shape
    assert np.abs(decoded.astype(int) - image[..., ::-1].astype(int)).mean() < 6
    assert len(encoded) < len(cv2.imencode(".png", image)[1].tobytes())


def test_gauge_is_built_once_per_value():
    first = display.probability_gauge(0.42, 0.3)
    assert display.probability_gauge(0.42, 0.3) is first
    assert display.probability_gauge(0.43, 0.3) is not first
