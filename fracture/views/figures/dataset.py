"""The Dataset page's figures: class balance, breakdowns, image sizes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fracture.data.records import region_words, summary_classes
from fracture.views.figures._style import (
    COLOUR_VAL,
    class_colours,
    new_figure,
)

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go


def class_balance_figure(summary: Mapping[str, Mapping[str, int]]) -> "go.Figure":
    """Images per split and class from ``Dataset.summary()`` (two classes or K)."""
    import plotly.graph_objects as go

    splits = list(summary)
    names = summary_classes(summary)
    colours = class_colours(names)
    figure = new_figure("Class balance per split")
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
    figure = new_figure(title)
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
    figure = new_figure(
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
