"""What the Predict page shows, computed without Streamlit: labels, confidence bands, tables, downloads.

The Streamlit pages (``app.py``, ``app_pages/``) only lay out widgets; everything
they display is built in :mod:`fracture.views` from the project's own objects
(``Prediction``, ``Dataset``, model cards, ``evaluation.json``, a run's
``status.json`` and ``metrics.json``). Keeping these modules free of Streamlit
means each table, download and figure is tested as a plain function, and a
notebook can reuse them.

Labels follow the Predictor's rule everywhere: a case is ``fracture`` when its
probability is at least the threshold of the chosen operating point.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import cv2
import numpy as np

from fracture.inference.gradcam import overlay_heatmap
from fracture.inference.predictor import CSV_COLUMNS, FRACTURE, NORMAL, Prediction

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BAND_FRACTURE",
    "BAND_NORMAL",
    "BAND_UNCERTAIN",
    "RESULT_COLUMNS",
    "UNCERTAIN_LOGIT_MARGIN",
    "batch_counts",
    "confidence_band",
    "encode_png",
    "label_for",
    "overlay_member_name",
    "overlay_zip",
    "predictions_csv",
    "results_frame",
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
    "file",
    "probability",
    "label",
    "confidence",
    "status",
    "error",
    "in_distribution",
)


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
                "label": label_for(prediction.probability, threshold) if ok else None,  # type: ignore[arg-type]
                "confidence": confidence_band(prediction.probability, threshold) if ok else None,  # type: ignore[arg-type]
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
            overlay = overlay_heatmap(
                prediction.image,
                prediction.heatmap,
                alpha,
                box=prediction.box,
                style=prediction.box_style,
            )
            archive.writestr(name, encode_png(overlay))
        if problems:
            archive.writestr("errors.txt", "\n".join(problems) + "\n")
    return buffer.getvalue()
