"""Grad-CAM heat maps for the fracture classifier.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks
via Gradient-based Localization", ICCV 2017) weights each channel of a
convolutional feature map by the spatial mean of the gradient of the class
score with respect to it, sums the channels and keeps the positive part.

Here the class score is the *logit* of the fracture output, not the sigmoid
probability: the sigmoid saturates for confident cases and would flatten the
gradients exactly where the explanation is most wanted.

:class:`InferenceEngine` computes probability and heat map from one forward
pass, inside a ``tf.function`` with a fixed input signature.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from fracture.model import CAM_LAYER, LOGIT_LAYER, POOL_LAYER
from fracture.preprocessing import Geometry, unletterbox

if TYPE_CHECKING:
    import keras

__all__ = ["InferenceEngine", "BatchOutput", "heatmap_to_image", "overlay_heatmap"]


@dataclass
class BatchOutput:
    """Network outputs for one batch, as numpy arrays."""

    logits: np.ndarray  # (B,)
    pooled: np.ndarray  # (B, 2048) global-average-pooled features, used by the OOD gate
    cams: np.ndarray | None  # (B, h, w) in [0, 1] on the network's input grid, or None


class InferenceEngine:
    """Batched, retrace-free inference with optional Grad-CAM on ``target_layer``.

    Two compiled functions share one model: ``scores`` (forward only) and
    ``scores_and_cams`` (one forward pass under a gradient tape, then a
    backward pass that stops at ``target_layer``). Both take a fixed
    ``(batch_size, size, size, 3)`` input; callers pad the last batch.
    """

    def __init__(
        self, model: "keras.Model", batch_size: int, target_layer: str = CAM_LAYER
    ) -> None:
        import keras
        import tensorflow as tf

        names = {layer.name for layer in model.layers}
        self.has_cam = target_layer in names
        if not self.has_cam:
            # Predictions still work; only the explanation is lost, so say it loudly.
            warnings.warn(
                f"Grad-CAM target layer {target_layer!r} is not in model {model.name!r}; "
                f"heat maps are unavailable. Layers ending in '_out' are valid targets.",
                RuntimeWarning,
                stacklevel=2,
            )
            target_layer = POOL_LAYER
        self.batch_size = batch_size
        self.size = int(model.input.shape[1])
        self._graph = keras.Model(
            model.input,
            [
                model.get_layer(target_layer).output,
                model.get_layer(POOL_LAYER).output,
                model.get_layer(LOGIT_LAYER).output,
            ],
        )
        spec = [tf.TensorSpec((batch_size, self.size, self.size, 3), tf.float32)]
        self._scores = tf.function(self._forward, input_signature=spec, jit_compile=False)
        self._scores_and_cams = tf.function(self._forward_with_cam, input_signature=spec)

    def _forward(self, images):
        _, pooled, logits = self._graph(images, training=False)
        return logits[:, 0], pooled

    def _forward_with_cam(self, images):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            features, pooled, logits = self._graph(images, training=False)
            # Samples are independent (BatchNorm in inference mode), so the
            # gradient of the sum gives every sample its own gradient at once.
            score = tf.reduce_sum(logits)
        gradients = tape.gradient(score, features)
        channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cams = tf.nn.relu(tf.reduce_sum(channel_weights * features, axis=-1))
        peak = tf.reduce_max(cams, axis=(1, 2), keepdims=True)
        cams = tf.math.divide_no_nan(cams, peak)
        return logits[:, 0], pooled, cams

    def run(self, images: np.ndarray, with_cam: bool) -> BatchOutput:
        """Score ``images`` (n <= batch_size, size, size, 3), padding to the fixed batch."""
        count = images.shape[0]
        if count > self.batch_size:
            raise ValueError(f"batch of {count} exceeds the engine's batch size {self.batch_size}")
        padded = np.zeros((self.batch_size, self.size, self.size, 3), np.float32)
        padded[:count] = images
        if with_cam and self.has_cam:
            logits, pooled, cams = self._scores_and_cams(padded)
            cams_np = cams.numpy()[:count]
        else:
            logits, pooled = self._scores(padded)
            cams_np = None
        return BatchOutput(logits.numpy()[:count], pooled.numpy()[:count], cams_np)


def heatmap_to_image(cam: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Upsample a coarse CAM to the original image's pixels, in [0, 1]."""
    full = unletterbox(cam.astype(np.float32), geometry)
    return np.clip(full, 0.0, 1.0)


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a JET-coloured ``heatmap`` over ``image`` (H, W, 3 uint8); returns uint8 RGB.

    Weak activations fade out (the colour's weight scales with the heat), so the
    radiograph stays readable away from the highlighted region.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if heatmap.shape[:2] != image.shape[:2]:
        raise ValueError(f"heat map {heatmap.shape[:2]} and image {image.shape[:2]} differ in size")
    heat_u8 = np.uint8(np.clip(heatmap, 0, 1) * 255)
    colour = cv2.cvtColor(cv2.applyColorMap(heat_u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    weight = (alpha * np.clip(heatmap, 0, 1))[..., None]
    blended = image.astype(np.float32) * (1 - weight) + colour.astype(np.float32) * weight
    return np.uint8(np.clip(blended, 0, 255))
