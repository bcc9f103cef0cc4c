"""What the Predict page shows, computed without Streamlit: verdicts, honest numbers, tables, downloads.

The Streamlit pages (``app.py``, ``app_pages/``) only lay out widgets; everything
they display is built in :mod:`fracture.views` from the project's own objects
(``Prediction``, ``Dataset``, model cards, ``evaluation.json``, a run's
``status.json`` and ``metrics.json``). Keeping these modules free of Streamlit
means each table, download and figure is tested as a plain function, and a
notebook can reuse them.

Labels follow the one verdict (:mod:`fracture.inference.verdict`) everywhere: a case
is ``fracture`` when its probability is at least the threshold of the chosen
operating point, and an input the out-of-distribution gate flags is not assessed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
import re
import threading
import zipfile
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from fracture.data.records import region_words
from fracture.inference.gradcam import overlay_heatmap
from fracture.inference.prediction import Prediction, csv_columns
from fracture.inference.predictor import with_class_map
from fracture.inference.verdict import (
    FRACTURE,
    NORMAL,
    OUT_OF_DISTRIBUTION_REASON,
    RESEARCH_BANNER,
    decide,
)
from fracture.inference.verdict import NOT_ASSESSED as CSV_NOT_ASSESSED
from fracture.model.folder import ModelConfig
from fracture.views.overlays import (
    VIEW_NAMES,
    WHERE,
    WHY,
    MarkedBox,
    boxes_at,
    draw_boxes,
    map_for,
    map_unit,
    views_of,
)

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

__all__ = [
    "body_region_text",
    "BAND_FRACTURE",
    "BAND_NORMAL",
    "BAND_UNCERTAIN",
    "CSV_CONTEXT_COLUMNS",
    "CSV_NOT_ASSESSED",
    "DISPLAY_CEILING",
    "DISPLAY_FLOOR",
    "NOT_ASSESSED",
    "NOT_ASSESSED_REASON",
    "RESULT_COLUMNS",
    "UNCERTAIN_LOGIT_MARGIN",
    "batch_counts",
    "class_results_frame",
    "confidence_band",
    "encode_png",
    "annotated_overlay",
    "with_colour_bar",
    "format_probability",
    "format_threshold",
    "exact_percent",
    "heat_for_class",
    "is_assessed",
    "label_for",
    "verdict",
    "overlay_banner",
    "overlay_member_name",
    "overlay_png",
    "overlay_pool",
    "overlay_problem",
    "overlay_zip",
    "OverlayArchive",
    "predictions_csv",
    "results_frame",
    "row_selection",
    "selected_row",
    "step_row",
]

# Confidence bands say what they measure: how far the probability sits from the
# decision threshold, not how sure anyone is of the diagnosis.
BAND_NORMAL = "far below the threshold"
BAND_UNCERTAIN = "close to the threshold"
BAND_FRACTURE = "far above the threshold"
# The verdict for an input the out-of-distribution gate flags: the model cannot
# judge it, so it gets neither label (shown on pages and counted in batches).
NOT_ASSESSED = "not assessed"
# The same verdict in the CSV's ``prediction`` column (documented in the README) is
# CSV_NOT_ASSESSED, fracture.inference.verdict's NOT_ASSESSED.
NOT_ASSESSED_REASON = (
    f"{OUT_OF_DISTRIBUTION_REASON[0].upper()}{OUT_OF_DISTRIBUTION_REASON[1:]} "
    "(out-of-distribution check), so the model cannot judge it. Casts, plates, several body "
    "parts in one image, photographs and other modalities all trigger this."
)
# Half-width of the "close to the threshold" band, in logits around the threshold: a factor of
# e (about 2.7) in the odds either way. Measured in logits rather than in
# probability so that the band means the same thing for a threshold of 0.05
# (high sensitivity) as for 0.5, where a fixed +-0.1 would swallow every
# normal case below a low threshold.
UNCERTAIN_LOGIT_MARGIN = 1.0
# A calibrated probability from a validation split of a few hundred images
# cannot tell 99.6 % from 100 %: below and above these bounds it is shown as a bound.
DISPLAY_FLOOR = 0.01
DISPLAY_CEILING = 0.99
_PROBABILITY_EPS = 1e-6

# Columns of the on-screen results table (the CSV download uses the CLI's columns).
RESULT_COLUMNS = (
    "file",
    "probability",
    "shown_probability",
    "label",
    "confidence",
    "in_distribution",
    "body_region",
    "caution",
    "error",
)
# Extra columns of the dashboard's CSV, after the CLI's: which model, at which operating point.
CSV_CONTEXT_COLUMNS = ("model_name", "model_version", "operating_point")


def body_region_text(prediction: Prediction) -> str | None:
    """The body region in words ("hand", "several regions", "uncertain"), or None without one.

    None when the model has no region head or did not assess the image (see
    :mod:`fracture.inference.region`); "uncertain" when the head was unsure.
    """
    if prediction.body_region is not None:
        return region_words(prediction.body_region)
    if prediction.body_region_probability is not None:
        return "uncertain"
    return None


def label_for(probability: float, threshold: float) -> str:
    """``fracture`` or ``normal`` at ``threshold``: the verdict of an assessed image."""
    return str(decide(probability, threshold, in_distribution=True).label)


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


def format_probability(probability: float | None) -> str:
    """A probability as whole percent, never ``0 %`` or ``100 %``: ``< 1%``, ``18%``, ``> 99%``.

    Whole percent is what a calibration fitted on a few hundred validation
    images can bear; the ends are shown as bounds because the model is never
    certain.
    """
    if probability is None or not math.isfinite(probability):
        return ""
    if probability < DISPLAY_FLOOR:
        return "< 1%"
    if probability > DISPLAY_CEILING:
        return "> 99%"
    return f"{100.0 * probability:.0f}%"


def format_threshold(threshold: float) -> str:
    """A decision threshold as percent with one decimal, the same on every page and chart.

    One decimal more than a probability, so that an image a whole-percent
    display rounds onto the threshold still shows on which side it falls. Below 1%
    it reads "< 1%" (as probabilities do), never "0.0%", which looks like "every
    image is a fracture"; :func:`exact_percent` gives the exact value for a hover.
    """
    if threshold < DISPLAY_FLOOR:
        return "< 1%"
    return f"{100.0 * threshold:.1f}%"


def exact_percent(value: float) -> str:
    """The exact value behind a "< 1%" (for a hover text): three significant digits."""
    return f"{100.0 * value:.3g}%"


def is_assessed(prediction: Prediction) -> bool:
    """Whether the model can judge this input: it was scored and the OOD gate did not flag it."""
    return prediction.probability is not None and prediction.verdict().assessed


def verdict(prediction: Prediction, threshold: float) -> str:
    """``fracture``, ``normal``, ``not assessed`` (flagged out of distribution) or ``""``
    (failed): the one verdict (:meth:`Prediction.verdict`) in the page's words."""
    if prediction.probability is None:
        return ""
    label = prediction.verdict(threshold).label
    if label is None:
        return ""
    return NOT_ASSESSED if label == CSV_NOT_ASSESSED else label


