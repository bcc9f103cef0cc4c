"""Grad-CAM heat maps for the fracture classifier.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks
via Gradient-based Localization", ICCV 2017) weights each channel of a
convolutional feature map by the spatial mean of the gradient of the class
score with respect to it, sums the channels and keeps the positive part.

Here the class score is the *logit* of the fracture output, not the sigmoid
probability: the sigmoid saturates for confident cases and would flatten the
gradients exactly where the explanation is most wanted.

For this network's head (global average pooling, then one dense unit) the
gradient of the logit with respect to every cell of the last feature map is
``w / (h * w)``, so Grad-CAM equals the class activation map ``relu(w . A)``
(Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR
2016) up to a constant. The maps are kept in that unit, logit evidence per
cell (summing the gradients over cells instead of averaging them), and are *not*
scaled to their own peak: ``logit = mean(w . A) + b``, so the map's size carries
meaning, and the training's box-alignment loss works on this very map
(:mod:`fracture.training.losses`).

Display (:func:`evidence_heat`): intensity is evidence divided by one absolute
scale fixed on val (``ModelConfig.evidence_scale``), clipped to [0, 1]. A
confident normal therefore shows little or no heat, while a fracture shows its
evidence; scaling each map to its own peak would paint the same bright blob on
both. :func:`strongest_region` boxes the region around the map's peak, the way
clinical tools mark a finding, and :func:`box_style` says how to draw it.

:func:`grad_cam` is the maths for the binary model, :func:`class_activation_maps` for a
K-class one (where Grad-CAM of class ``k`` is ``relu(w_k . A)``, the same identity for the
``k``-th unit, so all K maps come from the forward pass), both run inside the compiled function of
:class:`fracture.inference.engine.InferenceEngine`, which shares one forward
pass between the probability and the heat map. :func:`heatmap_to_image` maps a
heat map back to the original image and :func:`overlay_heatmap` draws it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from fracture.inference.preprocess import Geometry, unletterbox

if TYPE_CHECKING:
    import keras

__all__ = [
    "grad_cam",
    "class_activation_maps",
    "heatmap_to_image",
    "evidence_heat",
    "strongest_region",
    "box_style",
    "overlay_heatmap",
    "draw_region",
    "draw_scored_boxes",
    "to_float32",
    "REGION_FRACTION",
]

# The strongest region is the connected area around the peak where the heat is at
# least this fraction of the peak (the half-maximum contour).
REGION_FRACTION = 0.5
# Below this display heat (out of 1) a map has no region worth boxing.
_MIN_REGION_HEAT = 0.1


def grad_cam(graph: "keras.Model", images: Any) -> tuple[Any, ...]:
    """Logits (B,), pooled features (B, D) and Grad-CAM maps (B, h, w), all float32.

    The maps are non-negative, in logit units per cell (see the module docstring).

    ``graph`` maps images to (target feature map, pooled features, logit, *others). One
    forward pass under a gradient tape, then a backward pass that stops at the
    target feature map. Any further outputs of ``graph`` (the localisation head's) are
    passed through after the maps.
    """
    import tensorflow as tf

    with tf.GradientTape() as tape:
        features, pooled, logits, *others = graph(images, training=False)
        # Samples are independent (BatchNorm in inference mode), so the
        # gradient of the sum gives every sample its own gradient at once.
        score = tf.reduce_sum(logits)
    # The CAM arithmetic is cheap (one 2048-channel map): always float32.
    gradients = to_float32(tape.gradient(score, features))
    features = to_float32(features)
    # Summed, not averaged, over the cells: the weights are then the dense
    # kernel itself and the map is in logit units (module docstring).
    channel_weights = tf.reduce_sum(gradients, axis=(1, 2), keepdims=True)
    cams = tf.nn.relu(tf.reduce_sum(channel_weights * features, axis=-1))
    return (to_float32(logits[:, 0]), to_float32(pooled), cams, *others)


def class_activation_maps(graph: "keras.Model", kernel: Any, images: Any) -> tuple[Any, ...]:
    """Logits (B, K), pooled features (B, D) and every class's Grad-CAM (B, h, w, K), float32.

    For a global-average-pooling + dense head, Grad-CAM of class ``k`` with the
    gradients summed over the cells is exactly ``relu(sum_c w_ck A_c)``: the class
    activation map of Zhou et al. (CVPR 2016), in the logit units of
    :func:`grad_cam` (module docstring). It needs no gradient, so a K-class model
    gets all K maps from one forward pass and one (h*w, C) x (C, K) product;
    choosing which class to show later costs nothing. ``kernel`` is the logit
    layer's (C, K) weight matrix; the bias adds to every cell alike and is not
    evidence for any place, as in the binary map.
    """
    import tensorflow as tf

    features, pooled, logits, *others = graph(images, training=False)
    features = to_float32(features)
    cams = tf.nn.relu(tf.einsum("bhwc,ck->bhwk", features, to_float32(kernel)))
    return (to_float32(logits), to_float32(pooled), cams, *others)


def to_float32(tensor):
    """``tensor`` as float32, cast only when it is not already."""
    import tensorflow as tf

    return tensor if tensor.dtype == tf.float32 else tf.cast(tensor, tf.float32)


def heatmap_to_image(cam: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Upsample a coarse CAM to the original image's pixels (same unit, never negative)."""
    full = unletterbox(cam.astype(np.float32), geometry)
    return np.maximum(full, 0.0)


def evidence_heat(evidence: np.ndarray, scale: float | None) -> np.ndarray:
    """Display heat in [0, 1]: ``evidence / scale``, clipped.

    ``scale`` is the model's ``evidence_scale``; ``None`` (a model saved before
    it existed) falls back to each map's own peak, which cannot tell a confident
    normal from a fracture.
    """
    evidence = np.asarray(evidence, np.float32)
    if scale is None:
        peak = float(evidence.max()) if evidence.size else 0.0
        return evidence / peak if peak > 0 else np.zeros_like(evidence)
    if not scale > 0:
        raise ValueError(f"evidence scale must be positive, got {scale}")
    return np.clip(evidence / np.float32(scale), 0.0, 1.0)


def strongest_region(heat: np.ndarray) -> tuple[float, float, float, float] | None:
    """The box around the heat map's peak, normalised (x0, y0, x1, y1), or None.

    The region is the connected area containing the peak where the heat is at
    least :data:`REGION_FRACTION` of the peak. None when the map is too faint to
    point anywhere.
    """
    heat = np.asarray(heat, np.float32)
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"expected a 2-D heat map, got shape {heat.shape}")
    peak = float(heat.max())
    if not peak >= _MIN_REGION_HEAT:
        return None
    mask = (heat >= REGION_FRACTION * peak).astype(np.uint8)
    _, labels = cv2.connectedComponents(mask, connectivity=8)
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    ys, xs = np.nonzero(labels == labels[row, col])
    height, width = heat.shape
    return (
        float(xs.min()) / width,
        float(ys.min()) / height,
        float(xs.max() + 1) / width,
        float(ys.max() + 1) / height,
    )


