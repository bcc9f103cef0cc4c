"""Training-time augmentation of radiographs: only what differs between real acquisitions."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

__all__ = ["augment_radiograph", "augment_with_boxes", "Box", "BORDER_VALUE"]

# Black, like the air around a limb and like the letterbox padding
# (fracture.inference.preprocess.PAD_VALUE): a rotated corner adds no edge
# that the network could mistake for a cortex.
BORDER_VALUE = 0


Box = tuple[float, float, float, float]  # normalised x0, y0, x1, y1


def augment_radiograph(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random, plausible variation of a radiograph (uint8 H x W x 3 in and out).

    Only what differs between real acquisitions: a small rotation (within 10
    degrees), zoom (0.9 to 1.1, cropping or padding with black) and shift (within
    3% of the side) of the positioning, a horizontal flip (left and right limbs),
    and exposure changes (brightness within 10%, contrast within 15%). No colour
    jitter, since radiographs have none; a grey image stays grey. All random
    numbers are drawn up front in a fixed order, so the result depends on ``rng``
    alone. :func:`augment_with_boxes` moves fracture boxes along with the image.
    """
    return augment_with_boxes(image, (), rng)[0]


def augment_with_boxes(
    image: np.ndarray, boxes: Sequence[Box], rng: np.random.Generator
) -> tuple[np.ndarray, tuple[Box, ...]]:
    """:func:`augment_radiograph`, plus ``boxes`` moved by the same flip, rotation, zoom and shift.

    Each moved box is the axis-aligned box around the moved corners, clipped to
    the image; a box pushed out of the frame is dropped. The same ``rng`` gives
    the same image as :func:`augment_radiograph`.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"augment_radiograph expects uint8 (H, W, 3), got {image.dtype} {image.shape}"
        )
    flip = rng.random() < 0.5
    angle = rng.uniform(-10.0, 10.0)
    zoom = rng.uniform(0.9, 1.1)
    shift = rng.uniform(-0.03, 0.03, size=2)
    contrast = rng.uniform(0.85, 1.15)
    # Multiplicative brightness keeps the air background black, like a change of dose.
    brightness = rng.uniform(0.9, 1.1)

    # Processing one channel keeps a grey image exactly grey, and is 3x cheaper.
    grey = bool(
        np.array_equal(image[..., 0], image[..., 1])
        and np.array_equal(image[..., 1], image[..., 2])
    )
    work = image[..., :1] if grey else image
    height, width = work.shape[:2]
    if flip:
        work = work[:, ::-1]
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), angle, zoom)
    matrix[:, 2] += shift * np.array([width, height])
    warped = cv2.warpAffine(
        np.ascontiguousarray(work),
        matrix,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(BORDER_VALUE, BORDER_VALUE, BORDER_VALUE),
    ).reshape(height, width, -1)
    values = warped.astype(np.float32)
    mean = float(values.mean())
    values = ((values - mean) * contrast + mean) * brightness
    out = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    out = np.repeat(out, 3, axis=2) if grey else out
    return out, _move_boxes(boxes, flip, matrix, width, height)


def _move_boxes(
    boxes: Sequence[Box], flip: bool, matrix: np.ndarray, width: int, height: int
) -> tuple[Box, ...]:
    moved = []
    for x0, y0, x1, y1 in boxes:
        if flip:
            x0, x1 = 1.0 - x1, 1.0 - x0
        corners = (
            np.array(
                [
                    [x0 * width, y0 * height, 1.0],
                    [x1 * width, y0 * height, 1.0],
                    [x0 * width, y1 * height, 1.0],
                    [x1 * width, y1 * height, 1.0],
                ]
            )
            @ matrix.T
        )
        low = np.clip(corners.min(axis=0) / (width, height), 0.0, 1.0)
        high = np.clip(corners.max(axis=0) / (width, height), 0.0, 1.0)
        if (high - low).min() > 1e-3:
            moved.append((float(low[0]), float(low[1]), float(high[0]), float(high[1])))
    return tuple(moved)