def _relabelled(prediction: Prediction, threshold: float | None) -> Prediction:
    """``prediction`` as seen at ``threshold`` (the sidebar's operating point)."""
    if not prediction.ok or prediction.probability is None or threshold is None:
        return prediction
    return dataclasses.replace(
        prediction, label=prediction.verdict(threshold).label, threshold=threshold
    )


def results_frame(predictions: Sequence[Prediction], threshold: float) -> "pd.DataFrame":
    """One row per input, most suspicious first; inputs not assessed, then failed ones, last.

    ``probability`` is the number (for sorting), ``shown_probability`` the text
    a person reads. The frame's index is each prediction's position in
    ``predictions``, so a row picked in the table leads back to its input
    whatever the sort order.
    """
    import pandas as pd

    rows = []
    for position, prediction in enumerate(predictions):
        ok = prediction.ok and prediction.probability is not None
        assessed = is_assessed(prediction)
        rows.append(
            {
                "position": position,
                "file": prediction.source,
                "probability": prediction.probability if ok else None,
                "shown_probability": format_probability(prediction.probability) if assessed else "",
                "label": verdict(prediction, threshold) if ok else "could not be read",
                "confidence": confidence_band(prediction.probability, threshold)
                if assessed and prediction.probability is not None
                else "",
                "in_distribution": prediction.in_distribution,
                "body_region": body_region_text(prediction) or "",
                "caution": prediction.verdict(threshold).caution or "" if assessed else "",
                "error": prediction.error or "",
                "_rank": 0 if assessed else 1 if ok else 2,
            }
        )
    frame = pd.DataFrame(rows, columns=["position", *RESULT_COLUMNS, "_rank"])
    frame = frame.astype({"probability": "Float64", "in_distribution": "boolean"})
    # Judged images by falling probability, then those the model cannot judge, then
    # failures, both by name: a probability the page hides must not order them.
    # Position breaks ties, so equal scores and names keep the upload order.
    frame["_score"] = frame["probability"].where(frame["_rank"] == 0)
    frame["_name"] = frame["file"].where(frame["_rank"] > 0, "")
    frame = frame.sort_values(
        ["_rank", "_score", "_name", "position"],
        ascending=[True, False, True, True],
        na_position="last",
    )
    return frame.drop(columns=["_rank", "_score", "_name"]).set_index("position")