def box_style(
    probability: float | None, thresholds: dict[str, float], threshold: float | None = None
) -> str | None:
    """ "solid" above the high-specificity threshold, "dotted" above the high-sensitivity one.

    None below both, and below ``threshold`` (the operating point in use) where given: an
    image labelled normal gets no box.
    """
    if probability is None or (threshold is not None and probability < threshold):
        return None
    if probability >= thresholds.get("high_specificity", float("inf")):
        return "solid"
    if probability >= thresholds.get("high_sensitivity", float("inf")):
        return "dotted"
    # Labelled fracture at an operating point of the user's own, below both named ones.
    return "dotted" if threshold is not None else None


def draw_region(
    image: np.ndarray,
    box: tuple[float, float, float, float] | None,
    style: str | None,
    colour: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """``image`` with ``box`` drawn solid or dotted (a copy; unchanged when there is no box)."""
    if box is None or style is None:
        return image
    if style not in ("solid", "dotted"):
        raise ValueError(f"box style must be 'solid' or 'dotted', got {style!r}")
    out = np.ascontiguousarray(image).copy()
    height, width = out.shape[:2]
    thickness = max(2, round(max(height, width) / 300))
    x0, y0 = round(box[0] * width), round(box[1] * height)
    x1, y1 = round(box[2] * width) - 1, round(box[3] * height) - 1
    if style == "solid":
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thickness, cv2.LINE_AA)
        return out
    dash = 4 * thickness
    for a, b in (
        ((x0, y0), (x1, y0)),
        ((x1, y0), (x1, y1)),
        ((x1, y1), (x0, y1)),
        ((x0, y1), (x0, y0)),
    ):
        length = max(abs(b[0] - a[0]), abs(b[1] - a[1]))
        for start in range(0, length, 2 * dash):
            end = min(start + dash, length)
            p = (
                a[0] + (b[0] - a[0]) * start // max(length, 1),
                a[1] + (b[1] - a[1]) * start // max(length, 1),
            )
            q = (
                a[0] + (b[0] - a[0]) * end // max(length, 1),
                a[1] + (b[1] - a[1]) * end // max(length, 1),
            )
            cv2.line(out, p, q, colour, thickness, cv2.LINE_AA)
    return out


