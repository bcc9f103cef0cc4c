"""What the dashboard shows, computed without Streamlit: tables, downloads, images, figures.

The Streamlit pages (``app.py``, ``pages/``) only lay out widgets; everything
they display is built here from the project's own objects (``Prediction``,
``Dataset``, model cards, ``evaluation.json``, a run's ``status.json`` and
``metrics.json``). Keeping this module free of Streamlit means each table,
download and figure is tested as a plain function, and a notebook can reuse
them.

Labels follow the Predictor's rule everywhere: a case is ``fracture`` when its
probability is at least the threshold of the chosen operating point.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from fracture.inference.gradcam import overlay_heatmap
from fracture.io.images import load_image
from fracture.inference.predictor import CSV_COLUMNS, FRACTURE, NORMAL, Prediction

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

__all__ = [
    "BAND_FRACTURE",
    "BAND_NORMAL",
    "BAND_UNCERTAIN",
    "RESULT_COLUMNS",
    "RunProgress",
    "batch_counts",
    "breakdown_figure",
    "card_headline",
    "class_balance_figure",
    "compare_metrics",
    "confidence_band",
    "confusion_figure",
    "draw_boxes",
    "encode_png",
    "filter_frame",
    "format_duration",
    "image_sizes",
    "label_for",
    "load_thumbnail",
    "overlay_member_name",
    "overlay_zip",
    "page_count",
    "page_slice",
    "pr_figure",
    "predictions_csv",
    "probability_gauge",
    "probability_histogram",
    "region_auroc_figure",
    "reliability_figure",
    "results_frame",
    "roc_figure",
    "run_progress",
    "size_figure",
    "thumbnail",
    "training_curves_figure",
]

# Confidence bands, named for the person reading them rather than for the model.
BAND_NORMAL = "clearly normal"
BAND_UNCERTAIN = "uncertain"
BAND_FRACTURE = "likely fracture"
# Half-width of the "uncertain" band, in logits around the threshold: a factor of
# e (about 2.7) in the odds either way. Measured in logits rather than in
# probability so that the band means the same thing for a threshold of 0.05
# (high sensitivity) as for 0.5, where a fixed +-0.1 would swallow every
# normal case below a low threshold.
UNCERTAIN_LOGIT_MARGIN = 1.0
_PROBABILITY_EPS = 1e-6

# Columns of the on-screen results table (the CSV download uses CSV_COLUMNS, as the CLI).
RESULT_COLUMNS = (
    "file", "probability", "label", "confidence", "status", "error", "in_distribution",
)  # fmt: skip

# Colours shared by every figure, so "fracture" looks the same on every page.
COLOUR_FRACTURE = "#d62728"
COLOUR_NORMAL = "#1f77b4"
COLOUR_TRAIN = "#7f7f7f"
COLOUR_VAL = "#1f6feb"
COLOUR_BOX = (255, 48, 48)  # RGB
_CLASS_COLOURS = {"fractured": COLOUR_FRACTURE, "fracture": COLOUR_FRACTURE,
                  "normal": COLOUR_NORMAL}  # fmt: skip
_FIGURE_MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}
# Curves keep their legend inside the empty corner of the plot, where it never
# collides with the axis title.
_LEGEND_BOTTOM_RIGHT = {"x": 0.98, "y": 0.02, "xanchor": "right", "yanchor": "bottom",
                        "bgcolor": "rgba(255,255,255,0.8)", "orientation": "v"}  # fmt: skip
_LEGEND_BOTTOM_LEFT = {**_LEGEND_BOTTOM_RIGHT, "x": 0.02, "xanchor": "left"}


# --------------------------------------------------------------------------------------
# Predictions: labels, bands, tables and downloads


def label_for(probability: float, threshold: float) -> str:
    """``fracture`` or ``normal`` at ``threshold``, with the Predictor's ``>=`` rule."""
    return FRACTURE if probability >= threshold else NORMAL


def _logit(probability: float) -> float:
    p = min(max(float(probability), _PROBABILITY_EPS), 1.0 - _PROBABILITY_EPS)
    return math.log(p / (1.0 - p))


