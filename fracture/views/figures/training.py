"""The Train page's figures: a run's curves and its confusion matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fracture.views.figures._style import (
    COLOUR_TRAIN,
    COLOUR_VAL,
    FIGURE_MARGIN,
    new_figure,
)

if TYPE_CHECKING:
    import plotly.graph_objects as go


def training_curves_figure(
    history: Sequence[Mapping[str, Any]], auroc_name: str = "AUROC"
) -> "go.Figure":
    """Loss and AUROC per epoch for train and val, the head/fine-tune switch marked.

    ``auroc_name`` says which AUROC the epochs measured: a K-class run's is the macro
    average over its classes (see :mod:`fracture.training.validation`), not any fracture's.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=2, subplot_titles=("Loss", auroc_name))
    epochs = [row.get("epoch") for row in history]
    for col, metric in ((1, "loss"), (2, "auroc")):
        for split, colour in (("train", COLOUR_TRAIN), ("val", COLOUR_VAL)):
            values = [row.get(f"{split}_{metric}") for row in history]
            figure.add_trace(
                go.Scatter(
                    x=epochs,
                    y=values,
                    mode="lines+markers",
                    name=f"{split}",
                    line={"color": colour},
                    legendgroup=split,
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
    switch = next((row.get("epoch") for row in history if row.get("phase") == "fine-tune"), None)
    if switch is not None and len(history) > 1:
        for col in (1, 2):
            figure.add_vline(x=switch - 0.5, line_dash="dot", line_color="#999", row=1, col=col)
        figure.add_annotation(
            x=switch - 0.5,
            y=1.0,
            yref="y2 domain",
            xref="x2",
            text="fine-tune",
            showarrow=False,
            yanchor="bottom",
        )
    figure.update_xaxes(title="epoch", dtick=1)
    figure.update_yaxes(range=[0, 1.02], row=1, col=2)
    figure.update_layout(
        height=320,
        margin=FIGURE_MARGIN,
        template="plotly_white",
        legend={"orientation": "h", "y": -0.25},
    )
    return figure


def confusion_figure(
    matrix: Sequence[Sequence[int]], title: str = "Confusion matrix"
) -> "go.Figure":
    """A 2 x 2 confusion matrix (rows: true normal, fracture; columns: predicted)."""
    import plotly.graph_objects as go

    values = np.asarray(matrix, dtype=int)
    if values.shape != (2, 2):
        raise ValueError(f"confusion matrix must be 2 x 2, got shape {values.shape}")
    names = ["normal", "fracture"]
    figure = new_figure(title, height=300)
    figure.add_trace(
        go.Heatmap(
            z=values,
            x=[f"predicted {n}" for n in names],
            y=[f"true {n}" for n in names],
            text=values,
            texttemplate="%{text}",
            textfont={"size": 18},
            colorscale="Blues",
            showscale=False,
            hovertemplate="%{y}, %{x}: %{z}<extra></extra>",
        )
    )
    figure.update_yaxes(autorange="reversed")
    return figure
