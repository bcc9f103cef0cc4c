"""What the Dataset page shows: thumbnails with fracture boxes, image sizes, filters and pages."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from fracture.io.images import load_image

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COLOUR_BOX",
    "dataset_folders",
    "draw_boxes",
    "filter_frame",
    "image_sizes",
    "load_thumbnail",
    "page_count",
    "page_slice",
    "thumbnail",
]

COLOUR_BOX = (255, 48, 48)  # RGB


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


def dataset_folders(data_dir: Path) -> list[Path]:
    """Dataset folders under ``data_dir`` (Learn, Train's first visit): FracAtlas first, then by name.

    Only a listing of folder names; whether a folder holds a usable dataset is
    known once it is read.
    """
    try:
        folders = sorted(
            p for p in Path(data_dir).iterdir() if p.is_dir() and not p.name.startswith(".")
        )
    except OSError:
        return []
    return sorted(folders, key=lambda p: (p.name.lower() != "fracatlas", p.name.lower()))
