"""Radiographs as zoomable figures, with boxes and points drawn on them."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import plotly.graph_objects as go


@dataclass(frozen=True)
class BoxMark:
    """A normalised ``(x0, y0, x1, y1)`` box to draw on a radiograph, with its legend name."""

    box: tuple[float, float, float, float]
    name: str
    colour: str
    dash: str = "solid"  # plotly line dash: "solid", "dot", "dash"


@dataclass(frozen=True)
class PointMark:
    """A normalised ``(x, y)`` point to draw on a radiograph, with its legend name."""

    point: tuple[float, float]
    name: str
    colour: str
    symbol: str = "x"


COLOUR_TRUTH = "#00b050"  # radiologists' boxes: green, apart from the model's red
COLOUR_STUDENT = "#ffb000"


def image_uri(jpeg_bytes: bytes) -> str:
    """A JPEG as a data URI, the light way to put a radiograph in a plotly figure."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes).decode("ascii")


def radiograph_figure(
    jpeg_bytes: bytes,
    width: int,
    height: int,
    *,
    boxes: Sequence[BoxMark] = (),
    points: Sequence[PointMark] = (),
    click_grid: int = 0,
    figure_height: int = 560,
) -> "go.Figure":
    """A radiograph (``width`` x ``height`` px) that zooms and pans, with boxes and points on it.

    With ``click_grid`` > 0 an invisible ``click_grid`` x ``click_grid`` grid of
    points covers the image, so that a click anywhere selects the nearest grid
    point: plotly reports clicks on data points, not on an image. The grid's
    points carry normalised coordinates as ``customdata``.
    """
    import plotly.graph_objects as go

    figure = go.Figure(go.Image(source=image_uri(jpeg_bytes), hoverinfo="skip"))
    for mark in boxes:
        x0, y0, x1, y1 = mark.box
        # A closed line trace rather than a layout shape: it gets a legend entry.
        figure.add_trace(
            go.Scatter(
                x=[x0 * width, x1 * width, x1 * width, x0 * width, x0 * width],
                y=[y0 * height, y0 * height, y1 * height, y1 * height, y0 * height],
                mode="lines",
                line={"color": mark.colour, "width": 2, "dash": mark.dash},
                name=mark.name,
                hoverinfo="skip",
            )
        )
    for spot in points:
        figure.add_trace(
            go.Scatter(
                x=[spot.point[0] * width],
                y=[spot.point[1] * height],
                mode="markers",
                marker={
                    "color": spot.colour,
                    "size": 14,
                    "symbol": spot.symbol,
                    "line": {"width": 2, "color": "black"},
                },
                name=spot.name,
                hoverinfo="skip",
            )
        )
    if click_grid > 0:
        centres = (np.arange(click_grid) + 0.5) / click_grid
        grid_x, grid_y = np.meshgrid(centres, centres)
        figure.add_trace(
            go.Scatter(
                x=(grid_x.ravel() * width).tolist(),
                y=(grid_y.ravel() * height).tolist(),
                customdata=np.stack([grid_x.ravel(), grid_y.ravel()], axis=1).round(4).tolist(),
                mode="markers",
                marker={"color": "rgba(0,0,0,0)", "size": max(4, 560 // click_grid)},
                showlegend=False,
                hovertemplate="click to point here<extra></extra>",
                name="click",
            )
        )
    figure.update_layout(
        height=figure_height,
        margin={"l": 0, "r": 0, "t": 10, "b": 0},
        legend={"orientation": "h", "y": -0.02, "yanchor": "top", "x": 0},
        clickmode="event+select",
        dragmode="pan",
    )
    figure.update_xaxes(visible=False, range=[0, width], constrain="domain")
    figure.update_yaxes(
        visible=False, range=[height, 0], scaleanchor="x", scaleratio=1, constrain="domain"
    )
    return figure