def confidence_band(
    probability: float, threshold: float, margin: float = UNCERTAIN_LOGIT_MARGIN
) -> str:
    """How far a probability sits from the decision threshold, in words.

    Within ``margin`` logits of the threshold the result is ``uncertain``: a
    small change in exposure or positioning could flip the label, so a person
    should look. Further below it is ``clearly normal``, further above ``likely
    fracture`` (never "clearly": this is a research model, not a diagnosis).
    """
    if margin <= 0:
        raise ValueError(f"margin must be positive, got {margin}")
    distance = _logit(probability) - _logit(threshold)
    if distance >= margin:
        return BAND_FRACTURE
    if distance <= -margin:
        return BAND_NORMAL
    return BAND_UNCERTAIN


def _relabelled(prediction: Prediction, threshold: float) -> Prediction:
    """``prediction`` as seen at ``threshold`` (the sidebar's operating point)."""
    if not prediction.ok or prediction.probability is None:
        return prediction
    return dataclasses.replace(
        prediction, label=label_for(prediction.probability, threshold), threshold=threshold
    )


def results_frame(predictions: Sequence[Prediction], threshold: float) -> "pd.DataFrame":
    """One row per input, most suspicious first, failed inputs last.

    The frame's index is each prediction's position in ``predictions``, so a
    row picked in the table leads back to its input whatever the sort order.
    """
    import pandas as pd

    rows = []
    for position, prediction in enumerate(predictions):
        ok = prediction.ok and prediction.probability is not None
        rows.append(
            {
                "position": position,
                "file": prediction.source,
                "probability": prediction.probability if ok else None,
                "label": label_for(prediction.probability, threshold) if ok else None,
                "confidence": confidence_band(prediction.probability, threshold) if ok else None,
                "status": prediction.status,
                "error": prediction.error or "",
                "in_distribution": prediction.in_distribution,
            }
        )
    frame = pd.DataFrame(rows, columns=["position", *RESULT_COLUMNS])
    # A failed input shows empty cells, not "None" or "nan".
    frame[["label", "confidence"]] = frame[["label", "confidence"]].fillna("")
    frame = frame.astype({"probability": "Float64", "in_distribution": "boolean"})
    # Sort key: errors after every scored image, then by falling probability;
    # position breaks ties so equal scores keep the upload order.
    frame["_failed"] = frame["probability"].isna()
    frame = frame.sort_values(
        ["_failed", "probability", "position"], ascending=[True, False, True], na_position="last"
    )
    return frame.drop(columns="_failed").set_index("position")


def predictions_csv(predictions: Iterable[Prediction], threshold: float) -> bytes:
    """The CLI's CSV (:data:`fracture.inference.predictor.CSV_COLUMNS`) in input order, labels at ``threshold``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for prediction in predictions:
        writer.writerow(_relabelled(prediction, threshold).row())
    return buffer.getvalue().encode("utf-8")


def batch_counts(predictions: Sequence[Prediction], threshold: float) -> dict[str, int]:
    """Counts for the batch summary: per label, failed, and flagged out of distribution."""
    counts = {FRACTURE: 0, NORMAL: 0, "error": 0, "out_of_distribution": 0}
    for prediction in predictions:
        if not prediction.ok or prediction.probability is None:
            counts["error"] += 1
            continue
        counts[label_for(prediction.probability, threshold)] += 1
        if prediction.in_distribution is False:
            counts["out_of_distribution"] += 1
    return counts


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB (or greyscale) uint8 image."""
    array = np.ascontiguousarray(image)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 array as PNG
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()


_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._ -]+")


def overlay_member_name(source: str) -> str:
    """A safe ZIP member name for the overlay of ``source``: ``<folders>/<stem>_gradcam.png``.

    Folder uploads name files by their relative path, which may hold ``..`` or
    odd characters; the member keeps the folder structure (files with the same
    name in two folders stay apart) but can never escape the archive's root.
    """
    parts = [
        _UNSAFE_CHARS.sub("_", part).strip(" .") or "_"
        for part in PurePosixPath(source.replace("\\", "/")).parts
        if part not in ("", "/", ".", "..")
    ]
    if not parts:
        parts = ["image"]
    stem = PurePosixPath(parts[-1]).stem or "image"
    return "/".join([*parts[:-1], f"{stem}_gradcam.png"])


