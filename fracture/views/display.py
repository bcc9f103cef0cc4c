"""Images and figures sized for the page: what the browser needs, made once per result.

A radiograph is often 2,000-3,000 px on a side, and the Predict page shows it
at most about 700 px wide. Sending the full image (and its full-size overlay)
as PNG on every rerun cost most of the second between upload and overlay, so
the page gets JPEGs at display size; downloads still start from the upload's
full-resolution pixels.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from fracture.inference.preprocess import fit_within
from fracture.views import figures

__all__ = ["DISPLAY_MAX_SIDE", "JPEG_QUALITY", "fit_for_display", "jpeg", "probability_gauge"]

# Longest side of an image on the page: two columns of a wide layout on a 4K
# screen show about 900 px; more would only cost bytes.
DISPLAY_MAX_SIDE = 960
# Visually lossless for a radiograph at display size, about a tenth of a PNG.
JPEG_QUALITY = 88


def fit_for_display(
    image: np.ndarray, heatmap: np.ndarray | None, max_side: int = DISPLAY_MAX_SIDE
) -> tuple[np.ndarray, np.ndarray | None]:
    """``image`` (H, W, 3 uint8) and its ``heatmap`` (H, W) shrunk so the longest side is ``max_side``.

    Smaller images are returned as they are. INTER_AREA averages when
    shrinking, so thin fracture lines stay visible rather than aliasing away.
    """
    small = fit_within(image, max_side)
    if small is image:
        return image, heatmap
    return small, None if heatmap is None else fit_within(heatmap, max_side)


def jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """``image`` (H, W, 3 uint8 RGB) encoded as JPEG bytes, ready for ``st.image``."""
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:  # pragma: no cover - OpenCV fails only on empty input
        raise ValueError("the image could not be encoded as JPEG")
    return encoded.tobytes()


@functools.lru_cache(maxsize=256)
def probability_gauge(probability: float, threshold: float):
    """The gauge of :func:`fracture.views.figures.probability_gauge`, built once per value.

    Shared between sessions and reruns; Streamlit only reads the figure.
    """
    return figures.probability_gauge(probability, threshold)
