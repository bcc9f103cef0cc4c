"""A batch on the Predict page (fracture.views.batch) and its ZIP's worker pool (results.OverlayArchive).

Predictions are built by hand (no network): what is under test is what the page keeps of
each result, that the ZIP encoded in a pool is the ZIP encoded one by one, and that a bad
input or a bad overlay never stops it.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from fracture.inference.localisation import Box
from fracture.inference.prediction import Prediction
from fracture.inference.preprocess import letterbox
from fracture.views import batch, results

from conftest import radiograph_like

THRESHOLDS = {"high_sensitivity": 0.3, "high_specificity": 0.7}


def _scored(name: str, probability: float, *, seed: int = 1, flagged: bool = False) -> Prediction:
    """A prediction as the shared predictor returns it with maps: image, heat, the head's grid."""
    image = radiograph_like(seed)
    _, geometry = letterbox(image, 64)
    outputs = np.full((4, 4, 5), -6.0, np.float32)
    outputs[1, 2, 0] = 3.0
    heat = np.zeros(image.shape[:2], np.float32)
    heat[10:20, 10:20] = 0.8
    best = Box(0.5, 0.2, 0.7, 0.4, 0.92)
    return Prediction(
        source=name,
        status="ok",
        probability=probability,
        threshold=0.5,
        label="fracture" if probability >= 0.5 else "normal",
        in_distribution=not flagged,
        ood_score=9.0 if flagged else 0.2,
        heatmap=heat,
        image=image,
        geometry=geometry,
        evidence=np.ones((4, 4), np.float32),
        features={"pool": np.ones(2048, np.float32)},
        location_outputs=outputs,
        location_boxes=[best, Box(0.1, 0.6, 0.2, 0.7, 0.35)],
        box=best.coordinates,
        box_style="solid",
        box_score=best.score,
    )


def _failed(name: str) -> Prediction:
    return Prediction(source=name, status="error", error=f"{name}: is empty (0 bytes)")


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_light_keeps_what_a_row_needs_and_drops_every_array():
    full = _scored("a.png", 0.8)
    kept = batch.light(full)
    for name in ("image", "heatmap", "features", "evidence", "location_outputs", "class_evidence"):
        assert getattr(kept, name) is None, name
    assert (kept.probability, kept.in_distribution, kept.box, kept.box_score) == (
        full.probability,
        full.in_distribution,
        full.box,
        full.box_score,
    )
    assert kept.location_boxes == full.location_boxes


def test_the_csv_from_kept_results_is_the_csv_from_full_ones_at_either_point():
    # The CSV is written from what the table keeps (no second network pass): its boxes
    # and labels must be those of the full predictions, and a flagged image stays unlabelled.
    full = [_scored("a.png", 0.8), _scored("b.png", 0.4), _scored("c.png", 0.9, flagged=True)]
    full.append(_failed("d.png"))
    for threshold in THRESHOLDS.values():
        assert results.predictions_csv(
            [batch.light(p) for p in full], threshold
        ) == results.predictions_csv(full, threshold)
    rows = list(csv.DictReader(io.StringIO(results.predictions_csv(full, 0.3).decode())))
    assert [row["prediction"] for row in rows] == ["fracture", "fracture", "not_assessed", ""]
    assert rows[0]["boxes"] and not rows[2]["boxes"] and not rows[2]["box_x0"]
    assert rows[3]["status"] == "error" and "empty" in rows[3]["error"]


def test_batch_scores_keep_light_rows_and_only_the_most_suspicious_with_pixels():
    scores = batch.BatchScores(keep_shown=2)
    probabilities = [0.2, 0.9, 0.5, 0.95, 0.7]
    for index, probability in enumerate(probabilities):
        scores.add(_scored(f"{index}.png", probability, seed=index))
    scores.add(_scored("flagged.png", 0.99, flagged=True))  # the model cannot judge it
    scores.add(_failed("broken.png"))
    assert len(scores) == 7
    assert [p.source for p in scores.predictions][-2:] == ["flagged.png", "broken.png"]
    assert all(p.image is None and p.heatmap is None for p in scores.predictions)
    shown = scores.shown_first()
    # The first rows of the table (most suspicious assessed first), ready for the viewer.
    assert [position for position, _ in shown] == [3, 1]
    assert all(p.image is not None and p.features is None for _, p in shown)


def _archive(pool: ThreadPoolExecutor, threshold: float = 0.3, **kwargs) -> results.OverlayArchive:
    return results.OverlayArchive(
        0.5,
        threshold,
        model_name="tiny",
        model_version="7",
        thresholds=THRESHOLDS,
        pool=pool,
        **kwargs,
    )