def selected_row(selection: Any) -> int | None:
    """The table row a person picked: a selected row, or the row of a clicked cell.

    ``selection`` is a dataframe's selection state (``rows`` and ``cells``, as
    Streamlit returns it); None when nothing is picked. A click on any cell
    picks its row, so the whole row is the target, not only its checkbox.
    """
    if not selection:
        return None
    rows = list(selection.get("rows") or [])
    if rows:
        return int(rows[0])
    cells = list(selection.get("cells") or [])
    if cells:
        return int(cells[0][0])
    return None


def step_row(current: int, step: int, n_rows: int) -> int:
    """The row ``step`` rows from ``current`` in the table's order, held at the first and last."""
    if n_rows < 1:
        raise ValueError("the table has no rows")
    return min(max(current + step, 0), n_rows - 1)


def row_selection(row: int) -> dict[str, Any]:
    """A dataframe selection state that picks ``row`` (written to the table's session key)."""
    return {"selection": {"rows": [int(row)], "columns": [], "cells": []}}


def predictions_csv(
    predictions: Iterable[Prediction],
    threshold: float | None,
    *,
    model_name: str = "",
    model_version: str = "",
    operating_point: str = "",
    class_names: Sequence[str] | None = None,
) -> bytes:
    """The CLI's CSV in input order, labels at ``threshold``, plus which model and operating point.

    Columns: :func:`fracture.inference.prediction.csv_columns` (one probability per class
    of a K-class model, whose ``class_names`` are given), then :data:`CSV_CONTEXT_COLUMNS`.
    An input flagged out of distribution keeps its probability (for research)
    but its ``prediction`` is :data:`CSV_NOT_ASSESSED`, never a label. ``threshold``
    is None for a K-class model without a normal class: its label is the top class.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=[*csv_columns(class_names), *CSV_CONTEXT_COLUMNS], lineterminator="\n"
    )
    writer.writeheader()
    context = {
        "model_name": model_name,
        "model_version": model_version,
        "operating_point": operating_point,
    }
    for prediction in predictions:
        writer.writerow({**_relabelled(prediction, threshold).row(), **context})
    return buffer.getvalue().encode("utf-8")


def class_results_frame(predictions: Sequence[Prediction]) -> "pd.DataFrame":
    """A K-class model's batch: file, most probable class, each class's probability (text).

    For models without a normal class, which have no fracture probability to sort by:
    rows keep the upload order, failed files last. The index is each prediction's position.
    """
    import pandas as pd

    names = next((list(p.class_probabilities) for p in predictions if p.class_probabilities), [])
    rows = []
    for position, prediction in enumerate(predictions):
        probabilities = prediction.class_probabilities or {}
        not_assessed = prediction.ok and prediction.in_distribution is False
        rows.append(
            {
                "position": position,
                "file": prediction.source,
                "class": NOT_ASSESSED
                if not_assessed
                else (prediction.top_class or "" if prediction.ok else "could not be read"),
                **{name: format_probability(probabilities.get(name)) for name in names},
                "error": prediction.error or "",
                "_rank": 0 if prediction.ok else 1,
            }
        )
    frame = pd.DataFrame(rows, columns=["position", "file", "class", *names, "error", "_rank"])
    frame = frame.sort_values(["_rank", "position"])
    return frame.drop(columns="_rank").set_index("position")


def heat_for_class(prediction: Prediction, class_name: str, config: ModelConfig) -> Prediction:
    """``prediction`` showing ``class_name``'s heat map at the size of its (display) image.

    No network run: the prediction kept every class's evidence
    (:func:`~fracture.inference.predictor.with_class_map`). The map comes out at the
    original image's size and is shrunk here to the image the page keeps.
    """
    shown = with_class_map(prediction, class_name, config)
    if shown.heatmap is not None and prediction.image is not None:
        height, width = prediction.image.shape[:2]
        if shown.heatmap.shape[:2] != (height, width):
            heat = cv2.resize(shown.heatmap, (width, height), interpolation=cv2.INTER_AREA)
            shown = dataclasses.replace(shown, heatmap=heat)
    return shown


def batch_counts(predictions: Sequence[Prediction], threshold: float) -> dict[str, int]:
    """Counts for the batch summary: per label, not assessed (OOD), and failed; they add up."""
    counts = {FRACTURE: 0, NORMAL: 0, "not_assessed": 0, "error": 0}
    for prediction in predictions:
        label = verdict(prediction, threshold)
        if label == "":
            counts["error"] += 1
        elif label == NOT_ASSESSED:
            counts["not_assessed"] += 1
        else:
            counts[label] += 1
    return counts


def encode_png(image: np.ndarray, description: str | None = None) -> bytes:
    """PNG bytes of an RGB (or greyscale) uint8 image.

    ``description`` goes into the PNG's ``Description`` text chunk too: the burned-in
    caption, readable by software (and by the tests) as well as by eye.
    """
    array = np.ascontiguousarray(image)
    if description is None:
        if array.ndim == 3:
            array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".png", array)
        if not ok:  # pragma: no cover - OpenCV encodes any uint8 array as PNG
            raise ValueError("PNG encoding failed")
        return encoded.tobytes()
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt("Description", description)
    buffer = io.BytesIO()
    Image.fromarray(array).save(
        buffer, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL
    )
    return buffer.getvalue()


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


def _overlay_caption(prediction: Prediction, threshold: float) -> str:
    decision = prediction.verdict(threshold)
    if not decision.assessed:
        return "NOT ASSESSED: does not look like a bone radiograph"
    caption = (
        f"{verdict(prediction, threshold).upper()}: fracture probability "
        f"{format_probability(prediction.probability)} (threshold {format_threshold(threshold)})"
    )
    return caption + (f" - {decision.caution}" if decision.caution else "")


def overlay_banner(model_name: str, model_version: str) -> str:
    """The first caption line of every downloaded overlay: research use only, which model."""
    model = " ".join(
        part for part in (model_name, f"v{model_version}" if model_version else "") if part
    )
    return f"{RESEARCH_BANNER}" + (f" - model {model}" if model else "")


def with_colour_bar(overlay: np.ndarray) -> tuple[np.ndarray, int]:
    """``overlay`` with the heat map's colour bar (JET, low at the bottom) on its right.

    Returns the widened image and the text unit (px) it was drawn at, so that a
    caption beside it can match. Shared by the ZIP's overlays and the reports.
    """
    height, width = overlay.shape[:2]
    unit = max(12, round(max(height, width) / 40))
    bar_width = unit * 4
    # The bar: JET from low (bottom) to high (top), as the overlay colours the heat.
    ramp = np.linspace(255, 0, height, dtype=np.float32).astype(np.uint8)[:, None]
    bar = cv2.cvtColor(
        cv2.applyColorMap(np.repeat(ramp, unit, axis=1), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB
    )
    side = np.full((height, bar_width, 3), 255, np.uint8)
    side[:, unit // 2 : unit // 2 + unit] = bar
    scale = unit / 30
    thickness = max(1, round(unit / 12))
    for text, y in (("high", unit), ("low", height - unit // 2)):
        cv2.putText(
            side,
            text,
            (unit // 2 + unit + 2, y),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (0, 0, 0),
            thickness,
            cv2.LINE_AA,
        )
    return np.concatenate([overlay, side], axis=1), unit


def annotated_overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    alpha: float,
    caption: str | Sequence[str],
    boxes: Sequence[MarkedBox] = (),
) -> np.ndarray:
    """The map's overlay with its boxes (and their scores), a caption strip below and a colour bar.

    A downloaded overlay travels without the page: the strip says what the
    model concluded (one line per item of ``caption``) and the bar says what the
    colours mean.
    """
    lines = [caption] if isinstance(caption, str) else list(caption)
    overlay = draw_boxes(overlay_heatmap(image, heatmap, alpha), boxes)
    body, unit = with_colour_bar(overlay)
    scale = unit / 30
    thickness = max(1, round(unit / 12))
    strip = np.full((unit * (1 + len(lines)), body.shape[1], 3), 255, np.uint8)
    font_scale = scale
    # Shrink the captions until the longest fits the strip's width.
    longest = max(lines, key=len) if lines else ""
    while (
        font_scale > 0.2
        and cv2.getTextSize(longest, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)[0][0]
        > body.shape[1] - unit
    ):
        font_scale *= 0.9
    for index, text in enumerate(lines):
        cv2.putText(
            strip,
            text,
            (unit // 2, round(unit * (1.3 + index))),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (0, 0, 0),
            thickness,
            cv2.LINE_AA,
        )
    return np.concatenate([body, strip], axis=0)


# Workers that encode the ZIP's overlays: PNG deflate and OpenCV's blends release the
# GIL, so they run beside the network and the page's script on a small host's cores.
OVERLAY_WORKERS = max(1, min(4, os.cpu_count() or 1))
# A ZIP prepared while the table is drawn is held for the click; past this size it is
# dropped and made on the click instead (a folder of thousands must not sit in memory).
MAX_PREPARED_ZIP_BYTES = 32 * 1024 * 1024  # about 100-300 overlays at display size
# PNG deflate level of the overlays: 1 is 3-5x faster than zlib's default 6 and about
# 10-15 % larger, on an overlay that is mostly the radiograph's own noise.
PNG_COMPRESS_LEVEL = 1

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


# How much lower the encoders' CPU priority is than the server's (Linux nice steps): on
# a small host they and the network share the cores, and the table a person waits for
# comes first; the ZIP, which nobody has asked for yet, takes the cycles left over.
OVERLAY_NICE = 5


def _lower_priority() -> None:
    # Linux schedules each thread on its own: setpriority on the thread's id renices only
    # this worker. Elsewhere the call fails (the id is no process) and nothing changes.
    try:
        thread = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, current + OVERLAY_NICE))
    except (AttributeError, OSError):
        pass


def overlay_pool() -> ThreadPoolExecutor:
    """The process's overlay encoders, shared by every session (made on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                OVERLAY_WORKERS, thread_name_prefix="fracture-overlay", initializer=_lower_priority
            )
        return _pool


