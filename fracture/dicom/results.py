"""DICOM result objects: a Secondary Capture per image, a Structured Report per study.

A PACS files results by the patient and study attributes they carry, so both
objects copy them from the source images (highdicom does this from the
reference data set) and join the source study in new series. Result UIDs are
derived from the source UIDs and the model version: scoring the same images
again, after a crash for instance, yields the same instances, which a PACS
stores once, never twice.

The Structured Report is a Comprehensive SR (PS3.3 A.35.3) with one finding
(fracture present or absent at the model's operating point), the calibrated
probability, the out-of-distribution flag, the algorithm's name and version
(DCM 111001/111003) and the region of strongest evidence as a spatial
coordinate on the image it came from. A model with a localisation head adds every
box it draws (only on an image labelled fracture) as one SCOORD per box, in the
source image's pixel coordinates, under a NUM item with the box's score. The finding is the one verdict
(:mod:`fracture.inference.verdict`): the study probability is the maximum over
the images the model could **assess** (a study is as suspicious as its most
suspicious view the model can judge); images the out-of-distribution gate
flagged get no finding, no probability, and are listed as not assessed with the
reason. A study with no assessed image carries no Present/Absent code at all:
its title says "NOT ASSESSED", a TEXT item says why, and the SR is marked
PARTIAL (Completion Flag) and UNVERIFIED, which is what a PACS viewer shows.
Codes without a standard equivalent use the private scheme ``99FRACTURE``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from fracture.inference.gradcam import draw_scored_boxes, overlay_heatmap, strongest_region
from fracture.inference.localisation import Box
from fracture.inference.verdict import (
    RESEARCH_BANNER,
    StudyVerdict,
    Verdict,
    decide,
    study_verdict,
)

__all__ = [
    "BANNER",
    "SC_SERIES_NUMBER",
    "SR_SERIES_NUMBER",
    "ImageFinding",
    "PixelBox",
    "StudyFinding",
    "burn_overlay",
    "complete_header",
    "evidence_region",
    "pixel_boxes",
    "read_report",
    "result_uid",
    "secondary_capture",
    "structured_report",
    "study_key",
]

# --------------------------------------------------------------------------- parameters

BANNER = RESEARCH_BANNER
MANUFACTURER = "fracture (open-source research software)"
# High series numbers keep the results after the acquisition series in a viewer.
SC_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902
HEATMAP_ALPHA = 0.4
BOX_COLOUR = (255, 255, 0)  # yellow reads on both the grey image and the JET colours

_SCHEME = "99FRACTURE"
REPORT_TITLE = CodedConcept("18748-4", "LN", "Diagnostic imaging report")
# The title of a report without a finding: a viewer lists documents by their title,
# so "not assessed" is the first thing anyone sees, not a negative finding.
NOT_ASSESSED_TITLE = CodedConcept(
    "FRACRPTNA", "99FRACTURE", "Fracture model result: NOT ASSESSED (no finding)"
)
FRACTURE = CodedConcept("72704001", "SCT", "Fracture")
PRESENT = CodedConcept("52101004", "SCT", "Present")
ABSENT = CodedConcept("2667000", "SCT", "Absent")
YES = CodedConcept("373066001", "SCT", "Yes")
NO = CodedConcept("373067005", "SCT", "No")
ALGORITHM_NAME = CodedConcept("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = CodedConcept("111003", "DCM", "Algorithm Version")
SOURCE_IMAGE = CodedConcept("121112", "DCM", "Source of Measurement")
PROBABILITY = CodedConcept("FRACPROB", _SCHEME, "Fracture probability")
OPERATING_POINT = CodedConcept("FRACTHR", _SCHEME, "Operating point (probability threshold)")
OUT_OF_DISTRIBUTION = CodedConcept("FRACOOD", _SCHEME, "Outside the model's training data")
EVIDENCE_REGION = CodedConcept("FRACROI", _SCHEME, "Region of strongest evidence")
FRACTURE_BOX = CodedConcept("FRACBOX", _SCHEME, "Fracture box found by the localisation head")
BOX_SCORE = CodedConcept("FRACBOXS", _SCHEME, "Fracture box score")
IMAGE_RESULT = CodedConcept("FRACIMG", _SCHEME, "Image result")
BODY_REGION = CodedConcept("FRACREG", _SCHEME, "Body region named by the model")
DISCLAIMER = CodedConcept("FRACNOTE", _SCHEME, "Disclaimer")
NOT_ASSESSED = CodedConcept("FRACNA", _SCHEME, "Not assessed by the model")
CAUTION = CodedConcept("FRACCAUT", _SCHEME, "Caution")
UNITY = CodedConcept("1", "UCUM", "no units")
DISCLAIMER_TEXT = (
    "Research use only, not for diagnosis. Produced automatically by the fracture research "
    "model; it has not been cleared as a medical device and must not guide patient care."
)


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class PixelBox:
    """A box the localisation head drew, in the source image's pixels, with its score.

    ``left``, ``top``, ``right``, ``bottom`` are inclusive pixel indexes, as
    :attr:`ImageFinding.region`; ``score`` is the head's centre probability in [0, 1].
    """

    left: int
    top: int
    right: int
    bottom: int
    score: float

    @property
    def region(self) -> tuple[int, int, int, int]:
        return (self.left, self.top, self.right, self.bottom)


def pixel_boxes(boxes: Sequence[Box], height: int, width: int) -> tuple[PixelBox, ...]:
    """Normalised boxes (the image's frame) as inclusive pixel boxes of a ``height`` x ``width`` image."""
    out = []
    for box in boxes:
        left, top = round(box.x0 * width), round(box.y0 * height)
        right = max(left, round(box.x1 * width) - 1)
        bottom = max(top, round(box.y1 * height) - 1)
        out.append(PixelBox(left, top, right, bottom, float(box.score)))
    return tuple(out)


@dataclass(frozen=True)
class ImageFinding:
    """The model's result for one source image, with its one verdict."""

    sop_class_uid: str
    sop_instance_uid: str
    probability: float
    in_distribution: bool | None
    region: tuple[int, int, int, int] | None  # (left, top, right, bottom) pixels, inclusive
    # The body region the model's region head names (plain words), when it names one.
    body_region: str | None = None
    # fracture.inference.verdict.decide's result for this image; its threshold is the study's.
    verdict: Verdict | None = None
    # The localisation head's drawn boxes (Prediction.drawn_boxes), best first: empty for a
    # model without the head and for any image not labelled fracture.
    boxes: tuple[PixelBox, ...] = ()

    @property
    def assessed(self) -> bool:
        if self.verdict is not None:
            return self.verdict.assessed
        return self.in_distribution is not False


@dataclass(frozen=True)
class StudyFinding:
    """The model's result for one study: its most suspicious **assessed** image decides."""

    images: tuple[ImageFinding, ...]
    threshold: float
    model_name: str
    model_version: str

    @property
    def decision(self) -> StudyVerdict:
        """The study's verdict (:func:`fracture.inference.verdict.study_verdict`)."""
        return study_verdict([self.image_verdict(image) for image in self.images])

    def image_verdict(self, image: ImageFinding) -> Verdict:
        """``image``'s verdict (made at scoring time, else decided here at the study's threshold)."""
        return image.verdict or decide(
            image.probability, self.threshold, in_distribution=image.in_distribution
        )

    @property
    def assessed(self) -> bool:
        return self.decision.verdict.assessed

    @property
    def strongest(self) -> ImageFinding | None:
        """The assessed image with the highest probability; None when none was assessed."""
        index = self.decision.strongest
        return None if index is None else self.images[index]

    @property
    def probability(self) -> float | None:
        strongest = self.strongest
        return None if strongest is None else strongest.probability

    @property
    def present(self) -> bool | None:
        """True/False for a finding, None for a study the model could not assess."""
        return self.decision.verdict.present

    @property
    def not_assessed_images(self) -> tuple[ImageFinding, ...]:
        return tuple(self.images[i] for i in self.decision.not_assessed)

    @property
    def out_of_distribution(self) -> bool:
        return any(image.in_distribution is False for image in self.images)


def evidence_region(heatmap: np.ndarray) -> tuple[int, int, int, int] | None:
    """The app's strongest-region box, in pixels (left, top, right, bottom, inclusive), or None.

    The same region the Predict page draws
    (:func:`fracture.inference.gradcam.strongest_region`): the connected area around the
    peak above half the peak, so a second, weaker hot spot does not stretch the box; None
    for a map too faint to point anywhere.
    """
    heat = np.asarray(heatmap, np.float32)
    box = strongest_region(heat) if heat.size else None
    if box is None:
        return None
    height, width = heat.shape
    return (
        round(box[0] * width),
        round(box[1] * height),
        round(box[2] * width) - 1,
        round(box[3] * height) - 1,
    )


def burn_overlay(
    image: np.ndarray,
    heatmap: np.ndarray | None,
    region: tuple[int, int, int, int] | None,
    caption: str,
    *,
    boxes: Sequence[Box] = (),
    box_style: str | None = None,
) -> np.ndarray:
    """The radiograph with heat map, boxes, the research banner and ``caption`` burned in.

    ``boxes`` (the localisation head's, normalised, with scores) are drawn in
    ``box_style`` as on the Predict page and replace the single evidence ``region``.
    """
    picture = (
        overlay_heatmap(image, heatmap, HEATMAP_ALPHA) if heatmap is not None else image.copy()
    )
    height, width = picture.shape[:2]
    thickness = max(1, round(min(height, width) / 250))
    if boxes and box_style:
        picture = draw_scored_boxes(picture, boxes, box_style, BOX_COLOUR)
    elif region is not None:
        left, top, right, bottom = region
        cv2.rectangle(picture, (left, top), (right, bottom), BOX_COLOUR, thickness)
    # The banner spans the top of the image on a black band, sized to the width,
    # so it stays legible on a thumbnail and on a 4000-pixel detector image.
    lines = [BANNER, caption]
    scale = _font_scale_for(max(lines, key=len), width * 0.94)
    line_height = int(cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][1] * 1.8) + 2
    band = min(height, line_height * len(lines) + line_height // 2)
    picture[:band] = (picture[:band] * 0.15).astype(np.uint8)
    for index, text in enumerate(lines):
        y = line_height * (index + 1)
        colour = (255, 255, 255) if index else (255, 64, 64)
        cv2.putText(
            picture,
            text,
            (max(2, width // 50), y),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            colour,
            max(1, thickness),
            cv2.LINE_AA,
        )
    return picture


def _font_scale_for(text: str, width: float) -> float:
    unit = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)[0][0]
    return max(0.25, min(3.0, width / max(unit, 1)))


# --------------------------------------------------------------------------- DICOM objects


# Type 2 attributes of the patient and study modules that the results copy from their
# source (PS3.3 C.7.1.1, C.7.2.1): DICOM lets them be present and empty, and
# anonymised files often drop them altogether.
TYPE_2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def complete_header(source: Dataset) -> Dataset:
    """``source`` with every missing type 2 attribute the results copy present and empty.

    A shallow copy: the source data set is not changed. Without this a file lacking
    PatientBirthDate, for example, stops highdicom from building either result object.
    """
    missing = [keyword for keyword in TYPE_2_COPIED if keyword not in source]
    if not missing:
        return source
    completed = Dataset(dict(source.items()))  # a new element mapping, the same elements
    if hasattr(source, "file_meta"):
        completed.file_meta = source.file_meta
    for keyword in missing:
        setattr(completed, keyword, None)
    return completed


def result_uid(*parts: str) -> str:
    """A UID derived from ``parts``: the same inputs always give the same result instance."""
    return generate_uid(entropy_srcs=[str(part) for part in parts])


def study_key(study_uid: str) -> str:
    """A short, non-identifying name for a study in logs and folder names."""
    return hashlib.sha256(study_uid.encode("utf-8")).hexdigest()[:16]


def secondary_capture(
    source: Dataset,
    pixels: np.ndarray,
    finding: ImageFinding,
    *,
    model_version: str,
    instance_number: int,
    caption: str | None = None,
) -> Dataset:
    """A Secondary Capture of ``pixels`` (RGB uint8) in a new series of the source's study.

    ``caption`` (the result burned into the pixels) is repeated in Image Comments,
    where a viewer shows it as text and software can read it.
    """
    source = complete_header(source)
    orientation = source.get("PatientOrientation")
    known = orientation is not None and len(orientation) == 2 and all(orientation)
    study_uid = str(source.StudyInstanceUID)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(pixels, dtype=np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=result_uid(study_uid, model_version, "sc-series"),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=result_uid(finding.sop_instance_uid, model_version, "sc"),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=tuple(orientation) if known else ("L", "F"),
        laterality=source.get("Laterality") or None,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    if not known:
        sc.PatientOrientation = []  # Type 2: unknown is empty, never a guess
    sc.SeriesDescription = "fracture heat map (research use only)"
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = DISCLAIMER_TEXT + (f" Result: {caption}" if caption else "")
    sc.DerivationDescription = (
        "Heat map of the fracture model (its localisation map where it has one, else "
        "Grad-CAM) with its boxes and their scores"
    )
    reference = Dataset()
    reference.ReferencedSOPClassUID = finding.sop_class_uid
    reference.ReferencedSOPInstanceUID = finding.sop_instance_uid
    sc.SourceImageSequence = [reference]
    return sc


def structured_report(
    sources: Sequence[Dataset],
    finding: StudyFinding,
) -> Dataset:
    """A Comprehensive SR with the study's finding, in a new series of the source study.

    With no assessed image there is no Present/Absent code and no probability: the title,
    a TEXT item and the Completion Flag (PARTIAL) say the study was not assessed, and why.
    Images not assessed are listed with the reason, never with a probability.
    """
    sources = [complete_header(source) for source in sources]
    study_uid = str(sources[0].StudyInstanceUID)
    decision = finding.decision
    strongest = finding.strongest
    items: list[Any] = [
        _text(DISCLAIMER, DISCLAIMER_TEXT),
        _text(ALGORITHM_NAME, finding.model_name),
        _text(ALGORITHM_VERSION, finding.model_version),
    ]
    if strongest is None:
        items.append(_text(NOT_ASSESSED, _sentence(decision.verdict.reason)))
    else:
        items += [
            _code(FRACTURE, PRESENT if finding.present else ABSENT),
            _num(PROBABILITY, strongest.probability, _image_ref(strongest)),
        ]
        if decision.verdict.caution:
            items.append(_text(CAUTION, decision.verdict.caution))
    items += [
        _num(OPERATING_POINT, finding.threshold),
        _code(OUT_OF_DISTRIBUTION, YES if finding.out_of_distribution else NO),
    ]
    if strongest is not None and strongest.body_region is not None:
        items.append(_text(BODY_REGION, strongest.body_region))
    if strongest is not None and strongest.region is not None:
        items.append(_region_on(strongest, strongest.region, EVIDENCE_REGION, "CONTAINS"))
    for image in finding.images:
        container = hd.sr.ContainerContentItem(name=IMAGE_RESULT, relationship_type="CONTAINS")
        children: list[Any]
        if image.assessed:
            children = [_num(PROBABILITY, image.probability, _image_ref(image))]
        else:
            reason = image.verdict.reason if image.verdict is not None else None
            note = _text(NOT_ASSESSED, _sentence(reason))
            note.ContentSequence = hd.sr.ContentSequence([_image_ref(image)], is_root=False)
            children = [note]
        if image.in_distribution is not None:
            children.append(_code(OUT_OF_DISTRIBUTION, NO if image.in_distribution else YES))
        if image.assessed and image.verdict is not None and image.verdict.caution:
            children.append(_text(CAUTION, image.verdict.caution))
        if image.assessed and image.body_region is not None:
            children.append(_text(BODY_REGION, image.body_region))
        if image.assessed:
            children += [_box_score(image, box) for box in image.boxes]
        container.ContentSequence = hd.sr.ContentSequence(children, is_root=False)
        items.append(container)
    root = hd.sr.ContainerContentItem(
        name=REPORT_TITLE if strongest is not None else NOT_ASSESSED_TITLE
    )
    root.ContentSequence = hd.sr.ContentSequence(items, is_root=False)
    sop_uids = sorted(image.sop_instance_uid for image in finding.images)
    # COMPLETE only when the model judged every image; a machine never verifies.
    every_image = not decision.not_assessed and not decision.failed
    sr = hd.sr.ComprehensiveSR(
        evidence=list(sources),
        content=root,
        series_instance_uid=result_uid(study_uid, finding.model_version, "sr-series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=result_uid(*sop_uids, finding.model_version, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=every_image,
        is_verified=False,
    )
    if strongest is None:
        sr.SeriesDescription = "fracture result: NOT ASSESSED (research use only)"
        sr.CompletionFlagDescription = "not assessed: no image the model can judge"
    else:
        sr.SeriesDescription = "fracture result (research use only)"
        if not every_image:
            sr.CompletionFlagDescription = (
                f"{len(decision.not_assessed)} of {len(finding.images)} images not assessed"
            )[:64]
    return sr


def read_report(sr: Dataset) -> dict[str, Any]:
    """The study-level values of a report made by :func:`structured_report`.

    ``assessed`` is False (and ``present`` absent) for a study the model could not judge;
    ``not_assessed_images`` lists the SOP Instance UIDs of the images it did not assess;
    ``boxes`` lists every drawn box as a dict: ``image`` (SOP Instance UID), ``region``
    (left, top, right, bottom inclusive pixels) and ``score``.
    """
    title = sr.ConceptNameCodeSequence[0]
    values: dict[str, Any] = {
        "title": str(title.CodeMeaning),
        "assessed": str(title.CodeValue) != NOT_ASSESSED_TITLE.value,
        "not_assessed_images": [],
        "boxes": [],
        "completion": str(sr.get("CompletionFlag", "")),
        "verification": str(sr.get("VerificationFlag", "")),
    }
    for item in sr.ContentSequence:
        concept = item.ConceptNameCodeSequence[0]
        key = (concept.CodeValue, concept.CodingSchemeDesignator)
        if key == (PROBABILITY.value, _SCHEME):
            values["probability"] = float(item.MeasuredValueSequence[0].NumericValue)
            image = item.ContentSequence[0].ReferencedSOPSequence[0]
            values["strongest_image"] = str(image.ReferencedSOPInstanceUID)
        elif key == (OPERATING_POINT.value, _SCHEME):
            values["threshold"] = float(item.MeasuredValueSequence[0].NumericValue)
        elif key == (FRACTURE.value, "SCT"):
            values["present"] = item.ConceptCodeSequence[0].CodeValue == PRESENT.value
        elif key == (OUT_OF_DISTRIBUTION.value, _SCHEME):
            values["out_of_distribution"] = item.ConceptCodeSequence[0].CodeValue == YES.value
        elif key == (ALGORITHM_NAME.value, "DCM"):
            values["model_name"] = str(item.TextValue)
        elif key == (ALGORITHM_VERSION.value, "DCM"):
            values["model_version"] = str(item.TextValue)
        elif key == (BODY_REGION.value, _SCHEME):
            values["body_region"] = str(item.TextValue)
        elif key == (EVIDENCE_REGION.value, _SCHEME):
            points = np.asarray(item.GraphicData, np.float32).reshape(-1, 2)
            values["region"] = tuple(int(v) for v in (*points.min(0), *points.max(0)))
        elif key == (NOT_ASSESSED.value, _SCHEME):
            values["not_assessed"] = str(item.TextValue)
        elif key == (CAUTION.value, _SCHEME):
            values["caution"] = str(item.TextValue)
        elif key == (IMAGE_RESULT.value, _SCHEME):
            for child in item.ContentSequence:
                code = child.ConceptNameCodeSequence[0]
                code_key = (code.CodeValue, code.CodingSchemeDesignator)
                if code_key == (NOT_ASSESSED.value, _SCHEME):
                    image = child.ContentSequence[0].ReferencedSOPSequence[0]
                    values["not_assessed_images"].append(str(image.ReferencedSOPInstanceUID))
                elif code_key == (BOX_SCORE.value, _SCHEME):
                    values["boxes"].append(_read_box(child))
    return values


def _read_box(item: Dataset) -> dict[str, Any]:
    """A box written by :func:`_box_score`, read back."""
    scoord = item.ContentSequence[0]
    points = np.asarray(scoord.GraphicData, np.float32).reshape(-1, 2)
    left, top = points.min(0)
    right, bottom = points.max(0)
    image = scoord.ContentSequence[0].ReferencedSOPSequence[0]
    return {
        "image": str(image.ReferencedSOPInstanceUID),
        "region": (int(left), int(top), int(right) - 1, int(bottom) - 1),
        "score": float(item.MeasuredValueSequence[0].NumericValue),
    }


def _corners(region: tuple[int, int, int, int]) -> np.ndarray:
    """A closed polyline around inclusive pixel bounds (PS3.3 C.18.6: column, row; pixel
    centres at integer + 0.5 with the top-left corner at 0)."""
    left, top, right, bottom = region
    return np.array(
        [
            [left, top],
            [right + 1, top],
            [right + 1, bottom + 1],
            [left, bottom + 1],
            [left, top],
        ],
        dtype=np.float32,
    )


def _box_score(image: ImageFinding, box: PixelBox) -> hd.sr.NumContentItem:
    """One drawn box: its score (NUM), inferred from the box (SCOORD) on the source image.

    NUM -INFERRED FROM-> SCOORD -SELECTED FROM-> IMAGE is the measurement pattern of
    TID 1419, which the Comprehensive SR's relationship constraints allow.
    """
    scoord = _region_on(image, box.region, FRACTURE_BOX, "INFERRED FROM")
    return _num(BOX_SCORE, box.score, scoord)


def _sentence(reason: str | None) -> str:
    """A reason as the value of "Not assessed by the model": its concept name already says it."""
    if not reason:
        return "No reason recorded"
    return reason[0].upper() + reason[1:]


def _text(name: CodedConcept, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type="CONTAINS")


def _code(name: CodedConcept, value: CodedConcept) -> hd.sr.CodeContentItem:
    return hd.sr.CodeContentItem(name=name, value=value, relationship_type="CONTAINS")


def _num(name: CodedConcept, value: float, source: Any = None) -> hd.sr.NumContentItem:
    item = hd.sr.NumContentItem(
        name=name, value=round(float(value), 6), unit=UNITY, relationship_type="CONTAINS"
    )
    if source is not None:
        item.ContentSequence = hd.sr.ContentSequence([source], is_root=False)
    return item


def _region_on(
    image: ImageFinding, region: Any, name: Any, relationship: str
) -> hd.sr.ScoordContentItem:
    """A rectangle (a closed POLYLINE in the image's pixels) selected from ``image``."""
    scoord = hd.sr.ScoordContentItem(
        name=name,
        graphic_type="POLYLINE",
        graphic_data=_corners(region),
        relationship_type=relationship,
    )
    scoord.ContentSequence = hd.sr.ContentSequence(
        [_image_ref(image, "SELECTED FROM")], is_root=False
    )
    return scoord


def _image_ref(image: ImageFinding, relationship: str = "INFERRED FROM") -> hd.sr.ImageContentItem:
    return hd.sr.ImageContentItem(
        name=SOURCE_IMAGE,
        referenced_sop_class_uid=image.sop_class_uid,
        referenced_sop_instance_uid=image.sop_instance_uid,
        relationship_type=relationship,
    )
