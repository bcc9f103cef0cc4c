"""Reports to keep or share: one image as PDF or PNG, or a whole batch as one PDF.

A result that leaves the dashboard must carry what it needs to be read
honestly: the image with its map and the boxes, the probability with the
label *and* the operating point that made the label, the body region, the
model's name and version, the date, and the disclaimer. The PDF is for a file
or a printer, the PNG for a chat tool, where a PDF does not preview.

PDFs are made with fpdf2 (a maintained library, not hand-written PDF) in its
core Helvetica, whose Latin-1 alphabet the text is reduced to. Boxes are a
list, each with an optional score and label: a localisation head's boxes at the
operating point of the report, each with its score, over the head's "Where" map;
for a model without the head, the strongest region of the Grad-CAM map
(:func:`boxes_of`, :mod:`fracture.views.overlays`).
"""

from __future__ import annotations

import io
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import cv2
import numpy as np

from fracture.inference.gradcam import overlay_heatmap
from fracture.inference.prediction import Prediction
from fracture.views.display import fit_for_display, jpeg
from fracture.views.overlays import (
    VIEW_NAMES,
    WHY,
    MarkedBox,
    boxes_at,
    draw_boxes,
    map_for,
    map_unit,
    views_of,
)
from fracture.views.results import (
    NOT_ASSESSED,
    NOT_ASSESSED_REASON,
    body_region_text,
    format_probability,
    format_threshold,
    overlay_member_name,
    verdict,
    with_colour_bar,
)

__all__ = [
    "DISCLAIMER",
    "ImageReport",
    "PNG_MIN_WIDTH",
    "ReportBox",
    "ReportHeader",
    "batch_pdf",
    "boxes_of",
    "image_report",
    "report_image",
    "report_lines",
    "report_pdf",
    "report_file_name",
    "report_png",
]

Box = tuple[float, float, float, float]
DISCLAIMER = (
    "Research and education demo, not a medical device. This result must not be used to "
    "diagnose, triage or treat anyone; a qualified clinician reads the radiograph."
)
# The heat map's weight in the report's overlay: the page's default opacity.
REPORT_ALPHA = 0.45
# Longest side of the image in a report: sharp on an A4 page, a few hundred kB as JPEG.
REPORT_MAX_SIDE = 1200
# The PNG is at least this wide, so its text stays readable in a chat preview.
PNG_MIN_WIDTH = 720
_BOX_COLOUR = (255, 255, 255)
_STRONGEST = "strongest region of the heat map"
_STYLE_WORDS = {
    "solid": "solid: above the high-specificity threshold",
    "dotted": "dotted: above the high-sensitivity threshold",
}


@dataclass(frozen=True)
class ReportBox:
    """One region to draw and list: a normalised box, how to draw it, and what found it."""

    box: Box  # normalised x0, y0, x1, y1
    style: str = "solid"  # "solid" or "dotted"
    score: float | None = None  # e.g. a localisation head's probability for this box
    label: str = _STRONGEST


@dataclass(frozen=True)
class ReportHeader:
    """What every page of a report says about where the result came from."""

    model_name: str
    model_version: str
    created: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


@dataclass(frozen=True)
class ImageReport:
    """Everything one image's report shows."""

    name: str
    verdict: str  # "fracture", "normal", "not assessed", or "" (could not be scored)
    probability: float | None
    threshold: float | None
    operating_point: str  # e.g. "high_sensitivity"
    image: np.ndarray | None = field(default=None, repr=False)  # RGB uint8
    heatmap: np.ndarray | None = field(default=None, repr=False)  # display heat in [0, 1]
    boxes: tuple[ReportBox, ...] = ()
    body_region: str | None = None
    cautions: tuple[str, ...] = ()  # e.g. metal in the image; listed under the result
    map_view: str = WHY  # which map ``heatmap`` is (fracture.views.overlays.WHERE or WHY)
    error: str | None = None


def report_file_name(source: str, suffix: str) -> str:
    """A download name for ``source``'s report: ``<stem>_report.<suffix>``, safe characters only."""
    member = overlay_member_name(source).rsplit("/", 1)[-1]
    return member.removesuffix("_gradcam.png") + f"_report.{suffix}"


