"""One verdict for every output: fracture, normal, or not assessed (and why).

Every place that turns a score into words (the Predict page, both CSVs, the ZIP
of overlays, the DICOM Secondary Capture and Structured Report, the Inbox and
the DICOMweb route) asks :func:`decide` for an image and :func:`study_verdict`
for a group of images. One rule, one place: an image the out-of-distribution
gate flags gets **no** fracture or normal label anywhere, because the model
cannot judge it (a cat photo is not "no fracture"), and a study's finding comes
only from the images the model could judge.

Numpy-free and Streamlit-free, so the inference layer, the views and the DICOM
code all import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "FRACTURE",
    "NORMAL",
    "NOT_ASSESSED",
    "METAL_CAUTION",
    "OUT_OF_DISTRIBUTION_REASON",
    "RESEARCH_BANNER",
    "StudyVerdict",
    "Verdict",
    "decide",
    "study_verdict",
]

FRACTURE, NORMAL = "fracture", "normal"
# The machine-readable label of an image or study the model cannot judge (CSV value).
NOT_ASSESSED = "not_assessed"
# Why an image flagged by the out-of-distribution gate is not assessed, in plain words.
OUT_OF_DISTRIBUTION_REASON = (
    "the image does not look like the bone radiographs the model was trained on"
)
# The first line of every picture that leaves the program (ZIP overlays, DICOM captures).
RESEARCH_BANNER = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
# Said wherever the hardware head sees orthopaedic metal: plates and screws are the
# shortcut a fracture model learns first (the card's "hardware-free AUROC").
METAL_CAUTION = "metal implant visible: the score may reflect the implant"


@dataclass(frozen=True)
class Verdict:
    """What the model says about one image (or one study), in one form every output reads.

    ``label`` is :data:`FRACTURE` or :data:`NORMAL` at ``threshold``, the top class of a
    K-class model without a normal class, :data:`NOT_ASSESSED` when the model cannot
    judge the input, or None when it could not be scored at all. ``reason`` says why
    there is no finding; ``caution`` qualifies a finding (the metal warning).
    """

    label: str | None
    probability: float | None = None
    threshold: float | None = None
    reason: str | None = None
    caution: str | None = None

    @property
    def assessed(self) -> bool:
        """Whether the model judged the input (it has a label that is a statement)."""
        return self.label is not None and self.label != NOT_ASSESSED

    @property
    def finding(self) -> str | None:
        """:data:`FRACTURE` or :data:`NORMAL`, or None (not assessed, failed, class only)."""
        return self.label if self.label in (FRACTURE, NORMAL) else None

    @property
    def present(self) -> bool | None:
        """True for a fracture finding, False for a normal one, None without a finding."""
        finding = self.finding
        return None if finding is None else finding == FRACTURE

    @property
    def csv_label(self) -> str:
        """The CSV's ``prediction`` value: the label, ``not_assessed``, or empty on failure."""
        return self.label or ""

    def words(self) -> str:
        """The verdict as a person reads it: "fracture suspected", "not assessed: <why>", ..."""
        if self.label is None:
            return "could not be read" + (f": {self.reason}" if self.reason else "")
        if self.label == NOT_ASSESSED:
            return "not assessed" + (f": {self.reason}" if self.reason else "")
        if self.label == FRACTURE:
            return "fracture suspected"
        if self.label == NORMAL:
            return "no fracture found"
        return self.label


def decide(
    probability: float | None,
    threshold: float | None,
    *,
    in_distribution: bool | None,
    scored: bool = True,
    error: str | None = None,
    top_class: str | None = None,
    metal: bool | None = None,
) -> Verdict:
    """The verdict for one image.

    - not ``scored``: no label, ``error`` is the reason;
    - ``in_distribution`` False (the OOD gate flagged it): :data:`NOT_ASSESSED` with the
      reason, whatever the probability says; None means the model has no gate;
    - a probability and a threshold: :data:`FRACTURE` when ``probability >= threshold``
      (the rule the operating points were fitted with), else :data:`NORMAL`;
    - a K-class model without a normal class (no fracture probability): its ``top_class``.

    ``metal`` (the hardware head fired) adds :data:`METAL_CAUTION` to an assessed verdict.
    """
    if not scored:
        return Verdict(None, None, threshold, reason=error)
    if in_distribution is False:
        return Verdict(NOT_ASSESSED, probability, threshold, reason=OUT_OF_DISTRIBUTION_REASON)
    caution = METAL_CAUTION if metal else None
    if probability is not None and threshold is not None:
        label = FRACTURE if probability >= threshold else NORMAL
        return Verdict(label, probability, threshold, caution=caution)
    if top_class is not None:
        return Verdict(top_class, probability, threshold, caution=caution)
    return Verdict(None, probability, threshold, reason=error or "no score")


@dataclass(frozen=True)
class StudyVerdict:
    """A group of images judged together (a DICOM study, a patient's upload).

    ``verdict`` is decided by the most suspicious **assessed** image (``strongest``, an
    index into the images given): a study is as suspicious as its most suspicious view
    the model could judge. Images the model could not judge are listed in
    ``not_assessed`` and never raise nor lower the study's probability; with no assessed
    image the study itself is not assessed.
    """

    verdict: Verdict
    strongest: int | None
    assessed: tuple[int, ...]
    not_assessed: tuple[int, ...]
    failed: tuple[int, ...]


def study_verdict(images: Sequence[Verdict]) -> StudyVerdict:
    """The verdict of a group of images from their per-image verdicts (see :class:`StudyVerdict`)."""
    assessed = tuple(
        i for i, image in enumerate(images) if image.assessed and image.probability is not None
    )
    flagged = tuple(i for i, image in enumerate(images) if image.label == NOT_ASSESSED)
    failed = tuple(i for i, image in enumerate(images) if image.label is None)
    threshold = next((image.threshold for image in images if image.threshold is not None), None)
    if not assessed:
        parts = []
        if flagged:
            verb = "does" if len(flagged) == 1 else "do"
            parts.append(
                f"{len(flagged)} {verb} not look like the bone radiographs the model was trained on"
            )
        if failed:
            parts.append(f"{len(failed)} could not be read")
        reason = f"none of its {len(images)} image(s) could be assessed" + (
            f": {'; '.join(parts)}" if parts else ""
        )
        return StudyVerdict(
            Verdict(NOT_ASSESSED, None, threshold, reason), None, (), flagged, failed
        )
    strongest = max(assessed, key=lambda i: (images[i].probability, -i))
    best = images[strongest]
    return StudyVerdict(best, strongest, assessed, flagged, failed)
