"""Figures of a K-class model: class probabilities, one-against-rest ROC, confusion, per class."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fracture.views.figures._style import (
    COLOUR_VAL,
    LEGEND_BOTTOM_RIGHT,
    class_colours,
    new_figure,
)

if TYPE_CHECKING:
    import plotly.graph_objects as go


def class_probability_figure(
    probabilities: Mapping[str, float], shown: str | None = None
) -> "go.Figure":
    """One bar per class, in the model's order, in whole percent; ``shown`` is outlined.

    ``shown`` is the class whose heat map is on screen, so the bar and the map can
    be matched at a glance.
    """
    import plotly.graph_objects as go

    from fracture.views.results import format_probability

    names = list(probabilities)
    values = [100.0 * probabilities[name] for name in names]
    colours = list(class_colours(names).values())  # the colours of the Dataset and Train pages
    figure = new_figure("Probability of each class", height=max(160, 40 + 34 * len(names)))
    figure.add_trace(
        go.Bar(
            x=values,
            y=names,
            orientation="h",
            marker={
                "color": colours,
                "line": {
                    "color": ["black" if name == shown else "rgba(0,0,0,0)" for name in names],
                    "width": 2,
                },
            },
            text=[format_probability(probabilities[name]) for name in names],
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{y}: %{text}<extra></extra>",
        )
    )
    figure.update_xaxes(range=[0, 112], title="probability (%)", showgrid=False)
    figure.update_yaxes(autorange="reversed")
    figure.update_layout(showlegend=False)
    return figure


def class_roc_figure(multiclass: Mapping[str, Any]) -> "go.Figure":
    """Each class against the rest: one ROC curve per class, its AUROC in the legend.

    The title carries the macro and micro averages (see
    :mod:`fracture.evaluation.multiclass` for what each weighs).
    """
    import plotly.graph_objects as go

    parts = [
        f"{name} {multiclass[key]:.2f}"
        for key, name in (("auroc_macro", "macro"), ("auroc_micro", "micro"))
        if multiclass.get(key) is not None
    ]
    title = "ROC per class" + (f" (AUROC {', '.join(parts)})" if parts else "")
    figure = new_figure(title, height=380)
    figure.add_trace(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dash", "color": "#bbb"}
        )
    )
    for entry in multiclass.get("per_class") or []:
        roc = entry.get("roc")
        if not roc:
            continue
        auroc = entry.get("auroc")
        figure.add_trace(
            go.Scatter(
                x=roc["fpr"],
                y=roc["tpr"],
                mode="lines",
                name=f"{entry['name']} (AUROC {auroc:.2f})" if auroc is not None else entry["name"],
            )
        )
    figure.update_xaxes(title="false-positive rate (other classes called this one)", range=[0, 1])
    figure.update_yaxes(title="sensitivity", range=[0, 1.02])
    figure.update_layout(legend=LEGEND_BOTTOM_RIGHT)
    return figure


def class_confusion_figure(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str = "Confusion matrix"
) -> "go.Figure":
    """A K x K confusion matrix: rows the true class, columns the most probable class.

    Cells are coloured by their share of the row (the row's sensitivity sits on the
    diagonal), so a rare class's mistakes are as visible as a common one's; the
    text is the count.
    """
    import plotly.graph_objects as go

    values = np.asarray(matrix, dtype=int)
    names = [str(name) for name in class_names]
    if values.shape != (len(names), len(names)):
        raise ValueError(
            f"confusion matrix of shape {values.shape} does not fit {len(names)} class names"
        )
    rows = values.sum(axis=1, keepdims=True)
    shares = np.divide(values, rows, out=np.zeros(values.shape), where=rows > 0)
    figure = new_figure(title, height=max(300, 120 + 45 * len(names)))
    figure.add_trace(
        go.Heatmap(
            z=shares,
            x=[f"called {n}" for n in names],
            y=[f"true {n}" for n in names],
            text=values,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1,
            showscale=False,
            customdata=np.round(100 * shares).astype(int),
            hovertemplate="%{y}, %{x}: %{text} (%{customdata}% of the row)<extra></extra>",
        )
    )
    figure.update_yaxes(autorange="reversed")
    return figure


def per_class_figure(multiclass: Mapping[str, Any]) -> "go.Figure":
    """Sensitivity and precision of each class, side by side; a missing bar is undefined."""
    import plotly.graph_objects as go

    entries = multiclass.get("per_class") or []
    names = [entry["name"] for entry in entries]
    figure = new_figure("Sensitivity and precision per class", height=340)
    for key, label, colour in (
        ("sensitivity", "sensitivity (found of this class)", COLOUR_VAL),
        ("precision", "precision (right when called this class)", "#ff7f0e"),
    ):
        figure.add_trace(
            go.Bar(
                x=names,
                y=[entry.get(key) for entry in entries],
                name=label,
                marker_color=colour,
                text=[f"n={entry['n']}" if key == "sensitivity" else "" for entry in entries],
                textposition="inside",
                hovertemplate="%{x}: %{y:.2f}<extra>" + key + "</extra>",
            )
        )
    figure.update_yaxes(range=[0, 1.05])
    figure.update_layout(barmode="group", legend={"orientation": "h", "y": -0.2})
    return figure
