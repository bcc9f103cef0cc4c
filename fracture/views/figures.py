"""Every figure the dashboard draws (plotly), from metrics, cards, runs and predictions.

Colours are shared by every figure, so "fracture" looks the same on every page.
The pages only place these figures; nothing here imports Streamlit.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fracture.data.records import region_words, summary_classes
from fracture.model.reports import EvaluationReport
from fracture.views.results import format_threshold
from fracture.views.summaries import hardware_free_subgroup

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

__all__ = [
    "BoxMark",
    "COLOUR_STUDENT",
    "COLOUR_TRUTH",
    "PointMark",
    "image_uri",
    "radiograph_figure",
    "COLOUR_FRACTURE",
    "COLOUR_NORMAL",
    "COLOUR_TRAIN",
    "COLOUR_VAL",
    "breakdown_figure",
    "class_balance_figure",
    "class_confusion_figure",
    "class_probability_figure",
    "class_roc_figure",
    "per_class_figure",
    "class_colours",
    "confusion_figure",
    "pr_figure",
    "plural",
    "probability_gauge",
    "probability_histogram",
    "region_auroc_figure",
    "reliability_figure",
    "roc_figure",
    "size_figure",
    "training_curves_figure",
]

# Colours shared by every figure, so "fracture" looks the same on every page.
COLOUR_FRACTURE = "#d62728"
COLOUR_NORMAL = "#1f77b4"
COLOUR_TRAIN = "#7f7f7f"
COLOUR_VAL = "#1f6feb"
_CLASS_COLOURS = {
    "fractured": COLOUR_FRACTURE,
    "fracture": COLOUR_FRACTURE,
    "normal": COLOUR_NORMAL,
}
# Further classes of a K-class dataset (fracture types, body parts), in class order;
# colour-blind-safe (Okabe and Ito), with the binary red and blue kept for their names.
_MORE_COLOURS = ("#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")
_FIGURE_MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}
# Curves keep their legend inside the empty corner of the plot, where it never
# collides with the axis title.
_LEGEND_BOTTOM_RIGHT = {
    "x": 0.98,
    "y": 0.02,
    "xanchor": "right",
    "yanchor": "bottom",
    "bgcolor": "rgba(255,255,255,0.8)",
    "orientation": "v",
}
_LEGEND_BOTTOM_LEFT = {**_LEGEND_BOTTOM_RIGHT, "x": 0.02, "xanchor": "left"}


def _figure(title: str | None = None, height: int = 320) -> "go.Figure":
    import plotly.graph_objects as go

    figure = go.Figure()
    figure.update_layout(
        title=title,
        height=height,
        margin=_FIGURE_MARGIN,
        template="plotly_white",
        legend={"orientation": "h", "y": -0.2},
    )
    return figure


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
    figure = _figure(
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


def class_colours(names: Sequence[str]) -> dict[str, str]:
    """One colour per class: the fracture red and normal blue by name, others in turn."""
    others = iter(_MORE_COLOURS * (len(names) // len(_MORE_COLOURS) + 1))
    return {name: _CLASS_COLOURS.get(name.lower()) or next(others) for name in names}


def class_balance_figure(summary: Mapping[str, Mapping[str, int]]) -> "go.Figure":
    """Images per split and class from ``Dataset.summary()`` (two classes or K)."""
    import plotly.graph_objects as go

    splits = list(summary)
    names = summary_classes(summary)
    colours = class_colours(names)
    figure = _figure("Class balance per split")
    for name in names:
        counts = [summary[split].get(name, 0) for split in splits]
        figure.add_trace(
            go.Bar(
                x=splits,
                y=counts,
                name=name,
                marker_color=colours[name],
                text=counts,
                textposition="auto",
            )
        )
    figure.update_layout(barmode="group")
    figure.update_yaxes(title="images")
    return figure


def breakdown_figure(frame: "pd.DataFrame", column: str, title: str) -> "go.Figure":
    """Images per value of ``column`` (e.g. region, hardware), stacked by class."""
    import plotly.graph_objects as go

    values = frame[column].astype("object").where(frame[column].notna(), "unknown").astype(str)
    if column == "region":
        # The same words as every other output ("several regions", never "mixed").
        values = values.map(region_words)
    table = (
        frame.assign(_value=values)
        .groupby(["_value", "label_name"], observed=True)
        .size()
        .unstack(fill_value=0)
    )
    figure = _figure(title)
    present = frame["label_name"].unique().tolist()
    names = (
        ["fractured", "normal"]
        if set(present) <= {"fractured", "normal"}
        else list(dict.fromkeys(frame.sort_values("label")["label_name"]))
    )
    colours = class_colours(names)
    for name in names:
        if name in table.columns:
            figure.add_trace(
                go.Bar(
                    x=table.index.tolist(),
                    y=table[name].tolist(),
                    name=name,
                    marker_color=colours[name],
                )
            )
    figure.update_layout(barmode="stack")
    figure.update_yaxes(title="images")
    return figure


def plural(count: int, word: str, plural_word: str | None = None) -> str:
    """``1 image``, ``3 images``, ``1,204 images``."""
    return f"{count:,} {word if count == 1 else plural_word or word + 's'}"


def size_figure(sizes: "pd.DataFrame") -> "go.Figure":
    """Image width against height, one marker per distinct size, its area by how many share it.

    Many datasets hold a handful of sizes: one dot per file would draw 300
    samples as 3 dots and hide the counts.
    """
    import plotly.graph_objects as go

    grouped = (
        sizes.groupby(["width", "height"]).size().reset_index(name="count")
        if len(sizes)
        else sizes.assign(count=[])
    )
    figure = _figure(
        f"Image sizes ({plural(len(sizes), 'image')} sampled, "
        f"{plural(len(grouped), 'distinct size')})"
    )
    largest = max(1, int(grouped["count"].max())) if len(grouped) else 1
    figure.add_trace(
        go.Scatter(
            x=grouped["width"],
            y=grouped["height"],
            mode="markers",
            customdata=grouped["count"],
            marker={
                "color": COLOUR_VAL,
                "opacity": 0.6,
                "size": [7 + 25 * (n / largest) ** 0.5 for n in grouped["count"]],
            },
            hovertemplate="%{x} x %{y} px: %{customdata} image(s)<extra></extra>",
        )
    )
    # Whole pixels only: a set of one size would otherwise get ticks at 255.5 px.
    figure.update_xaxes(title="width (px)", **_pixel_axis(grouped["width"]))
    figure.update_yaxes(title="height (px)", **_pixel_axis(grouped["height"]))
    return figure


def _pixel_axis(values: "pd.Series", min_span: int = 20) -> dict[str, Any]:
    """Axis settings for pixel counts: integer ticks, and a range at least ``min_span`` px wide."""
    settings: dict[str, Any] = {"tickformat": "d"}
    if len(values):
        low, high = float(values.min()), float(values.max())
        if high - low < min_span:
            middle = (low + high) / 2
            settings["range"] = [middle - min_span / 2 - 2, middle + min_span / 2 + 2]
            settings["dtick"] = min_span // 4
    return settings


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
        margin=_FIGURE_MARGIN,
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
    figure = _figure(title, height=300)
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


def _operating_markers(figure: "go.Figure", report: EvaluationReport) -> None:
    import plotly.graph_objects as go

    for name, point in (report.get("operating_points") or {}).items():
        sensitivity, specificity = point.get("sensitivity"), point.get("specificity")
        if sensitivity is None or specificity is None:
            continue
        figure.add_trace(
            go.Scatter(
                x=[1 - specificity],
                y=[sensitivity],
                mode="markers",
                marker={"size": 11, "symbol": "diamond", "line": {"width": 1, "color": "black"}},
                name=f"{name.replace('_', ' ')} (threshold "
                f"{format_threshold(point.get('threshold', float('nan')))})",
            )
        )


def roc_figure(reports: Mapping[str, EvaluationReport], title: str = "ROC curve") -> "go.Figure":
    """ROC curves of one or more evaluation reports, AUROC in the legend.

    The first report's operating points are marked, so the chosen thresholds
    can be read off the curve.
    """
    import plotly.graph_objects as go

    figure = _figure(title, height=360)
    figure.add_trace(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dash", "color": "#bbb"}
        )
    )
    for index, (name, report) in enumerate(reports.items()):
        roc = report.get("roc")
        if not roc:
            continue
        auroc = report.get("auroc")
        label = f"{name} (AUROC {auroc:.2f})" if auroc is not None else name
        figure.add_trace(
            go.Scatter(
                x=roc["fpr"],
                y=roc["tpr"],
                mode="lines",
                name=label,
                line={"width": 2.5 if index == 0 else 1.5},
            )
        )
        if index == 0:
            _operating_markers(figure, report)
    figure.update_xaxes(title="1 - specificity (false-positive rate)", range=[0, 1])
    figure.update_yaxes(title="sensitivity", range=[0, 1.02])
    figure.update_layout(legend=_LEGEND_BOTTOM_RIGHT)
    return figure


def pr_figure(report: EvaluationReport) -> "go.Figure":
    """Precision-recall curve, with prevalence (a classifier's floor) as a dashed line."""
    import plotly.graph_objects as go

    figure = _figure("Precision-recall curve", height=360)
    pr = report.get("pr")
    if pr:
        pr_auc = report.get("pr_auc")
        name = f"area {pr_auc:.2f}" if pr_auc is not None else "model"
        figure.add_trace(
            go.Scatter(
                x=pr["recall"],
                y=pr["precision"],
                mode="lines",
                name=name,
                line={"color": COLOUR_VAL, "width": 2.5},
            )
        )
    if report.get("prevalence") is not None:
        figure.add_hline(
            y=report["prevalence"],
            line_dash="dash",
            line_color="#bbb",
            annotation_text="prevalence",
        )
    figure.update_xaxes(title="recall (sensitivity)", range=[0, 1])
    figure.update_yaxes(title="precision (PPV)", range=[0, 1.02])
    figure.update_layout(legend=_LEGEND_BOTTOM_LEFT)
    return figure


def reliability_figure(report: EvaluationReport) -> "go.Figure":
    """Reliability diagram: observed fracture rate per probability bin, before and after
    calibration, against the diagonal of perfect calibration.

    The legend sits below the plot area, never over the curves, and carries no figure:
    the page states the one calibration error beside the chart
    (:func:`fracture.model.card.calibration_facts`).
    """
    import plotly.graph_objects as go

    figure = _figure("Reliability (calibration)", height=420)
    figure.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            name="perfect calibration",
            line={"dash": "dash", "color": "#bbb"},
        )
    )
    curves = (
        (report.get("reliability"), "after calibration", COLOUR_VAL),
        (report.get("reliability_uncalibrated"), "before calibration", "#ff7f0e"),
    )
    for curve, name, colour in curves:
        if not curve:
            continue
        points = [
            (x, y, n)
            for x, y, n in zip(
                curve["mean_predicted"], curve["observed_frequency"], curve["counts"]
            )
            if x is not None and y is not None
        ]
        if not points:
            continue
        xs, ys, ns = zip(*points)
        figure.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers",
                name=name,
                line={"color": colour},
                customdata=ns,
                hovertemplate="predicted %{x:.2f}<br>observed %{y:.2f}<br>"
                "n=%{customdata}<extra></extra>",
            )
        )
    figure.update_xaxes(title="mean predicted probability", range=[0, 1])
    figure.update_yaxes(title="observed fracture frequency", range=[0, 1.02])
    # Below the x axis title, outside the plot area, in one row.
    figure.update_layout(
        legend={"orientation": "h", "x": 0, "xanchor": "left", "y": -0.25, "yanchor": "top"},
        margin={**_FIGURE_MARGIN, "b": 90},
    )
    return figure


