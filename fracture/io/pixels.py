"""What both image decoders share: size limits, Pillow's bomb guard, and any samples to RGB uint8.

:mod:`fracture.io.images` (JPEG, PNG, BMP, TIFF, GIF) and :mod:`fracture.io.dicom`
(DICOM) decode into arrays of whatever type the file holds; the functions here make
one ``(H, W, 3)`` ``uint8`` picture of them the same way, so a 16-bit PNG and a
12-bit DICOM reach the network alike. High bit depth data is stretched with the
image's own robust range (0.5th to 99.5th percentile): a 12-bit radiograph stored
in 16 bits would be nearly black if it were simply shifted right by 8 bits.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image

from fracture.errors import InvalidImageError

__all__ = [
    "bomb_guard",
    "check_dimensions",
    "printable",
    "stretch_to_uint8",
    "to_rgb8",
    "unit_to_uint8",
]

# Percentiles of the robust stretch: clipping 0.5 % at each end ignores hot
# pixels and burned-in labels without visibly changing a normal radiograph.
_STRETCH_PERCENTILES = (0.5, 99.5)
# Percentiles are computed on at most about this many pixels, for speed.
_STRETCH_SAMPLE_PIXELS = 1_000_000


def printable(text: str) -> str:
    # Control characters in a name could forge extra lines in a log or a report.
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def check_dimensions(
    width: int, height: int, label: str, *, max_pixels: int, min_side: int
) -> None:
    """Refuse a size read from the header, before any pixel is decoded."""
    if width * height > max_pixels:
        raise InvalidImageError(
            f"{label} is {width}x{height} px ({width * height / 1e6:.1f} MP), more than the "
            f"{max_pixels / 1e6:g} MP limit that guards against decompression bombs; "
            "downscale it first"
        )
    if min(width, height) < min_side:
        raise InvalidImageError(
            f"{label} is {width}x{height} px; at least {min_side} px per side is needed"
        )


# catch_warnings saves and restores the process-wide filter list, so two
# threads overlapping inside it (the Predictor decodes in a tf.data pool) would
# restore each other's state and leave the error filter installed for good.
# The lock makes guarded blocks take turns; they only wrap Pillow's lazy
# ``Image.open`` (a header read), so decoding itself stays parallel.
_BOMB_GUARD_LOCK = threading.RLock()


@contextmanager
def bomb_guard(label: str) -> Iterator[None]:
    """Turn Pillow's decompression-bomb warning and error into :class:`InvalidImageError`.

    Pillow only warns between MAX_IMAGE_PIXELS and twice that; the warning is
    made an error here, for the duration of the block only, so that no such
    image slips through when ``max_pixels`` is set above Pillow's threshold.
    Pillow's own limit is left untouched, so it still caps ``max_pixels``.
    """
    with _BOMB_GUARD_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InvalidImageError(
                f"{label} is too large to decode safely (possible decompression bomb: {exc})"
            ) from None


def to_rgb8(pixels: np.ndarray, label: str) -> np.ndarray:
    """Convert grey, grey+alpha, RGB or RGBA samples of any numeric type to RGB uint8.

    Alpha is composited on black, the background of a radiograph, so that
    transparent padding looks like the film edge rather than like bone.
    """
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 2:
        colour, alpha = pixels, None
    elif pixels.ndim == 3 and pixels.shape[2] in (2, 3, 4):
        has_alpha = pixels.shape[2] in (2, 4)
        colour = pixels[..., :-1] if has_alpha else pixels
        alpha = pixels[..., -1] if has_alpha else None
    else:
        raise InvalidImageError(f"{label} has an unsupported pixel layout {pixels.shape}")
    if colour.ndim == 3 and colour.shape[2] == 1:
        colour = colour[..., 0]
    if np.issubdtype(pixels.dtype, np.floating) and not np.isfinite(pixels).all():
        raise InvalidImageError(f"{label} contains NaN or infinite pixel values")
    colour8 = colour if colour.dtype == np.uint8 else stretch_to_uint8(colour)
    if alpha is not None:
        colour8 = _composite_on_black(colour8, _alpha_to_uint8(alpha))
    if colour8.ndim == 2:
        colour8 = np.repeat(colour8[..., None], 3, axis=2)
    return colour8


def stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map the robust range of ``values`` (0.5th-99.5th percentile) onto 0-255.

    Falls back to the full min-max range when the percentiles coincide (for
    example a small bright object on a uniform background).
    """
    values = values.astype(np.float32, copy=False)
    step = max(1, int(np.ceil(np.sqrt(values.shape[0] * values.shape[1] / _STRETCH_SAMPLE_PIXELS))))
    low, high = (float(v) for v in np.percentile(values[::step, ::step], _STRETCH_PERCENTILES))
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return unit_to_uint8((values - low) / (high - low))


def unit_to_uint8(values: np.ndarray) -> np.ndarray:
    """Round values in [0, 1] (clipped) to uint8."""
    scaled = np.clip(values, 0.0, 1.0) * 255.0 + 0.5
    return scaled.astype(np.uint8)


def _alpha_to_uint8(alpha: np.ndarray) -> np.ndarray:
    if alpha.dtype == np.uint8:
        return alpha
    if np.issubdtype(alpha.dtype, np.integer):
        return unit_to_uint8(alpha / float(np.iinfo(alpha.dtype).max))
    return unit_to_uint8(alpha)


def _composite_on_black(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    weight = alpha.astype(np.uint16)
    if colour.ndim == 3:
        weight = weight[..., None]
    return ((colour.astype(np.uint16) * weight + 127) // 255).astype(np.uint8)
