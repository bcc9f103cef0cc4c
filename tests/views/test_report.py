"""Per-image and batch reports (fracture.views.report), read back with a PDF text extractor."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import cv2
import numpy as np
import pytest
from PIL import Image

from fracture.inference.prediction import Prediction
from fracture.views import report

from conftest import radiograph_like

pypdf = pytest.importorskip("pypdf")
HEADER = report.ReportHeader(
    "fracatlas-resnet50", "7.2", datetime(2026, 3, 4, 9, 30, tzinfo=timezone.utc)
)


def _prediction(
    probability: float = 0.83, *, in_distribution: bool = True, name: str = "wrist.png"
):
    image = radiograph_like(1)
    heat = np.zeros(image.shape[:2], np.float32)
    heat[20:40, 30:50] = 0.9
    return Prediction(
        source=name,
        status="ok",
        probability=probability,
        in_distribution=in_distribution,
        image=image,
        heatmap=heat,
        box=(0.25, 0.2, 0.5, 0.45),
        box_style="solid",
        body_region="hand",
        body_region_probability=0.9,
    )


def _text(pdf: bytes) -> tuple[str, int]:
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    return "\n".join(page.extract_text() for page in reader.pages), len(reader.pages)


def test_the_pdf_holds_the_model_version_operating_point_and_disclaimer():
    entry = report.image_report(_prediction(), 0.35, "high_sensitivity")
    text, pages = _text(report.report_pdf(entry, HEADER))
    flat = " ".join(text.split())
    assert pages == 1
    assert "fracatlas-resnet50, version 7.2" in flat
    assert "High sensitivity, threshold 35.0%" in flat
    assert "not a medical device" in flat and "must not be used to diagnose" in flat
    assert "Fracture probability 83%" in flat and "Result Fracture" in flat
    assert "Body region hand" in flat and "2026-03-04 09:30" in flat
    assert "solid: above the high-specificity threshold" in flat


def test_several_boxes_with_scores_are_drawn_and_listed():
    boxes = [
        report.ReportBox((0.1, 0.1, 0.3, 0.3), "solid", 0.91, "localisation head"),
        report.ReportBox((0.6, 0.5, 0.9, 0.8), "dotted", 0.42, "localisation head"),
    ]
    entry = report.image_report(_prediction(), 0.35, "high_sensitivity", boxes=boxes)
    flat = " ".join(_text(report.report_pdf(entry, HEADER))[0].split())
    assert "Box 1 localisation head, score 91%" in flat
    assert "Box 2 localisation head, score 42%" in flat
    plain = report.report_image(report.image_report(_prediction(), 0.35, "x", boxes=[]))
    drawn = report.report_image(entry)
    assert plain is not None and drawn is not None
    # white box lines where the plain overlay has none, inside the image (not the colour bar)
    width = entry.image.shape[1]
    assert (drawn[:, :width] == 255).all(axis=2).sum() > (plain[:, :width] == 255).all(axis=2).sum()


def test_a_not_assessed_image_gets_no_probability_no_heat_and_no_box():
    entry = report.image_report(_prediction(in_distribution=False), 0.35, "high_sensitivity")
    assert entry.heatmap is None and entry.boxes == () and entry.probability is None
    flat = " ".join(_text(report.report_pdf(entry, HEADER))[0].split())
    assert "Result Not assessed" in flat and "Fracture probability" not in flat
    assert "out-of-distribution" in flat


def test_the_png_shows_the_image_above_the_facts():
    entry = report.image_report(_prediction(name="café – wrist.png"), 0.35, "high_sensitivity")
    png = Image.open(io.BytesIO(report.report_png(entry, HEADER)))
    assert png.format == "PNG"
    shown = report.report_image(entry)
    # the image fills the card's width (a small one enlarged), the facts below it
    height = round(shown.shape[0] * png.width / shown.shape[1])
    assert png.width >= report.PNG_MIN_WIDTH and png.height > height + 200
    expected = cv2.resize(shown, (png.width, height), interpolation=cv2.INTER_LINEAR)
    top = np.asarray(png.convert("RGB"))[:height]
    assert np.abs(top.astype(int) - expected.astype(int)).mean() < 1.0
    assert (np.asarray(png.convert("L"))[height + 10 :] < 128).any()  # text is drawn


def test_a_batch_pdf_has_a_summary_and_one_page_per_image_with_odd_names():
    predictions = [
        _prediction(0.83, name="a.png"),
        _prediction(0.05, name="b.png"),
        Prediction(source="broken.png", status="error", error="broken.png: not an image"),
        _prediction(0.6, name="ünïcode – x.png"),
    ]
    entries = (report.image_report(p, 0.35, "high_sensitivity") for p in predictions)
    text, pages = _text(report.batch_pdf(entries, HEADER))
    flat = " ".join(text.split())
    assert pages == 1 + len(predictions)
    assert "4 images" in flat and "high sensitivity operating point, threshold 35.0%" in flat
    assert "Could not be scored: broken.png: not an image" in flat
    assert "unicode - x.png" in flat
    assert flat.count("must not be used to diagnose") == 1 + len(predictions)


def test_report_file_names_are_safe_and_keep_the_stem():
    assert report.report_file_name("scans/../wrist 1.png", "pdf") == "wrist 1_report.pdf"
    assert report.report_file_name("a/b/c.dcm", "png") == "c_report.png"
