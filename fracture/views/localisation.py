"""Where the maps point: a gallery of validation cases and the figures in plain words.

Two maps where the model has a localisation head: "where" (the head's map and boxes,
the default view) and "why" (the classifier's Grad-CAM). Computed without Streamlit;
``app_pages/_localisation.py`` draws it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import cv2
import numpy as np

from fracture.evaluation.localisation import image_localisation
from fracture.model.reports import EvaluationReport
from fracture.views.overlays import WHERE, WHY, overlay_for, views_of

__all__ = ["GalleryCase", "gallery_cases", "case_picture", "localisation_lines", "TRUE_BOX_COLOUR"]

# Radiologists' boxes in green; the model's box is white (fracture.inference.gradcam).
TRUE_BOX_COLOUR = (40, 220, 60)
PICTURE_SIDE = 480  # pixels on the longest side: the page shows them small


@dataclass
class GalleryCase:
    """One validation image with its prediction, in one of the gallery's groups."""

    group: str  # "hit", "miss" or "normal"
    record: Any  # fracture.data.records.Record
    prediction: Any  # fracture.inference.prediction.Prediction


def gallery_cases(
    records: Sequence[Any], predictions: Sequence[Any], per_group: int = 3
) -> list[GalleryCase]:
    """Up to ``per_group`` hits, misses (fractured images with boxes) and normals, in file order.

    A hit is a default map (the localisation head's, else the Grad-CAM) whose peak lies
    in a radiologist's box (the pointing game).
    """
    groups: dict[str, list[GalleryCase]] = {"hit": [], "miss": [], "normal": []}
    for record, prediction in zip(records, predictions):
        if not prediction.ok or prediction.evidence is None:
            continue
        if record.label == 0:
            group = "normal"
        elif record.boxes:
            where = prediction.location_image()
            heat = where if where is not None else prediction.evidence_image()
            found = image_localisation(heat, record.boxes, prediction.box)
            group = "hit" if found["hit"] else "miss"
        else:
            continue
        if len(groups[group]) < per_group:
            groups[group].append(GalleryCase(group, record, prediction))
    return groups["hit"] + groups["miss"] + groups["normal"]


def case_picture(case: GalleryCase, alpha: float = 0.45) -> np.ndarray:
    """The default view with the model's boxes and the radiologists' boxes (green), display-sized."""
    prediction = case.prediction
    view = WHERE if WHERE in views_of(prediction) else WHY
    picture = overlay_for(prediction, view, prediction.threshold, alpha=alpha)
    if picture is None:
        raise ValueError("a gallery case needs its image: predict with with_cam=True")
    height, width = picture.shape[:2]
    thickness = max(2, round(max(height, width) / 300))
    for x0, y0, x1, y1 in case.record.boxes:
        cv2.rectangle(
            picture,
            (round(x0 * width), round(y0 * height)),
            (round(x1 * width), round(y1 * height)),
            TRUE_BOX_COLOUR,
            thickness,
            cv2.LINE_AA,
        )
    scale = PICTURE_SIDE / max(height, width)
    if scale < 1:
        picture = cv2.resize(
            picture, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA
        )
    return picture


def _percent(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.0%}"


def _interval(ci: Sequence[float] | None) -> str:
    return "" if not ci else f" (95% interval {ci[0]:.0%} to {ci[1]:.0%})"


def localisation_lines(
    report: EvaluationReport, key: Literal["localisation", "localiser"] = "localisation"
) -> list[tuple[str, str, str]]:
    """(figure, value, what it means) rows for the page; empty when nothing was measured.

    ``key`` is the report's entry: ``"localiser"`` for the localisation head's map and
    boxes, ``"localisation"`` for the classifier's Grad-CAM.
    """
    figures = report.get(key)
    if not figures or not figures["pointing_game"]["n"]:
        return []
    game, tolerant = figures["pointing_game"], figures["pointing_game_tolerant"]
    drawn = figures["drawn_box_hit_rate"]
    n = game["n"]
    rows = [
        (
            "Map peak inside the fracture box",
            _percent(game["rate"]) + _interval(game["ci"]),
            f"{game['hits']} of {n} fractured validation images with a radiologist's box",
        ),
        (
            f"Peak within {tolerant['tolerance']:.0%} of the image side of the box",
            _percent(tolerant["rate"]) + _interval(tolerant["ci"]),
            f"{tolerant['hits']} of {n}",
        ),
        (
            "Share of the map inside the boxes",
            _percent(figures["energy_inside_boxes"]),
            "averaged over the same images; the boxes cover a few percent of each image",
        ),
        (
            "Best drawn box overlaps a true box",
            _percent(drawn["rate"]) + _interval(drawn["ci"]),
            f"{drawn['hits']} of {n} (overlap of at least {drawn['min_iou']:.0%} of the union); "
            f"boxes are drawn only on images labelled fracture",
        ),
    ]
    if figures.get("ap50") is not None:
        ci = figures.get("ap50_ci")
        rows.append(
            (
                "Box AP50 (as YOLOv8 computes it)",
                f"{figures['ap50']:.2f}"
                + (f" (95% interval {ci[0]:.2f} to {ci[1]:.2f})" if ci else ""),
                "precision over recall of the boxes, a box counting when it overlaps a "
                "radiologist's by half of their union",
            )
        )
    for name, value in (figures.get("false_boxes_per_normal") or {}).items():
        if value is not None:
            rows.append(
                (
                    f"Boxes per normal image, {name.replace('_', '-')} point",
                    f"{value:.2f}",
                    f"on {figures.get('n_normal', 0)} normal validation images: every one is a "
                    "false box",
                )
            )
    return rows