def overlay_zip(predictions: Iterable[Prediction], alpha: float) -> bytes:
    """A ZIP of Grad-CAM overlay PNGs, built one image at a time.

    ``predictions`` is typically ``Predictor.iter_predict(..., with_cam=True)``:
    it is consumed lazily, so a large batch never holds every decoded image in
    memory at once. Failed inputs, and inputs without a heat map, are listed
    in ``errors.txt`` instead.
    """
    buffer = io.BytesIO()
    used: set[str] = set()
    problems: list[str] = []
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        # PNG is already deflated; storing avoids compressing twice for nothing.
        for prediction in predictions:
            if not prediction.ok or prediction.image is None or prediction.heatmap is None:
                problems.append(f"{prediction.source}: {prediction.error or 'no heat map'}")
                continue
            name = overlay_member_name(prediction.source)
            base, counter = name, 1
            while name in used:
                counter += 1
                name = base.replace("_gradcam.png", f"_{counter}_gradcam.png")
            used.add(name)
            overlay = overlay_heatmap(prediction.image, prediction.heatmap, alpha)
            archive.writestr(name, encode_png(overlay))
        if problems:
            archive.writestr("errors.txt", "\n".join(problems) + "\n")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------
# Dataset browsing: thumbnails, boxes, sizes, filters, pages


def thumbnail(image: np.ndarray, max_side: int = 256) -> np.ndarray:
    """``image`` shrunk (never enlarged) so that its longer side is at most ``max_side``."""
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # INTER_AREA averages when shrinking, so thin cortical lines stay visible.
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def draw_boxes(
    image: np.ndarray,
    boxes: Iterable[Sequence[float]],
    colour: tuple[int, int, int] = COLOUR_BOX,
    thickness: int | None = None,
) -> np.ndarray:
    """A copy of ``image`` with normalised ``(x0, y0, x1, y1)`` boxes drawn on it."""
    out = np.ascontiguousarray(image).copy()
    height, width = out.shape[:2]
    if thickness is None:
        thickness = max(1, round(max(height, width) / 128))
    for box in boxes:
        x0, y0, x1, y1 = (float(value) for value in box)
        top_left = (int(round(x0 * (width - 1))), int(round(y0 * (height - 1))))
        bottom_right = (int(round(x1 * (width - 1))), int(round(y1 * (height - 1))))
        cv2.rectangle(out, top_left, bottom_right, colour, thickness)
    return out


def load_thumbnail(
    path: str | os.PathLike[str],
    boxes: Iterable[Sequence[float]] = (),
    max_side: int = 256,
) -> np.ndarray:
    """Decode a dataset image, shrink it and draw its fracture boxes.

    Decoding goes through :func:`fracture.io.images.load_image`, so DICOM, 16-bit
    and EXIF-rotated files look as the model sees them; an unreadable file
    raises :class:`fracture.io.images.InvalidImageError`. Boxes are drawn after
    shrinking so the lines keep their width.
    """
    small = thumbnail(load_image(path), max_side)
    return draw_boxes(small, boxes)


def image_sizes(
    paths: Sequence[str | os.PathLike[str]], limit: int = 300, seed: int = 0
) -> tuple["pd.DataFrame", list[str]]:
    """Width and height of up to ``limit`` files (a seeded sample), read from headers only.

    Opening with Pillow reads only the header, so this costs milliseconds per
    file even for large radiographs; DICOM sizes come from the Rows/Columns
    tags without the pixel data. Returns the sizes and ``"path: reason"`` for
    each file whose header could not be read.
    """
    import pandas as pd

    chosen = list(paths)
    if len(chosen) > limit:
        order = np.random.default_rng(seed).choice(len(chosen), size=limit, replace=False)
        chosen = [chosen[i] for i in sorted(order)]
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for path in chosen:
        try:
            width, height = _header_size(Path(path))
        except Exception as error:  # noqa: BLE001 - any unreadable header is reported, not fatal
            problems.append(f"{path}: {error}")
            continue
        rows.append({"path": str(path), "width": width, "height": height})
    return pd.DataFrame(rows, columns=["path", "width", "height"]), problems


def _header_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except UnidentifiedImageError:
        import pydicom

        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
        return int(header.Columns), int(header.Rows)


