"""Which map to draw over a radiograph, and which boxes, at the operating point in use.

A model with a localisation head (issue 21) has two maps, and they answer two
questions:

- **Where** (:data:`WHERE`, the default): the localisation head's probability of
  a fracture centre per pixel, in fixed units [0, 1], and its boxes with their
  scores. It was trained on the radiologists' boxes, so it is the map that
  points at the fracture.
- **Why** (:data:`WHY`): the classifier's Grad-CAM, the evidence that raised the
  fracture score, on the model's fixed evidence scale [0, 1] (Selvaraju et al.,
  ICCV 2017). It explains the probability; it is not a detector.

A model without a localisation head has only "Why". Boxes mark a finding, so
they follow the verdict at the operating point the user picked
(:meth:`Prediction.verdict`): an image labelled normal at that point has none,
whatever the head found. The Predict page, the report and the ZIP of overlays
all draw through this module, so they never disagree.

Streamlit-free; the page only calls it.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import plotly.graph_objects as go

from fracture.inference.gradcam import box_style, draw_region, overlay_heatmap, strongest_region
from fracture.inference.prediction import Prediction
from fracture.inference.verdict import FRACTURE

__all__ = [
    "DISPLAY_FLOOR",
    "VIEW_NAMES",
    "WHERE",
    "WHY",
    "MarkedBox",
    "boxes_at",
    "draw_boxes",
    "map_for",
    "map_is_empty",
    "map_unit",
    "scale_title",
    "overlay_for",
    "VIEWER_CONFIG",
    "ViewerPicture",
    "viewer_figure",
    "views_of",
    "windowed",
]

WHERE, WHY = "where", "why"
VIEW_NAMES = {WHERE: "Where (localisation)", WHY: "Why (Grad-CAM)"}
# Below this a map's colour weighs under 2.5% of a pixel at the default opacity:
# nothing shows, so the page says "no evidence above the display floor" instead.
DISPLAY_FLOOR = 0.05
BOX_COLOUR = (255, 255, 255)


@dataclass(frozen=True)
class MarkedBox:
    """One box to draw: normalised x0, y0, x1, y1, its style, and its score when a head gave one."""

    box: tuple[float, float, float, float]
    style: str  # "solid" or "dotted" (see fracture.inference.gradcam.box_style)
    score: float | None = None

    @property
    def label(self) -> str:
        """What is written beside the box: the head's score, in whole percent."""
        return "" if self.score is None else f"{self.score:.0%}"


def views_of(prediction: Prediction) -> list[str]:
    """The maps this prediction can show, the default first: "where" only with a localisation head."""
    return [WHERE, WHY] if prediction.location_outputs is not None else [WHY]


def map_unit(view: str) -> str:
    """The map's fixed units, in words (captions and downloads)."""
    if view == WHERE:
        return "probability of a fracture centre"
    return "Grad-CAM evidence for fracture (model's fixed scale)"


def scale_title(view: str) -> str:
    """The map's units in a word or two: the on-screen colour scale's title (a phone is narrow)."""
    return "centre probability" if view == WHERE else "evidence"


