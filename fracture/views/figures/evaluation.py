"""The Model page's figures of a binary report: ROC, PR, reliability, per-region AUROC."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fracture.data.records import region_words
from fracture.model.reports import EvaluationReport
from fracture.views.figures._style import (
    COLOUR_VAL,
    FIGURE_MARGIN,
    LEGEND_BOTTOM_LEFT,
    LEGEND_BOTTOM_RIGHT,
    new_figure,
)
from fracture.views.results import format_threshold
from fracture.views.summaries import hardware_free_subgroup

if TYPE_CHECKING:
    import plotly.graph_objects as go


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

    figure = new_figure(title, height=360)
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
    figure.update_layout(legend=LEGEND_BOTTOM_RIGHT)
    return figure


def pr_figure(report: EvaluationReport) -> "go.Figure":
    """Precision-recall curve, with prevalence (a classifier's floor) as a dashed line."""
    import plotly.graph_objects as go

    figure = new_figure("Precision-recall curve", height=360)
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
    figure.update_layout(legend=LEGEND_BOTTOM_LEFT)
    return figure


def reliability_figure(report: EvaluationReport) -> "go.Figure":
    """Reliability diagram: observed fracture rate per probability bin, before and after
    calibration, against the diagonal of perfect calibration.

    The legend sits below the plot area, never over the curves, and carries no figure:
    the page states the one calibration error beside the chart
    (:func:`fracture.model.card.calibration_facts`).
    """
    import plotly.graph_objects as go

    figure = new_figure("Reliability (calibration)", height=420)
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
        margin={**FIGURE_MARGIN, "b": 90},
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
    figure = new_figure("AUROC per subgroup (95% bootstrap CI)", height=340)
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
    figure = new_figure("Body region named correctly (95% interval)", height=320)
    _bars_with_intervals(figure, bars, COLOUR_VAL, "%{x}: %{y:.0%} correct<extra></extra>")
    figure.update_yaxes(title="accuracy", range=[0, 1.05], tickformat=".0%")
    figure.update_layout(showlegend=False)
    return figure