def filter_frame(
    frame: "pd.DataFrame",
    *,
    split: str | None = None,
    label_name: str | None = None,
    region: str | None = None,
) -> "pd.DataFrame":
    """Rows of a ``Dataset.to_frame()`` matching every given filter (None = any)."""
    mask = np.ones(len(frame), dtype=bool)
    if split is not None:
        mask &= (frame["split"] == split).to_numpy()
    if label_name is not None:
        mask &= (frame["label_name"] == label_name).to_numpy()
    if region is not None:
        mask &= (frame["region"].fillna("unknown") == region).to_numpy()
    return frame[mask]


def page_count(n_items: int, per_page: int) -> int:
    """Number of pages needed for ``n_items``; at least 1, so an empty grid has page 1."""
    if per_page < 1:
        raise ValueError(f"per_page must be positive, got {per_page}")
    return max(1, math.ceil(n_items / per_page))


def page_slice(n_items: int, page: int, per_page: int) -> slice:
    """The items on 1-based ``page``, clamped to the last page (filters can shrink the list)."""
    page = min(max(1, page), page_count(n_items, per_page))
    start = (page - 1) * per_page
    return slice(start, min(start + per_page, n_items))


# --------------------------------------------------------------------------------------
# Training runs and model cards


@dataclass(frozen=True)
class RunProgress:
    """A run's ``status.json`` read for display."""

    state: str
    phase: str
    fraction: float | None  # overall progress in [0, 1], None when unknown
    text: str
    eta: str | None
    finished: bool


_FINISHED_STATES = frozenset({"completed", "failed", "cancelled", "interrupted", "error"})


def format_duration(seconds: float | None) -> str | None:
    """``3 h 05 min``, ``12 min 30 s`` or ``45 s``; None for a missing or negative value."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def run_progress(status: Mapping[str, Any]) -> RunProgress:
    """Overall progress of a run from its status, for a progress bar and a caption.

    Feature caching reports ``done``/``total`` images; epochs report
    ``epoch``/``epochs`` and ``batch``/``batches``. Caching is counted as a
    phase of its own: its fraction is of the caching, not of the whole run.
    """
    state = str(status.get("state", "unknown"))
    phase = str(status.get("phase") or state)
    message = str(status.get("message") or "")
    finished = state in _FINISHED_STATES
    fraction: float | None = None
    if state == "completed":
        fraction = 1.0
    elif isinstance(status.get("epoch"), int) and status.get("epochs"):
        epochs = int(status["epochs"])
        within = 0.0
        if status.get("batches"):
            within = min(1.0, int(status.get("batch") or 0) / int(status["batches"]))
        fraction = min(1.0, (int(status["epoch"]) - 1 + within) / epochs)
    elif status.get("total"):
        fraction = min(1.0, int(status.get("done") or 0) / int(status["total"]))
    eta = None if finished else format_duration(status.get("eta_seconds"))
    text = message or phase
    return RunProgress(state=state, phase=phase, fraction=fraction, text=text, eta=eta,
                       finished=finished)  # fmt: skip


def card_headline(card: Mapping[str, Any] | None) -> dict[str, Any]:
    """Name, version and validation AUROC (with its interval) from a model card."""
    card = card or {}
    metrics = card.get("val_metrics") or {}
    return {
        "name": card.get("name"),
        "version": card.get("version"),
        "val_auroc": metrics.get("auroc"),
        "val_auroc_ci": metrics.get("auroc_ci"),
    }


_COMPARED = (
    ("auroc", "AUROC"),
    ("pr_auc", "PR-AUC"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("hardware_free_auroc", "AUROC without hardware"),
    ("brier", "Brier (lower is better)"),
    ("ece", "ECE (lower is better)"),
)


def compare_metrics(
    candidate: Mapping[str, Any] | None, active: Mapping[str, Any] | None
) -> "pd.DataFrame":
    """Validation metrics of a new model next to the active one's, from their cards.

    Each model is judged on its own validation split, so the comparison is only
    fair when both were trained on the same dataset; the page says so.
    """
    import pandas as pd

    new = (candidate or {}).get("val_metrics") or {}
    old = (active or {}).get("val_metrics") or {}
    rows = []
    for key, title in _COMPARED:
        if key not in new and key not in old:
            continue
        a, b = new.get(key), old.get(key)
        rows.append({
            "metric": title,
            "new model": a,
            "active model": b,
            "difference": a - b if isinstance(a, (int, float)) and isinstance(b, (int, float))
            else None,
        })  # fmt: skip
    frame = pd.DataFrame(rows, columns=["metric", "new model", "active model", "difference"])
    return frame.astype({column: "Float64" for column in ("new model", "active model", "difference")})


# --------------------------------------------------------------------------------------
# Figures (plotly)


def _figure(title: str | None = None, height: int = 320) -> "go.Figure":
    import plotly.graph_objects as go

    figure = go.Figure()
    figure.update_layout(
        title=title, height=height, margin=_FIGURE_MARGIN, template="plotly_white",
        legend={"orientation": "h", "y": -0.2},
    )  # fmt: skip
    return figure


def probability_gauge(probability: float, threshold: float, title: str = "") -> "go.Figure":
    """A 0-100 % gauge of the fracture probability with the threshold marked as a line."""
    import plotly.graph_objects as go

    colour = COLOUR_FRACTURE if probability >= threshold else COLOUR_NORMAL
    figure = go.Figure(
        go.Indicator(
            mode="gauge+number",
            value=100.0 * probability,
            number={"suffix": " %", "valueformat": ".1f"},
            title={"text": title} if title else None,
            gauge={
                "axis": {"range": [0, 100], "ticksuffix": "%"},
                "bar": {"color": colour},
                "steps": [
                    {"range": [0, 100.0 * threshold], "color": "#e8f1fb"},
                    {"range": [100.0 * threshold, 100], "color": "#fbe9e9"},
                ],
                "threshold": {"line": {"color": "black", "width": 4}, "thickness": 0.9,
                              "value": 100.0 * threshold},  # fmt: skip
            },
        )
    )
    figure.update_layout(height=230, margin={"l": 40, "r": 40, "t": 30, "b": 20})
    return figure


def probability_histogram(probabilities: Sequence[float], threshold: float) -> "go.Figure":
    """Histogram of a batch's probabilities in 5 % bins, the threshold as a dashed line."""
    import plotly.graph_objects as go

    values = np.asarray([p for p in probabilities if p is not None], dtype=float)
    figure = _figure(f"Fracture probabilities (dashed: threshold {threshold:.2f})", height=300)
    figure.add_trace(go.Histogram(
        x=values, xbins={"start": 0.0, "end": 1.0, "size": 0.05}, marker_color=COLOUR_VAL,
        name="images",
    ))  # fmt: skip
    figure.add_vline(x=threshold, line_dash="dash", line_color="black")
    figure.update_xaxes(range=[0, 1], title="probability of fracture")
    figure.update_yaxes(title="images")
    figure.update_layout(showlegend=False)
    return figure