def draw_scored_boxes(
    image: np.ndarray,
    boxes: Sequence[Any],
    style: str | None,
    colour: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """``image`` with every box drawn in ``style`` and its score written above it (a copy).

    ``boxes`` are the localisation head's (:class:`fracture.inference.localisation.Box`:
    normalised ``coordinates`` and ``score``). Shared by the command line's overlays and
    the DICOM Secondary Capture, so both look like the Predict page: dotted at the
    high-sensitivity point, solid at the high-specificity one. Unchanged without a style.
    """
    if not boxes or style is None:
        return image
    out = np.ascontiguousarray(image).copy()
    height, width = out.shape[:2]
    thickness = max(1, round(max(height, width) / 400))
    scale = max(0.35, max(height, width) / 900)
    for box in boxes:
        out = draw_region(out, box.coordinates, style, colour)
        label = f"{box.score:.2f}"
        (text_w, text_h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        x = min(max(0, round(box.x0 * width)), max(0, width - text_w))
        y = round(box.y0 * height) - 4
        if y - text_h < 0:  # no room above the box: write inside its top edge
            y = round(box.y0 * height) + text_h + 4
        cv2.putText(
            out, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA
        )
    return out


def overlay_heatmap(
    image: np.ndarray,
    heatmap: np.ndarray,
    alpha: float = 0.4,
    *,
    box: tuple[float, float, float, float] | None = None,
    style: str | None = None,
) -> np.ndarray:
    """Blend a JET-coloured ``heatmap`` (display heat in [0, 1]) over ``image`` (H, W, 3 uint8).

    Weak activations fade out (the colour's weight scales with the heat), so the
    radiograph stays readable away from the highlighted region. ``box`` and
    ``style`` (see :func:`strongest_region`, :func:`box_style`) draw the region.
    Returns uint8 RGB.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if heatmap.shape[:2] != image.shape[:2]:
        raise ValueError(f"heat map {heatmap.shape[:2]} and image {image.shape[:2]} differ in size")
    heat = np.clip(heatmap, 0, 1).astype(np.float32, copy=False)
    jet = cv2.applyColorMap(np.uint8(heat * 255), cv2.COLORMAP_JET)  # type: ignore[call-overload]
    colour = cv2.cvtColor(jet, cv2.COLOR_BGR2RGB)
    weight = heat * np.float32(alpha)
    # OpenCV's per-pixel weighted blend in one vectorised pass: about 5x faster
    # than the same arithmetic in float32 numpy on a full-size radiograph, which
    # matters in the single-image latency budget. Rounds to nearest.
    blended = cv2.blendLinear(np.ascontiguousarray(image), colour, 1 - weight, weight)
    return draw_region(blended, box, style)
