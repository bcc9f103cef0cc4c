"""The localisation head's boxes in the DICOM results: one SCOORD per box in the SR, burned into the capture.

A tiny model with a random, centre-biased localiser (see ``with_random_localiser``) gives
boxes on every image; the operating point decides which images are labelled
fracture, and only those carry boxes anywhere.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pydicom
import pytest
from dicom_helpers import encoded, make_study

from conftest import with_random_localiser


@pytest.fixture(scope="module")
def located(tiny_model_dir, tmp_path_factory, fake_imagenet_weights):
    from fracture.inference.predictor import Predictor
    from fracture.model.folder import load_model

    directory, _ = with_random_localiser(tiny_model_dir, tmp_path_factory.mktemp("located"))
    predictor = Predictor(
        load_model(directory, fake_imagenet_weights), batch_size=2, precision="float32"
    )
    predictor.ood_gate = None  # judged below by the operating point alone
    return predictor


def _at_threshold(predictor, monkeypatch, threshold: float) -> None:
    """Every image labelled fracture (threshold 0, dotted boxes) or normal (threshold 1)."""
    config = dataclasses.replace(
        predictor.config,
        thresholds={"high_sensitivity": threshold, "high_specificity": 1.0},
        operating_point="high_sensitivity",
    )
    monkeypatch.setattr(predictor, "config", config)


def _capture(scored, number: int) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(encoded(scored.objects[number][1])))


def _yellow_share_on_left_edge(pixels: np.ndarray, region: tuple[int, int, int, int]) -> float:
    """The share of yellow pixels on the lower half of a box's left edge (below the banner)."""
    left, top, _, bottom = region
    edge = pixels[(top + bottom) // 2 : bottom + 1, left].astype(int)
    yellow = (edge[:, 0] > 200) & (edge[:, 1] > 200) & (edge[:, 2] < 90)
    return float(yellow.mean())


def test_every_drawn_box_is_a_scoord_with_its_score_and_is_burned_in(located, monkeypatch):
    from fracture.dicom.results import BOX_COLOUR, burn_overlay, pixel_boxes, read_report
    from fracture.dicom.scoring import capture_caption, score_instances

    assert BOX_COLOUR == (255, 255, 0)  # the edge test below looks for yellow
    _at_threshold(located, monkeypatch, 0.0)
    study = make_study(2, seed=4)
    predictions = located.predict([encoded(ds) for ds in study], with_cam=True)
    scored = score_instances(located, study, [encoded(ds) for ds in study])
    report = pydicom.dcmread(io.BytesIO(encoded(scored.objects[-1][1])))
    values = read_report(report)
    assert values["present"] is True
    expected = []
    for ds, prediction in zip(study, predictions):
        assert prediction.verdict().label == "fracture"  # everything, at threshold 0
        assert prediction.drawn_boxes == prediction.location_boxes
        for box in pixel_boxes(prediction.drawn_boxes, int(ds.Rows), int(ds.Columns)):
            expected.append((str(ds.SOPInstanceUID), box.region, box.score))
    assert expected, "the centre-biased head should find a box on at least one image"
    got = [(box["image"], box["region"], box["score"]) for box in values["boxes"]]
    assert [(uid, region) for uid, region, _ in got] == [(uid, r) for uid, r, _ in expected]
    assert [score for *_, score in got] == pytest.approx([s for *_, s in expected], abs=1e-6)
    for _, (left, top, right, bottom), _ in got:
        assert 0 <= left <= right < int(study[0].Columns) and 0 <= top <= bottom < int(
            study[0].Rows
        )

    # The capture shows the "where" map and the boxes, dotted as on the page.
    for number, prediction in enumerate(predictions):
        capture = _capture(scored, number).pixel_array
        finding = scored.finding.images[number]
        if not finding.boxes:
            continue
        assert prediction.box_style == "dotted"
        where = burn_overlay(
            prediction.image,
            prediction.location_image(),
            finding.region,
            capture_caption(finding, located.threshold),
            boxes=prediction.drawn_boxes,
            box_style=prediction.box_style,
        )
        np.testing.assert_array_equal(capture, where)
        grad_cam = burn_overlay(
            prediction.image,
            prediction.heatmap,
            finding.region,
            capture_caption(finding, located.threshold),
        )
        assert not np.array_equal(capture, grad_cam)
        # A dotted edge: partly yellow, partly not.
        share = _yellow_share_on_left_edge(capture, finding.boxes[0].region)
        assert 0.2 < share < 0.9, share


def test_an_image_labelled_normal_has_no_box_in_the_report_or_the_capture(located, monkeypatch):
    from fracture.dicom.results import read_report
    from fracture.dicom.scoring import score_instances

    _at_threshold(located, monkeypatch, 1.0)
    study = make_study(2, seed=4)
    scored = score_instances(located, study, [encoded(ds) for ds in study])
    values = read_report(scored.objects[-1][1])
    assert values["present"] is False and values["boxes"] == []
    assert all(image.boxes == () for image in scored.finding.images)
    assert "FRACBOX" not in str(scored.objects[-1][1])


def test_a_flagged_image_has_no_box_even_where_it_would_be_labelled_fracture(located, monkeypatch):
    from fracture.dicom.results import read_report
    from fracture.dicom.scoring import score_instances

    class FlagEverything:
        threshold = -1.0

        def score(self, features):
            return np.zeros(len(next(iter(features.values()))))

    _at_threshold(located, monkeypatch, 0.0)
    monkeypatch.setattr(located, "ood_gate", FlagEverything())
    study = make_study(2, seed=4)
    scored = score_instances(located, study, [encoded(ds) for ds in study])
    values = read_report(scored.objects[-1][1])
    assert values["assessed"] is False and "present" not in values
    assert values["boxes"] == []
    assert all(image.boxes == () for image in scored.finding.images)
    assert "NOT ASSESSED" in str(_capture(scored, 0).ImageComments)