def class_balance_figure(summary: Mapping[str, Mapping[str, int]]) -> "go.Figure":
    """Images per split and class from ``Dataset.summary()``."""
    import plotly.graph_objects as go

    splits = list(summary)
    figure = _figure("Class balance per split")
    for name in ("fractured", "normal"):
        counts = [summary[split].get(name, 0) for split in splits]
        figure.add_trace(go.Bar(x=splits, y=counts, name=name, marker_color=_CLASS_COLOURS[name],
                                text=counts, textposition="auto"))  # fmt: skip
    figure.update_layout(barmode="group")
    figure.update_yaxes(title="images")
    return figure


def breakdown_figure(frame: "pd.DataFrame", column: str, title: str) -> "go.Figure":
    """Images per value of ``column`` (e.g. region, hardware), stacked by class."""
    import plotly.graph_objects as go

    values = frame[column].astype("object").where(frame[column].notna(), "unknown").astype(str)
    table = (
        frame.assign(_value=values)
        .groupby(["_value", "label_name"], observed=True)
        .size()
        .unstack(fill_value=0)
    )
    figure = _figure(title)
    for name in ("fractured", "normal"):
        if name in table.columns:
            figure.add_trace(go.Bar(x=table.index.tolist(), y=table[name].tolist(), name=name,
                                    marker_color=_CLASS_COLOURS[name]))  # fmt: skip
    figure.update_layout(barmode="stack")
    figure.update_yaxes(title="images")
    return figure


