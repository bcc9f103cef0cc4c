"""The one verdict (fracture.inference.verdict): per image, and for a group of images."""

from __future__ import annotations

import pytest

from fracture.inference.verdict import (
    FRACTURE,
    METAL_CAUTION,
    NORMAL,
    NOT_ASSESSED,
    decide,
    study_verdict,
)


@pytest.mark.parametrize("probability", [0.0, 0.3, 0.5, 0.99])
def test_a_flagged_image_is_not_assessed_whatever_its_probability(probability):
    verdict = decide(probability, 0.5, in_distribution=False, metal=True)
    assert verdict.label == NOT_ASSESSED and not verdict.assessed
    assert verdict.finding is None and verdict.present is None
    assert "does not look like the bone radiographs" in verdict.reason
    assert verdict.words().startswith("not assessed: ")
    assert verdict.caution is None  # a caution qualifies a finding; there is none


def test_an_assessed_image_is_labelled_at_the_threshold_with_the_ge_rule():
    assert decide(0.5, 0.5, in_distribution=True).label == FRACTURE
    assert decide(0.4999, 0.5, in_distribution=None).label == NORMAL  # no gate: judged
    assert decide(0.7, 0.5, in_distribution=True).words() == "fracture suspected"
    assert decide(0.1, 0.5, in_distribution=True).words() == "no fracture found"
    assert decide(0.7, 0.5, in_distribution=True, metal=True).caution == METAL_CAUTION


def test_failed_and_class_only_verdicts():
    failed = decide(None, 0.5, in_distribution=None, scored=False, error="x.png: empty file")
    assert failed.label is None and failed.csv_label == "" and "empty file" in failed.words()
    classes = decide(None, None, in_distribution=True, top_class="transverse")
    assert classes.label == "transverse" and classes.assessed and classes.finding is None


def test_a_study_takes_its_finding_from_assessed_images_only():
    images = [
        decide(0.97, 0.5, in_distribution=False),  # a photo the model scored high
        decide(0.2, 0.5, in_distribution=True),
        decide(0.35, 0.5, in_distribution=True, metal=True),
        decide(None, 0.5, in_distribution=None, scored=False, error="broken"),
    ]
    study = study_verdict(images)
    assert study.verdict.label == NORMAL and study.verdict.probability == 0.35
    assert study.strongest == 2 and study.assessed == (1, 2)
    assert study.not_assessed == (0,) and study.failed == (3,)
    assert study.verdict.caution == METAL_CAUTION


def test_a_study_with_no_assessed_image_is_not_assessed():
    study = study_verdict([decide(0.9, 0.5, in_distribution=False)] * 2)
    assert study.verdict.label == NOT_ASSESSED and study.verdict.probability is None
    assert study.strongest is None and study.not_assessed == (0, 1)
    assert "2 do not look like the bone radiographs" in study.verdict.reason
    empty = study_verdict([])
    assert empty.verdict.label == NOT_ASSESSED


def test_equal_probabilities_keep_the_first_image():
    study = study_verdict([decide(0.6, 0.5, in_distribution=True)] * 3)
    assert study.strongest == 0 and study.verdict.label == FRACTURE