def _bars_with_intervals(
    figure: "go.Figure",
    bars: Sequence[tuple[str, float, Sequence[float], str]],
    colours: str | Sequence[str],
    hovertemplate: str,
) -> None:
    """One bar per ``(name, value, (low, high), text)``, with its interval as an error bar."""
    import plotly.graph_objects as go

    figure.add_trace(
        go.Bar(
            x=[name for name, _, _, _ in bars],
            y=[value for _, value, _, _ in bars],
            marker_color=colours,
            text=[text for _, _, _, text in bars],
            textposition="inside",
            # At the bar's foot: the interval's whisker runs through the bar's top.
            insidetextanchor="start",
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [max(0.0, high - value) for _, value, (_, high), _ in bars],
                "arrayminus": [max(0.0, value - low) for _, value, (low, _), _ in bars],
            },
            hovertemplate=hovertemplate,
        )
    )


def region_auroc_figure(report: EvaluationReport) -> "go.Figure":
    """AUROC per anatomical region with bootstrap intervals, and without hardware.

    Bars with a single class (AUROC undefined) are left out; the overall AUROC
    is the dashed reference line.
    """
    subgroups = report.get("subgroups") or {}
    entries = dict((subgroups.get("region") or {}).items())
    free = hardware_free_subgroup(report)
    if free:
        entries["without hardware"] = free
    bars = [
        (name, entry["auroc"], entry.get("auroc_ci") or [entry["auroc"]] * 2, f"n={entry.get('n')}")
        for name, entry in entries.items()
        if entry.get("auroc") is not None
    ]
    figure = _figure("AUROC per subgroup (95% bootstrap CI)", height=340)
    colours = ["#9467bd" if name == "without hardware" else COLOUR_VAL for name, _, _, _ in bars]
    _bars_with_intervals(figure, bars, colours, "%{x}: AUROC %{y:.3f}<extra></extra>")
    if report.get("auroc") is not None:
        figure.add_hline(
            y=report["auroc"],
            line_dash="dash",
            line_color="black",
            annotation_text=f"all {report['auroc']:.2f}",
        )
    figure.update_yaxes(title="AUROC", range=[0, 1.05])
    figure.update_layout(showlegend=False)
    return figure


def body_region_accuracy_figure(region_report: Mapping[str, Any]) -> "go.Figure":
    """Validation accuracy of the body-region head per region, with Wilson 95% intervals."""
    bars = [
        (region_words(name), rate["rate"], rate["ci"], f"{rate['hits']}/{rate['n']}")
        for name, rate in (region_report.get("per_region") or {}).items()
        if rate.get("n")
    ]
    figure = _figure("Body region named correctly (95% interval)", height=320)
    _bars_with_intervals(figure, bars, COLOUR_VAL, "%{x}: %{y:.0%} correct<extra></extra>")
    figure.update_yaxes(title="accuracy", range=[0, 1.05], tickformat=".0%")
    figure.update_layout(showlegend=False)
    return figure


# --------------------------------------------------------------------------
# K-class models


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
    figure = _figure("Probability of each class", height=max(160, 40 + 34 * len(names)))
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
    figure = _figure(title, height=380)
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
    figure.update_layout(legend=_LEGEND_BOTTOM_RIGHT)
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
    figure = _figure(title, height=max(300, 120 + 45 * len(names)))
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
    figure = _figure("Sensitivity and precision per class", height=340)
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


# --------------------------------------------------------------------------------------
# Radiographs as zoomable figures


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
