"""The one place where a decoded radiograph becomes network input.

Training, evaluation, prediction and Grad-CAM all go through :func:`letterbox`,
so a model never sees pixels prepared differently from the ones it learnt on.
The caffe-style ImageNet normalisation of ResNet-50 lives inside the model (the
``CaffePreprocess`` layer of :func:`fracture.model.network.build_classifier`), so the
network's input is plain RGB in [0, 255].
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

__all__ = ["Geometry", "fit_within", "letterbox", "shown_geometry", "unletterbox", "PAD_VALUE"]

# Radiograph backgrounds are black; padding with black adds no edge that the
# network could mistake for a cortex.
PAD_VALUE = 0


@dataclass(frozen=True)
class Geometry:
    """Where the original image sits inside the square network input."""

    original_height: int
    original_width: int
    size: int
    top: int
    left: int
    height: int
    width: int


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, Geometry]:
    """Resize ``image`` (H, W, 3 uint8) to ``size`` x ``size`` keeping its aspect ratio.

    Why letterbox rather than stretch: fractures are thin lines whose angle
    matters, and FracAtlas mixes portrait and landscape views, so stretching
    would shear the very feature the model looks for.
    Returns float32 RGB in [0, 255] and the geometry needed to map a heat map back.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"letterbox expects an (H, W, 3) image, got shape {image.shape}")
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_h = max(1, round(height * scale))
    new_w = max(1, round(width * scale))
    # INTER_AREA averages when shrinking, which keeps thin fracture lines visible
    # instead of aliasing them away.
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    top = (size - new_h) // 2
    left = (size - new_w) // 2
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.float32)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas, Geometry(height, width, size, top, left, new_h, new_w)


def unletterbox(square_map: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Crop the padding from a ``size`` x ``size`` map and resize it to the original image."""
    if square_map.shape[:2] != (geometry.size, geometry.size):
        square_map = cv2.resize(
            square_map, (geometry.size, geometry.size), interpolation=cv2.INTER_LINEAR
        )
    inner = square_map[
        geometry.top : geometry.top + geometry.height,
        geometry.left : geometry.left + geometry.width,
    ]
    return cv2.resize(
        np.ascontiguousarray(inner, dtype=np.float32),
        (geometry.original_width, geometry.original_height),
        interpolation=cv2.INTER_LINEAR,
    )


def fit_within(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` (H, W[, C]) shrunk so its longest side is at most ``max_side``; smaller ones as they are.

    INTER_AREA averages when shrinking, so thin fracture lines stay visible
    rather than aliasing away. Used for the image a page shows and its heat map.
    """
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def shown_geometry(geometry: Geometry, image: np.ndarray | None) -> Geometry:
    """``geometry`` mapping onto ``image`` as it is kept (perhaps display size), not the original.

    A heat map computed through it comes out at the kept image's size in one
    resize, instead of at the full radiograph's size and then shrunk (issue 25:
    64 MB of floats for a 4,000-px image, for a map shown at 960 px).
    """
    if image is None:
        return geometry
    height, width = image.shape[:2]
    if (height, width) == (geometry.original_height, geometry.original_width):
        return geometry
    return replace(geometry, original_height=height, original_width=width)
