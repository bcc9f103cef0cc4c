"""The Predict page's figures: the probability gauge and the batch histogram."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from fracture.views.figures._style import (
    COLOUR_FRACTURE,
    COLOUR_NORMAL,
    COLOUR_VAL,
    new_figure,
)
from fracture.views.results import format_threshold

if TYPE_CHECKING:
    import plotly.graph_objects as go


def probability_gauge(probability: float, threshold: float, title: str = "") -> "go.Figure":
    """A 0-100 % gauge of the fracture probability with the threshold marked as a line."""
    import plotly.graph_objects as go

    colour = COLOUR_FRACTURE if probability >= threshold else COLOUR_NORMAL
    figure = go.Figure(
        go.Indicator(
            # No number: the page prints the probability with honest precision
            # beside it; the gauge's own would read "100.0 %".
            mode="gauge",
            value=100.0 * probability,
            title={"text": title} if title else None,
            gauge={
                "axis": {"range": [0, 100], "ticksuffix": "%"},
                "bar": {"color": colour},
                "steps": [
                    {"range": [0, 100.0 * threshold], "color": "#e8f1fb"},
                    {"range": [100.0 * threshold, 100], "color": "#fbe9e9"},
                ],
                "threshold": {
                    "line": {"color": "black", "width": 4},
                    "thickness": 0.9,
                    "value": 100.0 * threshold,
                },
            },
        )
    )
    figure.update_layout(height=230, margin={"l": 40, "r": 40, "t": 30, "b": 20})
    return figure


def probability_histogram(probabilities: Sequence[float], threshold: float) -> "go.Figure":
    """Histogram of a batch's probabilities in 5 % bins, the threshold as a dashed line."""
    import plotly.graph_objects as go

    values = np.asarray([p for p in probabilities if p is not None], dtype=float)
    figure = new_figure(
        f"Fracture probabilities (dashed: threshold {format_threshold(threshold)})", height=300
    )
    figure.add_trace(
        go.Histogram(
            x=values,
            xbins={"start": 0.0, "end": 1.0, "size": 0.05},
            marker_color=COLOUR_VAL,
            name="images",
        )
    )
    figure.add_vline(x=threshold, line_dash="dash", line_color="black")
    figure.update_xaxes(range=[0, 1], title="probability of fracture", tickformat=".0%")
    # Whole images only: no "0.5 images" tick on a small batch.
    tallest = int(np.histogram(values, bins=20, range=(0.0, 1.0))[0].max()) if values.size else 0
    figure.update_yaxes(
        title="images", tickformat="d", dtick=max(1, math.ceil(tallest / 5)), rangemode="tozero"
    )
    figure.update_layout(showlegend=False)
    return figure