def _assessed(prediction: Prediction, threshold: float | None) -> bool:
    # At the report's own threshold: a prediction made without one is still judged.
    return prediction.probability is not None and prediction.verdict(threshold).assessed


def boxes_of(
    prediction: Prediction,
    threshold: float | None = None,
    thresholds: Mapping[str, float] | None = None,
) -> tuple[ReportBox, ...]:
    """The boxes a prediction draws at ``threshold``: none unless labelled fracture there.

    Every box of a localisation head with its score, or the strongest region of the
    Grad-CAM map for a model without one (:func:`fracture.views.overlays.boxes_at`).
    """
    if not _assessed(prediction, threshold):
        return ()
    label = "localisation head" if prediction.location_outputs is not None else _STRONGEST
    return tuple(
        ReportBox(mark.box, mark.style, mark.score, label)
        for mark in boxes_at(prediction, threshold, thresholds)
    )


def image_report(
    prediction: Prediction,
    threshold: float,
    operating_point: str,
    *,
    name: str | None = None,
    boxes: Sequence[ReportBox] | None = None,
    cautions: Sequence[str] = (),
    thresholds: Mapping[str, float] | None = None,
    view: str | None = None,
) -> ImageReport:
    """The report of one prediction at ``threshold``; ``boxes`` replaces its own when given.

    ``view`` picks the map (:mod:`fracture.views.overlays`): by default "where" (the
    localisation head's) when the model has one, else "why" (Grad-CAM). ``thresholds``
    (the model's named points) decides the boxes' style.
    """
    assessed = _assessed(prediction, threshold)
    shown_view = view if view in views_of(prediction) else views_of(prediction)[0]
    image, heatmap = prediction.image, map_for(prediction, shown_view)
    if image is not None:
        image, heatmap = fit_for_display(image, heatmap, REPORT_MAX_SIDE)
    return ImageReport(
        name=name or prediction.source,
        verdict=verdict(prediction, threshold),
        probability=prediction.probability if assessed else None,
        threshold=threshold,
        operating_point=operating_point,
        image=image,
        # No heat on an image the model cannot judge: it would read as a finding.
        heatmap=heatmap if assessed else None,
        boxes=tuple(boxes_of(prediction, threshold, thresholds) if boxes is None else boxes),
        map_view=shown_view,
        body_region=body_region_text(prediction),
        cautions=tuple(cautions),
        error=None if prediction.ok else (prediction.error or "could not be scored"),
    )


def report_image(report: ImageReport) -> np.ndarray | None:
    """The image with the map, every box (numbered when several, with its score) and the colour bar."""
    if report.image is None:
        return None
    shown = report.image
    if report.heatmap is not None:
        shown = overlay_heatmap(shown, report.heatmap, REPORT_ALPHA)
    marks = [MarkedBox(mark.box, mark.style, mark.score) for mark in report.boxes]
    several = len(marks) > 1
    labels = [
        " ".join(part for part in (str(number) if several else "", mark.label) if part)
        for number, mark in enumerate(marks, start=1)
    ]
    shown = draw_boxes(shown, marks, labels)
    if report.heatmap is not None:
        shown, _ = with_colour_bar(shown)
    return shown


def _operating_point_words(name: str) -> str:
    return name.replace("_", " ").capitalize() if name else "Operating point"