def map_for(
    prediction: Prediction, view: str, size: tuple[int, int] | None = None
) -> np.ndarray | None:
    """The map of ``view`` in [0, 1], at ``size`` (height, width) when given, else the image's.

    The page keeps a display-size image while the localisation map is made at the
    original size, so the map is resized to whatever image it is drawn on.
    """
    heat = prediction.location_image() if view == WHERE else prediction.heatmap
    if heat is None:
        return None
    if size is None and prediction.image is not None:
        size = prediction.image.shape[:2]
    if size is not None and heat.shape[:2] != tuple(size):
        heat = cv2.resize(heat, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(heat, 0.0, 1.0).astype(np.float32, copy=False)


def map_is_empty(heat: np.ndarray | None) -> bool:
    """Whether nothing in the map reaches :data:`DISPLAY_FLOOR` (the overlay looks like the image)."""
    return heat is not None and float(np.max(heat, initial=0.0)) < DISPLAY_FLOOR


def boxes_at(
    prediction: Prediction, threshold: float | None, thresholds: Mapping[str, float] | None = None
) -> list[MarkedBox]:
    """The boxes to draw at ``threshold``: none unless the verdict there is fracture.

    With a localisation head: every box it found, best first, with its score. Without
    one: the strongest region of the Grad-CAM map (no score). The style is solid above
    the high-specificity threshold and dotted below it (:func:`box_style`, from the
    model's named ``thresholds``; without them, the prediction's own style).
    """
    if prediction.verdict(threshold).label != FRACTURE:
        return []
    if thresholds is None:
        # The model's named points unknown here: keep the style the prediction was made with.
        style = prediction.box_style or "dotted"
    else:
        style = box_style(prediction.probability, dict(thresholds), threshold) or "dotted"
    if prediction.location_outputs is not None:
        return [MarkedBox(box.coordinates, style, box.score) for box in prediction.location_boxes]
    region = prediction.box
    if region is None and prediction.heatmap is not None:
        # The prediction's own box was made at the model's default point; at a lower
        # chosen point the image may be labelled fracture without one.
        region = strongest_region(prediction.heatmap)
    return [] if region is None else [MarkedBox(region, style)]


def draw_boxes(
    image: np.ndarray, boxes: Sequence[MarkedBox], labels: Sequence[str] | None = None
) -> np.ndarray:
    """``image`` with every box drawn and its text written above its top-left corner.

    The text is the box's score (:attr:`MarkedBox.label`) unless ``labels`` gives one per box.
    """
    shown = image
    height, width = shown.shape[:2]
    scale = max(0.4, max(height, width) / 900)
    thickness = max(1, round(2 * scale))
    for index, mark in enumerate(boxes):
        shown = draw_region(shown, mark.box, mark.style, colour=BOX_COLOUR)
        text = mark.label if labels is None else labels[index]
        if text:
            x, y = int(mark.box[0] * width) + 2, int(mark.box[1] * height) - 4
            y = y if y > 14 * scale else int(mark.box[1] * height) + round(16 * scale)
            # A dark outline keeps white text readable on a bright bone.
            for colour, weight in (((0, 0, 0), thickness + 2), (BOX_COLOUR, thickness)):
                cv2.putText(
                    shown,
                    text,
                    (x, y),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    scale,
                    colour,
                    weight,
                    cv2.LINE_AA,
                )
    return shown


def windowed(image: np.ndarray, window: float = 1.0, level: float = 0.5) -> np.ndarray:
    """``image`` (uint8) with a display window: ``level`` is the centre, ``window`` the width, both in [0, 1].

    The radiologist's brightness and contrast. Only what is shown changes: the
    prediction was made from the upload's own pixels and is never recomputed.
    """
    window = max(float(window), 1e-3)
    low = (level - window / 2) * 255.0
    scaled = (image.astype(np.float32) - low) * (255.0 / (window * 255.0))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def overlay_for(
    prediction: Prediction,
    view: str,
    threshold: float | None,
    thresholds: Mapping[str, float] | None = None,
    *,
    alpha: float = 0.45,
    show_map: bool = True,
    show_boxes: bool = True,
    window: float = 1.0,
    level: float = 0.5,
    heat: np.ndarray | None = None,
) -> np.ndarray | None:
    """The picture of ``prediction`` for ``view``: image, map and labelled boxes at ``threshold``.

    None without an image. A view the model lacks (``"where"`` without a localisation
    head) falls back to "why". ``heat`` is the view's map when the caller has already
    made it (:func:`map_for`; the viewer needs it for its scale too): made once, not twice.
    """
    if prediction.image is None:
        return None
    if view not in views_of(prediction):
        view = WHY
    shown = windowed(prediction.image, window, level)
    if not show_map:
        heat = None
    elif heat is None:
        heat = map_for(prediction, view)
    if heat is not None:
        shown = overlay_heatmap(shown, heat, alpha)
    if show_boxes:
        shown = draw_boxes(shown, boxes_at(prediction, threshold, thresholds))
    return shown


# Drag pans, the wheel or a pinch zooms, a double tap resets: usable with one thumb.
VIEWER_CONFIG = {
    "scrollZoom": True,
    "displaylogo": False,
    "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d", "toImage"],
}
_LINE_DASH = {"solid": "solid", "dotted": "dot"}