def test_the_zip_encoded_in_a_pool_is_the_zip_encoded_one_by_one():
    predictions = [
        _scored("x/a.png", 0.8, seed=1),
        _failed("broken.png"),
        _scored("y/a.png", 0.2, seed=2),
        _scored("x/a.png", 0.6, seed=3),  # the same name twice: kept apart, in input order
        _scored("photo.png", 0.9, seed=4, flagged=True),
    ]
    with ThreadPoolExecutor(1) as one, ThreadPoolExecutor(3) as three:
        alone, pooled = _archive(one), _archive(three, max_pending=1)
        for prediction in predictions:
            alone.add(prediction)
            pooled.add(prediction)
        data = pooled.bytes()
        assert data == alone.bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == [
            "x/a_gradcam.png",
            "y/a_gradcam.png",
            "x/a_2_gradcam.png",
            "photo_gradcam.png",
            "errors.txt",
        ]
    members = _members(data)
    assert members["errors.txt"].decode().count("broken.png") == 1
    # Each overlay says what the model concluded at this threshold, in its text chunk too.
    captions = {
        name: Image.open(io.BytesIO(members[name])).text["Description"]
        for name in members
        if name.endswith(".png")
    }
    assert "FRACTURE: fracture probability 80%" in captions["x/a_gradcam.png"]
    assert "model tiny v7" in captions["x/a_gradcam.png"]
    # Flagged: not assessed, never a label, whatever its probability.
    flagged = captions["photo_gradcam.png"]
    assert "NOT ASSESSED" in flagged and "FRACTURE:" not in flagged and "NORMAL" not in flagged


def test_an_overlay_that_fails_to_draw_is_listed_and_the_zip_goes_on(monkeypatch):
    draw = results.overlay_png

    def fails_for_one(prediction, *args, **kwargs):
        if prediction.source == "bad.png":
            raise ValueError("the blend refused it")
        return draw(prediction, *args, **kwargs)

    monkeypatch.setattr(results, "overlay_png", fails_for_one)
    with ThreadPoolExecutor(2) as pool:
        archive = _archive(pool)
        archive.add(_scored("bad.png", 0.8))
        archive.add(_scored("good.png", 0.8))
        members = _members(archive.bytes())
    assert sorted(members) == ["errors.txt", "good_gradcam.png"]
    assert (
        "bad_gradcam.png: the overlay could not be drawn (the blend refused it)"
        in members["errors.txt"].decode()
    )


def test_the_prepared_zip_serves_only_its_own_settings_and_gives_up_when_too_large(
    monkeypatch,
):
    draws: list[str] = []
    draw = results.overlay_png

    def counted(prediction, *args, **kwargs):
        draws.append(prediction.source)
        return draw(prediction, *args, **kwargs)

    monkeypatch.setattr(results, "overlay_png", counted)
    with ThreadPoolExecutor(1) as pool:
        archive = _archive(pool, threshold=0.3)
        assert archive.matches(0.5, 0.3)
        assert not archive.matches(0.5, 0.7) and not archive.matches(0.9, 0.3)
        # Past its byte budget the archive stops encoding and holds nothing.
        small = _archive(pool, max_bytes=10)
        small.add(_scored("a.png", 0.8))
        deadline = time.monotonic() + 30
        while not small.too_large and time.monotonic() < deadline:
            time.sleep(0.01)  # a.png's overlay is counted when its worker finishes it
        assert small.too_large
        small.add(_scored("b.png", 0.8))
        assert draws == ["a.png"]
        assert small.bytes() == b""
        with pytest.raises(RuntimeError, match="already written"):
            small.add(_scored("d.png", 0.8))


def test_overlay_zip_uses_the_same_archive():
    predictions = [_scored("a.png", 0.8), _failed("b.png")]
    with ThreadPoolExecutor(1) as pool:
        archive = _archive(pool)
        for prediction in predictions:
            archive.add(prediction)
        expected = archive.bytes()
    made = results.overlay_zip(
        iter(predictions), 0.5, 0.3, model_name="tiny", model_version="7", thresholds=THRESHOLDS
    )
    assert made == expected


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_overlay_encoders_yield_the_cores_to_the_network_and_the_page():
    def own_priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    server = os.getpriority(os.PRIO_PROCESS, 0)
    worker = results.overlay_pool().submit(own_priority).result()
    assert worker == min(19, server + results.OVERLAY_NICE)