def report_lines(report: ImageReport, header: ReportHeader) -> list[tuple[str, str]]:
    """The report's facts as (heading, text) pairs, in reading order; the PDF and PNG share them."""
    if report.error:
        lines = [("Image", report.name), ("Result", f"Could not be scored: {report.error}")]
    elif report.verdict == NOT_ASSESSED:
        lines = [
            ("Image", report.name),
            ("Result", "Not assessed"),
            ("Why", NOT_ASSESSED_REASON),
        ]
    else:
        lines = [
            ("Image", report.name),
            ("Result", report.verdict.capitalize()),
            ("Fracture probability", format_probability(report.probability)),
        ]
    if report.threshold is not None:
        lines.append(
            (
                "Operating point",
                f"{_operating_point_words(report.operating_point)}, threshold "
                f"{format_threshold(report.threshold)} (at or above it: fracture)",
            )
        )
    lines.append(("Body region", report.body_region or "not named by this model"))
    for number, mark in enumerate(report.boxes, start=1):
        score = f", score {format_probability(mark.score)}" if mark.score is not None else ""
        heading = "Box" if len(report.boxes) == 1 else f"Box {number}"
        style = _STYLE_WORDS.get(mark.style, mark.style)
        lines.append((heading, f"{mark.label}{score} ({style})"))
    for caution in report.cautions:
        lines.append(("Caution", caution))
    if report.heatmap is not None:
        lines.append(
            (
                "Map",
                f"{VIEW_NAMES[report.map_view]}: {map_unit(report.map_view)}, on one fixed "
                "scale from 0 to 1 for every image (colour bar: low to high)",
            )
        )
    lines += [
        ("Model", f"{header.model_name or 'unnamed'}, version {header.model_version or '?'}"),
        ("Date", header.created.strftime("%Y-%m-%d %H:%M %Z").strip()),
    ]
    return lines


# --------------------------------------------------------------------------------------
# PDF


def _latin1(text: str) -> str:
    """``text`` in the core PDF fonts' alphabet: dashes and quotes mapped, the rest decomposed."""
    replaced = (
        text.replace("\u2013", "-")
        .replace("\u2014", "-")
        .replace("\u2018", "'")
        .replace("\u2019", "'")
        .replace("\u201c", '"')
        .replace("\u201d", '"')
        .replace("\u2026", "...")
        .replace("\u2265", ">=")
        .replace("\u2264", "<=")
    )
    folded = unicodedata.normalize("NFKD", replaced)
    return (
        "".join(c for c in folded if not unicodedata.combining(c))
        .encode("latin-1", "replace")
        .decode("latin-1")
    )