def overlay_problem(prediction: Prediction, view: str = WHERE) -> str | None:
    """Why ``prediction`` has no overlay (failed, or no image or map kept), else None.

    Error messages usually start with the file's name already; otherwise it is added.
    """
    shown_view = view if view in views_of(prediction) else WHY
    # Whether the map can be made, without making it: the worker makes it once, at the
    # overlay's size (the "where" map needs the head's grid and where the image sat in it).
    if shown_view == WHERE:
        has_map = prediction.location_outputs is not None and prediction.geometry is not None
    else:
        has_map = prediction.heatmap is not None
    if prediction.ok and prediction.image is not None and has_map:
        return None
    reason = prediction.error or "no heat map"
    return reason if prediction.source in reason else f"{prediction.source}: {reason}"


def overlay_png(
    prediction: Prediction,
    alpha: float,
    threshold: float,
    *,
    banner: str,
    thresholds: Mapping[str, float] | None = None,
    view: str = WHERE,
) -> bytes:
    """One downloaded overlay: ``view``'s map, its boxes at ``threshold``, captions and a bar.

    The captions say what the model concluded at ``threshold`` ("NOT ASSESSED" where the
    out-of-distribution gate flagged the image: never a label it cannot give). Drawn at
    the size of the prediction's kept image, so the map is resized once, to that size.
    """
    shown_view = view if view in views_of(prediction) else WHY
    heat = map_for(prediction, shown_view)
    if prediction.image is None or heat is None:
        raise ValueError(f"{prediction.source}: no image or heat map to draw")
    caption = [
        banner,
        _overlay_caption(prediction, threshold),
        f"{VIEW_NAMES[shown_view]}: {map_unit(shown_view)}, 0 to 1",
    ]
    overlay = annotated_overlay(
        prediction.image,
        heat,
        alpha,
        caption,
        boxes=boxes_at(prediction, threshold, thresholds),
    )
    return encode_png(overlay, description="\n".join(caption))