@dataclass(frozen=True)
class ViewerPicture:
    """A picture encoded once for the viewer: its JPEG as a data URL, and its size in pixels.

    A page keeps it between reruns: an operating-point change moves only the boxes (plotly
    shapes), so the picture is not blended or encoded again.
    """

    source: str
    height: int
    width: int

    @classmethod
    def of(cls, picture: np.ndarray) -> "ViewerPicture":
        """``picture`` (RGB uint8, map already blended) as one JPEG: the one encode it gets."""
        # Here, not at the top: display imports figures, which imports results, which imports this.
        from fracture.views.display import jpeg

        encoded = base64.b64encode(jpeg(picture)).decode("ascii")
        rows, columns = picture.shape[:2]
        return cls("data:image/jpeg;base64," + encoded, int(rows), int(columns))


def viewer_figure(
    picture: np.ndarray | ViewerPicture,
    boxes: Sequence[MarkedBox] = (),
    *,
    unit: str | None = None,
    height: int = 560,
) -> go.Figure:
    """A zoomable, pannable Plotly view of ``picture`` (RGB uint8, map already blended).

    ``boxes`` become shapes with their scores written beside them, so they stay sharp
    at any zoom; ``unit`` (the map's fixed units) adds a colour scale from 0 to 1 in
    the overlay's colours. The picture travels as one JPEG, not as a pixel array
    (encoded here, or already, as a :class:`ViewerPicture`).
    """
    encoded = picture if isinstance(picture, ViewerPicture) else ViewerPicture.of(picture)
    rows, columns = encoded.height, encoded.width
    figure = go.Figure(go.Image(source=encoded.source, hoverinfo="skip"))
    for mark in boxes:
        x0, y0, x1, y1 = mark.box
        figure.add_shape(
            type="rect",
            x0=x0 * columns,
            x1=x1 * columns,
            y0=y0 * rows,
            y1=y1 * rows,
            line={"color": "white", "width": 2, "dash": _LINE_DASH.get(mark.style, "solid")},
        )
        if mark.label:
            figure.add_annotation(
                x=x0 * columns,
                y=y0 * rows,
                text=mark.label,
                showarrow=False,
                xanchor="left",
                yanchor="bottom",
                font={"color": "white", "size": 13},
                bgcolor="rgba(0,0,0,0.55)",
            )
    if unit is not None:
        # An invisible trace that carries the colour scale: JET, as the overlay is coloured.
        figure.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                hoverinfo="skip",
                showlegend=False,
                marker={
                    "colorscale": "Jet",
                    "cmin": 0.0,
                    "cmax": 1.0,
                    "color": [0.0],
                    "showscale": True,
                    "colorbar": {
                        "title": {"text": unit, "side": "right"},
                        "thickness": 12,
                        "tickvals": [0, 0.25, 0.5, 0.75, 1.0],
                        "ticktext": ["0", "0.25", "0.5", "0.75", "1"],
                    },
                },
            )
        )
    figure.update_xaxes(visible=False, range=[0, columns], constrain="domain")
    figure.update_yaxes(visible=False, range=[rows, 0], scaleanchor="x", constrain="domain")
    figure.update_layout(
        height=height,
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        dragmode="pan",
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
    )
    return figure