def _new_pdf():
    from fpdf import FPDF

    pdf = FPDF(orientation="portrait", unit="mm", format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.set_margins(15, 15, 15)
    return pdf


def _add_image_page(pdf, report: ImageReport, header: ReportHeader) -> None:
    pdf.add_page()
    pdf.set_font("helvetica", "B", 15)
    pdf.cell(0, 8, _latin1("Fracture model report"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "", 9)
    pdf.set_text_color(150, 0, 0)
    pdf.multi_cell(0, 4.5, _latin1(DISCLAIMER), new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.ln(2)
    shown = report_image(report)
    if shown is not None:
        height, width = shown.shape[:2]
        max_w, max_h = pdf.epw, 140.0
        scale = min(max_w / width, max_h / height)
        pdf.image(io.BytesIO(jpeg(shown)), w=width * scale, h=height * scale)
        pdf.ln(3)
    for heading, text in report_lines(report, header):
        pdf.set_font("helvetica", "B", 10)
        pdf.cell(42, 5.5, _latin1(heading))
        pdf.set_font("helvetica", "", 10)
        pdf.multi_cell(0, 5.5, _latin1(text), new_x="LMARGIN", new_y="NEXT")


def report_pdf(report: ImageReport, header: ReportHeader) -> bytes:
    """One image's report as a one-page A4 PDF."""
    pdf = _new_pdf()
    _add_image_page(pdf, report, header)
    return bytes(pdf.output())


def batch_pdf(reports: Iterable[ImageReport], header: ReportHeader) -> bytes:
    """A batch as one PDF: a summary table first, then one page per image.

    ``reports`` is consumed once, so a generator over a batch keeps one image
    in memory at a time; the summary page is filled from what was seen.
    """
    pdf = _new_pdf()
    pdf.add_page()  # the summary, written once every page is known
    summary_page = pdf.page
    rows: list[tuple[str, str, str]] = []
    points: set[str] = set()
    for report in reports:
        _add_image_page(pdf, report, header)
        if report.threshold is not None:
            points.add(
                f"{_operating_point_words(report.operating_point).lower()} operating point, "
                f"threshold {format_threshold(report.threshold)}"
            )
        shown = "" if report.probability is None else format_probability(report.probability)
        result = report.verdict or "could not be scored"
        rows.append((report.name, result, shown))
    end_page = pdf.page
    pdf.page = summary_page
    pdf.set_xy(pdf.l_margin, pdf.t_margin)
    pdf.set_font("helvetica", "B", 15)
    pdf.cell(
        0, 8, _latin1(f"Fracture model report: {len(rows)} images"), new_x="LMARGIN", new_y="NEXT"
    )
    pdf.set_font("helvetica", "", 9)
    pdf.set_text_color(150, 0, 0)
    pdf.multi_cell(0, 4.5, _latin1(DISCLAIMER), new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    threshold_line = f" Labels at the {'; '.join(sorted(points))}." if points else ""
    pdf.set_font("helvetica", "", 10)
    pdf.multi_cell(
        0,
        5.5,
        _latin1(
            f"Model {header.model_name or 'unnamed'}, version {header.model_version or '?'}; "
            f"{header.created.strftime('%Y-%m-%d %H:%M %Z').strip()}.{threshold_line} "
            "One page per image follows."
        ),
        new_x="LMARGIN",
        new_y="NEXT",
    )
    pdf.ln(2)
    # Only as many rows as fit on the summary page; the image pages hold every result.
    room = int((pdf.h - pdf.b_margin - pdf.get_y()) // 5.5) - 2
    with pdf.table(col_widths=(100, 45, 35), text_align=("LEFT", "LEFT", "RIGHT")) as table:
        table.row(("image", "result", "fracture probability"))
        for row in rows[:room]:
            table.row(tuple(_latin1(cell) for cell in row))
    if len(rows) > room:
        pdf.cell(0, 5.5, _latin1(f"... and {len(rows) - room} more, on their own pages."))
    pdf.page = end_page
    return bytes(pdf.output())


# --------------------------------------------------------------------------------------
# PNG, for chat tools


def report_png(report: ImageReport, header: ReportHeader) -> bytes:
    """One image's report as a PNG: the image above, the facts and the disclaimer below."""
    from PIL import Image, ImageDraw, ImageFont

    shown = report_image(report)
    width = max(PNG_MIN_WIDTH, shown.shape[1] if shown is not None else 0)
    if shown is not None and shown.shape[1] < width:
        # A small image is enlarged to the card's width: a chat preview is small already.
        height = round(shown.shape[0] * width / shown.shape[1])
        shown = cv2.resize(shown, (width, height), interpolation=cv2.INTER_LINEAR)
    size = max(16, width // 45)
    font = ImageFont.load_default(size=size)
    bold = ImageFont.load_default(size=size + 2)
    line_height = round(size * 1.45)
    heading_width = size * 12
    # Wrap each fact's text to the space right of its heading.
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = width - heading_width - 2 * size

    def wrap(text: str, limit: int, face) -> list[str]:
        words, lines, current = text.split(), [], ""
        for word in words:
            trial = f"{current} {word}".strip()
            if probe.textlength(trial, font=face) <= limit or not current:
                current = trial
            else:
                lines.append(current)
                current = word
        return lines + ([current] if current else [])

    facts = [
        (heading, wrap(text, text_width, font)) for heading, text in report_lines(report, header)
    ]
    disclaimer = wrap(DISCLAIMER, width - 2 * size, font)
    text_lines = sum(len(lines) for _, lines in facts) + len(disclaimer) + 3
    image_height = shown.shape[0] if shown is not None else 0
    canvas = Image.new("RGB", (width, image_height + text_lines * line_height + size), "white")
    if shown is not None:
        canvas.paste(Image.fromarray(shown), (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = image_height + size
    for heading, lines in facts:
        draw.text((size, y), heading, fill="black", font=bold)
        for line in lines:
            draw.text((size + heading_width, y), line, fill="black", font=font)
            y += line_height
    y += line_height // 2
    for line in disclaimer:
        draw.text((size, y), line, fill=(150, 0, 0), font=font)
        y += line_height
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
