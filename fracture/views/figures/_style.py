"""What every figure shares: the colours, the margins, the legends' places, a blank figure.

Colours are shared by every figure, so "fracture" looks the same on every page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import plotly.graph_objects as go

# Colours shared by every figure, so "fracture" looks the same on every page.
COLOUR_FRACTURE = "#d62728"
COLOUR_NORMAL = "#1f77b4"
COLOUR_TRAIN = "#7f7f7f"
COLOUR_VAL = "#1f6feb"
CLASS_COLOURS = {
    "fractured": COLOUR_FRACTURE,
    "fracture": COLOUR_FRACTURE,
    "normal": COLOUR_NORMAL,
}
# Further classes of a K-class dataset (fracture types, body parts), in class order;
# colour-blind-safe (Okabe and Ito), with the binary red and blue kept for their names.
MORE_COLOURS = ("#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")
FIGURE_MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}
# Curves keep their legend inside the empty corner of the plot, where it never
# collides with the axis title.
LEGEND_BOTTOM_RIGHT = {
    "x": 0.98,
    "y": 0.02,
    "xanchor": "right",
    "yanchor": "bottom",
    "bgcolor": "rgba(255,255,255,0.8)",
    "orientation": "v",
}
LEGEND_BOTTOM_LEFT = {**LEGEND_BOTTOM_RIGHT, "x": 0.02, "xanchor": "left"}


def new_figure(title: str | None = None, height: int = 320) -> "go.Figure":
    import plotly.graph_objects as go

    figure = go.Figure()
    figure.update_layout(
        title=title,
        height=height,
        margin=FIGURE_MARGIN,
        template="plotly_white",
        legend={"orientation": "h", "y": -0.2},
    )
    return figure


def class_colours(names: Sequence[str]) -> dict[str, str]:
    """One colour per class: the fracture red and normal blue by name, others in turn."""
    others = iter(MORE_COLOURS * (len(names) // len(MORE_COLOURS) + 1))
    return {name: CLASS_COLOURS.get(name.lower()) or next(others) for name in names}
