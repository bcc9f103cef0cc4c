"""The Predict viewer in Chromium: zoom changes the visible range, window/level only the display.

Uses the Streamlit server and page of test_browser.py (real ImageNet weights,
Chromium; skips without them). Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import pytest
from test_browser import (  # noqa: F401 - the server and page fixtures, shared
    ARTIFACTS,
    MODEL_READY_MS,
    _charts_rendered,
    _idle,
    _no_exception,
    _shown_result,
    _upload,
    page,
    server,
)

pytestmark = pytest.mark.slow

_X_RANGE = """() => {
    const plot = document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot')[0];
    return plot._fullLayout.xaxis.range.slice();
}"""
_PICTURE = """() => {
    const plot = document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot')[0];
    return plot.data[0].source;
}"""


def test_zoom_changes_the_range_and_window_level_leaves_the_probability(server, page):  # noqa: F811
    url, data, _, _ = server
    page.set_viewport_size({"width": 1400, "height": 2400})
    page.goto(url, timeout=MODEL_READY_MS)
    uploader = page.locator("[data-testid='stFileUploaderDropzoneInput']")
    uploader.wait_for(state="attached", timeout=MODEL_READY_MS)
    uploader.set_input_files([_upload(data)])  # a real radiograph where ../shared has one
    probability = _shown_result(page)
    if probability == "Not assessed":
        pytest.skip("the image was flagged: the model shows no map for it by default")
    _charts_rendered(page, 2)
    _idle(page)

    # Zoom: the wheel over the image narrows the visible x range.
    before = page.evaluate(_X_RANGE)
    viewer = page.locator("[data-testid='stPlotlyChart']").first
    box = viewer.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(5):
        page.mouse.wheel(0, -200)
        page.wait_for_timeout(150)
    page.wait_for_timeout(500)
    after = page.evaluate(_X_RANGE)
    assert abs(after[1] - after[0]) < 0.9 * abs(before[1] - before[0]), (before, after)

    # Window/level: the displayed picture changes, the probability does not.
    picture = page.evaluate(_PICTURE)
    page.get_by_role("button", name="Brightness and contrast").click()
    level = page.get_by_role("slider", name="Level (brightness)")
    level.wait_for(timeout=MODEL_READY_MS)
    level.focus()
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    page.keyboard.press("Escape")
    page.wait_for_function(
        """(old) => {
            const plot = document.querySelectorAll(
                '[data-testid="stPlotlyChart"] .js-plotly-plot')[0];
            return plot && plot.data[0].source !== old;
        }""",
        arg=picture,
        timeout=MODEL_READY_MS,
    )
    _idle(page)
    _no_exception(page)
    assert _shown_result(page) == probability
    page.screenshot(path=ARTIFACTS / "browser-viewer-1400.png", full_page=True)

    # At phone width the viewer fits the screen.
    page.set_viewport_size({"width": 390, "height": 1600})
    page.wait_for_timeout(800)
    width = page.locator("[data-testid='stPlotlyChart']").first.bounding_box()["width"]
    assert width <= 390
    page.screenshot(path=ARTIFACTS / "browser-viewer-390.png", full_page=True)