def size_figure(sizes: "pd.DataFrame") -> "go.Figure":
    """Image width against height, one point per sampled file."""
    import plotly.graph_objects as go

    figure = _figure(f"Image sizes (sample of {len(sizes)})")
    figure.add_trace(go.Scatter(
        x=sizes["width"], y=sizes["height"], mode="markers", text=sizes["path"].map(
            lambda p: Path(p).name), marker={"color": COLOUR_VAL, "opacity": 0.6, "size": 7},
        hovertemplate="%{text}<br>%{x} x %{y} px<extra></extra>",
    ))  # fmt: skip
    figure.update_xaxes(title="width (px)")
    figure.update_yaxes(title="height (px)")
    return figure


def training_curves_figure(history: Sequence[Mapping[str, Any]]) -> "go.Figure":
    """Loss and AUROC per epoch for train and val, the head/fine-tune switch marked."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "AUROC"))
    epochs = [row.get("epoch") for row in history]
    for col, metric in ((1, "loss"), (2, "auroc")):
        for split, colour in (("train", COLOUR_TRAIN), ("val", COLOUR_VAL)):
            values = [row.get(f"{split}_{metric}") for row in history]
            figure.add_trace(
                go.Scatter(x=epochs, y=values, mode="lines+markers", name=f"{split}",
                           line={"color": colour}, legendgroup=split, showlegend=col == 1),
                row=1, col=col,
            )  # fmt: skip
    switch = next(
        (row.get("epoch") for row in history if row.get("phase") == "fine-tune"), None
    )
    if switch is not None and len(history) > 1:
        for col in (1, 2):
            figure.add_vline(x=switch - 0.5, line_dash="dot", line_color="#999", row=1, col=col)
        figure.add_annotation(x=switch - 0.5, y=1.0, yref="y2 domain", xref="x2",
                              text="fine-tune", showarrow=False, yanchor="bottom")  # fmt: skip
    figure.update_xaxes(title="epoch", dtick=1)
    figure.update_yaxes(range=[0, 1.02], row=1, col=2)
    figure.update_layout(height=320, margin=_FIGURE_MARGIN, template="plotly_white",
                         legend={"orientation": "h", "y": -0.25})  # fmt: skip
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
    figure.add_trace(go.Heatmap(
        z=values, x=[f"predicted {n}" for n in names], y=[f"true {n}" for n in names],
        text=values, texttemplate="%{text}", textfont={"size": 18}, colorscale="Blues",
        showscale=False, hovertemplate="%{y}, %{x}: %{z}<extra></extra>",
    ))  # fmt: skip
    figure.update_yaxes(autorange="reversed")
    return figure


def _operating_markers(figure: "go.Figure", report: Mapping[str, Any]) -> None:
    import plotly.graph_objects as go

    for name, point in (report.get("operating_points") or {}).items():
        sensitivity, specificity = point.get("sensitivity"), point.get("specificity")
        if sensitivity is None or specificity is None:
            continue
        figure.add_trace(go.Scatter(
            x=[1 - specificity], y=[sensitivity], mode="markers",
            marker={"size": 11, "symbol": "diamond", "line": {"width": 1, "color": "black"}},
            name=f"{name.replace('_', ' ')} (t={point.get('threshold', float('nan')):.2f})",
        ))  # fmt: skip


def roc_figure(reports: Mapping[str, Mapping[str, Any]], title: str = "ROC curve") -> "go.Figure":
    """ROC curves of one or more evaluation reports, AUROC in the legend.

    The first report's operating points are marked, so the chosen thresholds
    can be read off the curve.
    """
    import plotly.graph_objects as go

    figure = _figure(title, height=360)
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                                line={"dash": "dash", "color": "#bbb"}))  # fmt: skip
    for index, (name, report) in enumerate(reports.items()):
        roc = report.get("roc")
        if not roc:
            continue
        auroc = report.get("auroc")
        label = f"{name} (AUROC {auroc:.3f})" if auroc is not None else name
        figure.add_trace(go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name=label,
                                    line={"width": 2.5 if index == 0 else 1.5}))  # fmt: skip
        if index == 0:
            _operating_markers(figure, report)
    figure.update_xaxes(title="1 - specificity (false-positive rate)", range=[0, 1])
    figure.update_yaxes(title="sensitivity", range=[0, 1.02])
    figure.update_layout(legend=_LEGEND_BOTTOM_RIGHT)
    return figure


def pr_figure(report: Mapping[str, Any]) -> "go.Figure":
    """Precision-recall curve, with prevalence (a classifier's floor) as a dashed line."""
    import plotly.graph_objects as go

    figure = _figure("Precision-recall curve", height=360)
    pr = report.get("pr")
    if pr:
        pr_auc = report.get("pr_auc")
        name = f"PR-AUC {pr_auc:.3f}" if pr_auc is not None else "model"
        figure.add_trace(go.Scatter(x=pr["recall"], y=pr["precision"], mode="lines", name=name,
                                    line={"color": COLOUR_VAL, "width": 2.5}))  # fmt: skip
    if report.get("prevalence") is not None:
        figure.add_hline(y=report["prevalence"], line_dash="dash", line_color="#bbb",
                         annotation_text="prevalence")  # fmt: skip
    figure.update_xaxes(title="recall (sensitivity)", range=[0, 1])
    figure.update_yaxes(title="precision (PPV)", range=[0, 1.02])
    figure.update_layout(legend=_LEGEND_BOTTOM_LEFT)
    return figure


def reliability_figure(report: Mapping[str, Any]) -> "go.Figure":
    """Reliability diagram: observed fracture rate per probability bin, before and after
    temperature scaling, against the diagonal of perfect calibration."""
    import plotly.graph_objects as go

    figure = _figure("Reliability (calibration)", height=360)
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                                line={"dash": "dash", "color": "#bbb"}))  # fmt: skip
    curves = (
        ("reliability", "calibrated", report.get("ece"), COLOUR_VAL),
        ("reliability_uncalibrated", "before scaling", report.get("ece_uncalibrated"), "#ff7f0e"),
    )
    for key, name, ece, colour in curves:
        curve = report.get(key)
        if not curve:
            continue
        points = [
            (x, y, n)
            for x, y, n in zip(curve["mean_predicted"], curve["observed_frequency"],
                               curve["counts"])  # fmt: skip
            if x is not None and y is not None
        ]
        if not points:
            continue
        xs, ys, ns = zip(*points)
        label = f"{name} (ECE {ece:.3f})" if ece is not None else name
        figure.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines+markers", name=label, line={"color": colour},
            customdata=ns, hovertemplate="predicted %{x:.2f}<br>observed %{y:.2f}<br>"
            "n=%{customdata}<extra></extra>",
        ))  # fmt: skip
    figure.update_xaxes(title="mean predicted probability", range=[0, 1])
    figure.update_yaxes(title="observed fracture frequency", range=[0, 1.02])
    figure.update_layout(legend={**_LEGEND_BOTTOM_LEFT, "y": 0.98, "yanchor": "top"})
    return figure


