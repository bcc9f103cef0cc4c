"""Score the images of one study and build its DICOM results; shared by the node and DICOMweb."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from fracture.data.records import region_words
from fracture.dicom.results import (
    ImageFinding,
    StudyFinding,
    burn_overlay,
    evidence_region,
    pixel_boxes,
    secondary_capture,
    structured_report,
)
from fracture.inference.prediction import Prediction
from fracture.inference.predictor import Predictor
from fracture.inference.verdict import decide

__all__ = ["SR_FILE", "ScoredStudy", "capture_caption", "score_instances", "summary_images"]

log = logging.getLogger(__name__)

SR_FILE = "sr.dcm"


@dataclass
class ScoredStudy:
    """The results of one scoring round: what to send, and what to show."""

    finding: StudyFinding | None  # None when no image could be scored
    objects: list[tuple[str, Dataset]] = field(default_factory=list)  # (file name, data set)
    sources: list[Dataset] = field(default_factory=list)  # headers of the scored images
    failed: list[int] = field(default_factory=list)  # indexes of images that could not be scored
    errors: list[str] = field(default_factory=list)


def score_instances(
    predictor: Predictor,
    headers: Sequence[Dataset],
    sources: Sequence[str | os.PathLike[str] | bytes],
    *,
    log_name: str = "study",
) -> ScoredStudy:
    """Score every image of a study; ``headers[i]`` describes ``sources[i]`` (path or bytes)."""
    predictions = predictor.predict(
        list(sources), with_cam=True, names=[f"image {i + 1}" for i in range(len(sources))]
    )
    scored = ScoredStudy(finding=None)
    findings: list[ImageFinding] = []
    pictures: list[np.ndarray] = []
    for index, (header, prediction) in enumerate(zip(headers, predictions)):
        if not prediction.ok or prediction.image is None or prediction.probability is None:
            log.warning("%s: an image could not be scored: %s", log_name, prediction.error)
            scored.failed.append(index)
            scored.errors.append(str(prediction.error))
            continue
        finding = ImageFinding(
            sop_class_uid=str(header.SOPClassUID),
            sop_instance_uid=str(header.SOPInstanceUID),
            probability=float(prediction.probability),
            in_distribution=prediction.in_distribution,
            region=None if prediction.heatmap is None else evidence_region(prediction.heatmap),
            body_region=None
            if prediction.body_region is None
            else region_words(prediction.body_region),
            verdict=prediction.verdict(predictor.threshold),
            # Only where the image is labelled fracture (Prediction.drawn_boxes).
            # In the source image's pixels, whatever size the prediction kept its copy at.
            boxes=pixel_boxes(prediction.drawn_boxes, *_source_size(prediction)),
        )
        if not finding.assessed:
            # No evidence box on an image the model cannot judge: a box reads as a finding.
            finding = dataclasses.replace(finding, region=None, body_region=None, boxes=())
        findings.append(finding)
        scored.sources.append(header)
        pictures.append(_picture(prediction, finding, predictor.threshold))
    if not findings:
        return scored
    config = predictor.config
    scored.finding = StudyFinding(
        tuple(findings), predictor.threshold, str(config.name), str(config.version)
    )
    for number, (header, picture, finding) in enumerate(
        zip(scored.sources, pictures, findings), start=1
    ):
        sc = secondary_capture(
            header,
            picture,
            finding,
            model_version=str(config.version),
            instance_number=number,
            caption=capture_caption(finding, predictor.threshold),
        )
        scored.objects.append((f"sc-{number:04d}.dcm", sc))
    scored.objects.append((SR_FILE, structured_report(scored.sources, scored.finding)))
    return scored


def _source_size(prediction: Prediction) -> tuple[int, int]:
    """(height, width) of the image as received: the geometry's, else the kept image's."""
    if prediction.geometry is not None:
        return prediction.geometry.original_height, prediction.geometry.original_width
    if prediction.image is None:
        raise ValueError(f"{prediction.source}: a scored image keeps its geometry or its pixels")
    return prediction.image.shape[0], prediction.image.shape[1]


def _picture(prediction: Prediction, finding: ImageFinding, threshold: float) -> np.ndarray:
    """The capture's pixels: the default map ("where" with a localisation head, else the
    Grad-CAM) and the drawn boxes with their scores, as on the Predict page."""
    assert prediction.image is not None
    boxes = prediction.drawn_boxes if finding.boxes else []
    return burn_overlay(
        prediction.image,
        prediction.default_map(),
        finding.region,
        capture_caption(finding, threshold),
        boxes=boxes,
        box_style=prediction.box_style if boxes else None,
    )


def capture_caption(finding: ImageFinding, threshold: float) -> str:
    """The line burned into a Secondary Capture under the banner: the one verdict, in words.

    An image the model cannot judge says so and why, with no probability and no label.
    """
    verdict = finding.verdict or decide(
        finding.probability, threshold, in_distribution=finding.in_distribution
    )
    if not verdict.assessed:
        return f"NOT ASSESSED: {verdict.reason}"
    caption = f"{verdict.words()}: probability {finding.probability:.2f}"
    if finding.body_region is not None:
        caption += f" ({finding.body_region})"
    if verdict.caution:
        caption += f" - {verdict.caution.upper()}"
    return caption


def summary_images(scored: ScoredStudy) -> list[dict[str, Any]]:
    """Per-image rows of a round's summary (the node's ``summary.json``)."""
    assert scored.finding is not None
    return [
        {
            "sop_instance_uid": image.sop_instance_uid,
            # A probability only where the model judged the image.
            "probability": image.probability if image.assessed else None,
            "assessed": image.assessed,
            "verdict": scored.finding.image_verdict(image).words(),
            "in_distribution": image.in_distribution,
            "region": image.region,
            "body_region": image.body_region,
            "secondary_capture": name,
        }
        for (name, _), image in zip(scored.objects, scored.finding.images)
    ]