class OverlayArchive:
    """The ZIP of overlays, each encoded in a worker pool as its prediction arrives.

    :meth:`add` is called in input order from one thread (a page's script, a download);
    it names the member there (so names never depend on which worker finishes first)
    and hands the drawing and PNG encoding to :func:`overlay_pool`. At most
    ``max_pending`` overlays wait for a worker, each holding its image, so a fast
    producer cannot fill memory. :meth:`bytes` waits for the rest and writes the ZIP in
    input order, with ``errors.txt`` listing inputs without an overlay (failed files,
    no heat map). One bad overlay never stops the archive: it is listed there too.
    Once its encoded overlays pass ``max_bytes`` the archive gives up (:attr:`too_large`),
    drops what it holds and encodes nothing more: a caller that prepared it on the way
    makes the ZIP on request instead.
    """

    def __init__(
        self,
        alpha: float,
        threshold: float,
        *,
        model_name: str = "",
        model_version: str = "",
        thresholds: Mapping[str, float] | None = None,
        view: str = WHERE,
        pool: ThreadPoolExecutor | None = None,
        max_pending: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.alpha, self.threshold, self.view = alpha, threshold, view
        self.thresholds = dict(thresholds) if thresholds is not None else None
        self.banner = overlay_banner(model_name, model_version)
        self._pool = pool or overlay_pool()
        self._max_pending = max_pending or 4 * OVERLAY_WORKERS
        self._max_bytes = max_bytes
        self._used: set[str] = set()
        self._members: list[tuple[str, Future[bytes]]] = []
        self._pending: deque[Future[bytes]] = deque()
        self._problems: list[str] = []
        self._encoded_bytes = 0
        self._lock = threading.Lock()
        self._done: bytes | None = None
        self.too_large = False

    def add(self, prediction: Prediction) -> None:
        """Queue ``prediction``'s overlay (or note why it has none)."""
        if self._done is not None:
            raise RuntimeError("the archive is already written")
        if self.too_large:
            self._members = []
            return
        problem = overlay_problem(prediction, self.view)
        if problem is not None:
            self._problems.append(problem)
            return
        name = overlay_member_name(prediction.source)
        base, counter = name, 1
        while name in self._used:
            counter += 1
            name = base.replace("_gradcam.png", f"_{counter}_gradcam.png")
        self._used.add(name)
        while self._pending and self._pending[0].done():
            self._pending.popleft()
        if len(self._pending) >= self._max_pending:
            self._pending.popleft().exception()  # wait for the oldest (its error comes later)
        future = self._pool.submit(
            overlay_png,
            prediction,
            self.alpha,
            self.threshold,
            banner=self.banner,
            thresholds=self.thresholds,
            view=self.view,
        )
        future.add_done_callback(self._count)
        self._pending.append(future)
        self._members.append((name, future))

    def _count(self, future: Future[bytes]) -> None:
        # On the worker (or here, if already done): the running size of the encoded overlays.
        if future.cancelled() or future.exception() is not None:
            return
        with self._lock:
            self._encoded_bytes += len(future.result())
            if self._max_bytes is not None and self._encoded_bytes > self._max_bytes:
                self.too_large = True

    def matches(self, alpha: float, threshold: float, view: str = WHERE) -> bool:
        """Whether this archive is the one to serve for these settings."""
        return (alpha, threshold, view) == (self.alpha, self.threshold, self.view)

    def bytes(self) -> bytes:
        """The ZIP (waits for the overlays still encoding); written once, then kept."""
        if self._done is not None:
            return self._done
        if self.too_large:
            self._members, self._done = [], b""
            return self._done
        buffer = io.BytesIO()
        problems = list(self._problems)
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            # PNG is already deflated; storing avoids compressing twice for nothing.
            for name, future in self._members:
                try:
                    archive.writestr(name, future.result())
                except Exception as error:  # noqa: BLE001 - one overlay never stops the ZIP
                    logger.exception("the overlay %s could not be drawn", name)
                    problems.append(f"{name}: the overlay could not be drawn ({error})")
            if problems:
                archive.writestr("errors.txt", "\n".join(problems) + "\n")
        self._members = []
        self._done = buffer.getvalue()
        if self._max_bytes is not None and len(self._done) > self._max_bytes:
            self.too_large, self._done = True, b""
        return self._done


def overlay_zip(
    predictions: Iterable[Prediction],
    alpha: float,
    threshold: float,
    *,
    model_name: str = "",
    model_version: str = "",
    thresholds: Mapping[str, float] | None = None,
    view: str = WHERE,
) -> bytes:
    """A ZIP of captioned overlay PNGs, encoded in the worker pool (:class:`OverlayArchive`).

    Each overlay shows ``view``'s map (:mod:`fracture.views.overlays`): by default the
    localisation head's "Where" map with every box it drew at ``threshold`` and their
    scores, or the Grad-CAM "Why" map for a model without the head.

    ``predictions`` is typically ``Predictor.iter_predict(..., with_cam=True)``:
    it is consumed lazily, and only a few overlays wait for a worker at a time, so a
    large batch never holds every decoded image in memory at once. Each overlay
    carries the research-use line with the model's name and version (as the DICOM
    Secondary Capture does), its probability and label at ``threshold`` (or "not
    assessed") and a colour bar. Failed inputs, and inputs without a heat map, are
    listed in ``errors.txt`` instead.
    """
    archive = OverlayArchive(
        alpha,
        threshold,
        model_name=model_name,
        model_version=model_version,
        thresholds=thresholds,
        view=view,
    )
    for prediction in predictions:
        archive.add(prediction)
    return archive.bytes()