def region_auroc_figure(report: Mapping[str, Any]) -> "go.Figure":
    """AUROC per anatomical region with bootstrap intervals, and without hardware.

    Bars with a single class (AUROC undefined) are left out; the overall AUROC
    is the dashed reference line.
    """
    import plotly.graph_objects as go

    subgroups = report.get("subgroups") or {}
    entries = dict((subgroups.get("region") or {}).items())
    if subgroups.get("hardware_free"):
        entries["without hardware"] = subgroups["hardware_free"]
    names, values, lower, upper, texts = [], [], [], [], []
    for name, entry in entries.items():
        auroc = entry.get("auroc")
        if auroc is None:
            continue
        ci = entry.get("auroc_ci") or [auroc, auroc]
        names.append(name)
        values.append(auroc)
        lower.append(max(0.0, auroc - ci[0]))
        upper.append(max(0.0, ci[1] - auroc))
        texts.append(f"n={entry.get('n')}")
    figure = _figure("AUROC per subgroup (95% bootstrap CI)", height=340)
    colours = ["#9467bd" if name == "without hardware" else COLOUR_VAL for name in names]
    figure.add_trace(go.Bar(
        x=names, y=values, marker_color=colours, text=texts, textposition="inside",
        error_y={"type": "data", "symmetric": False, "array": upper, "arrayminus": lower},
        hovertemplate="%{x}: AUROC %{y:.3f}<extra></extra>",
    ))  # fmt: skip
    if report.get("auroc") is not None:
        figure.add_hline(y=report["auroc"], line_dash="dash", line_color="black",
                         annotation_text=f"all {report['auroc']:.3f}")  # fmt: skip
    figure.update_yaxes(title="AUROC", range=[0, 1.05])
    figure.update_layout(showlegend=False)
    return figure
