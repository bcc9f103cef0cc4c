"""Box supervision: teach the heat map the app shows to peak on the radiologists' boxes.

For a head of global average pooling and one dense unit, Grad-CAM on the last
feature map ``A`` equals the class activation map ``E = w . A`` (Zhou et al.,
CVPR 2016; see :mod:`fracture.inference.gradcam`), and ``logit = mean(E) + b``.
``E`` is differentiable and cheap, so the training loss can act on the very map
that the Predict page draws:

* fractured images with boxes: the share of ``softmax(E)`` over the cells that a
  box touches should be large, ``-log(share)`` (an attention-alignment loss in
  the spirit of Li et al., "Tell Me Where to Look: Guided Attention Inference
  Network", CVPR 2018, and of Rao et al., "Towards Better Understanding
  Attribution Methods", CVPR 2022, who supervise attributions with boxes);
  optionally also the share of the positive mass ``relu(E)`` inside the boxes,
  which the softmax share (a reward for the peak) leaves spread out;
* normal images: any positive evidence is penalised, ``mean(relu(E))``, so that a
  confident normal shows little or no heat.

Images without boxes (every normal; a fractured image that was never boxed)
still train the classifier through the usual cross-entropy on the logit.

All of this is for the binary fracture model, whose one logit is "fracture". A
K-class model (fracture types, body parts) trains with softmax cross-entropy
alone, through :func:`logit_tail`: its classes have no boxes of their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fracture.data.augment import Box
from fracture.model.network import CAM_LAYER, LOGIT_LAYER

if TYPE_CHECKING:
    import keras

__all__ = [
    "box_masks",
    "evidence_tail",
    "logit_tail",
    "box_alignment_loss",
    "box_loss_terms",
    "EVIDENCE_OUTPUT",
    "LOGIT_OUTPUT",
]

LOGIT_OUTPUT = "logit"
EVIDENCE_OUTPUT = "evidence"
# Cells are sampled this many times per side when rasterising a box, so that a box
# covering part of a cell still marks it.
_SUBCELLS = 8


def box_masks(boxes: Sequence[Sequence[Box]], grid: tuple[int, int]) -> np.ndarray:
    """(n, h, w) float32: 1 where a cell of the ``grid`` touches one of the image's boxes.

    ``boxes[i]`` are image ``i``'s boxes, normalised to the network input.
    """
    height, width = grid
    fine_h, fine_w = height * _SUBCELLS, width * _SUBCELLS
    masks = np.zeros((len(boxes), height, width), np.float32)
    for index, image_boxes in enumerate(boxes):
        if not image_boxes:
            continue
        canvas = np.zeros((fine_h, fine_w), bool)
        for x0, y0, x1, y1 in image_boxes:
            canvas[
                int(np.floor(y0 * fine_h)) : int(np.ceil(y1 * fine_h)),
                int(np.floor(x0 * fine_w)) : int(np.ceil(x1 * fine_w)),
            ] = True
        masks[index] = canvas.reshape(height, _SUBCELLS, width, _SUBCELLS).any(axis=(1, 3))
    return masks


def evidence_tail(model: "keras.Model", cut: str | None) -> "keras.Model":
    """The part of ``model`` after ``cut`` (None: all of it), with two outputs: logit and evidence map.

    The evidence map ``w . A`` shares the dense layer's kernel, so the box loss
    and the cross-entropy train the same weights.
    """
    import keras

    dense = model.get_layer(LOGIT_LAYER)

    class EvidenceMap(keras.layers.Layer):
        """``w . A``: each cell's contribution to the fracture logit (times h * w)."""

        def call(self, features: Any) -> Any:
            kernel = keras.ops.cast(dense.kernel[:, 0], features.dtype)
            return keras.ops.einsum("bhwc,c->bhw", features, kernel)

    features = model.get_layer(CAM_LAYER).output
    evidence = EvidenceMap(name=EVIDENCE_OUTPUT)(features)
    return keras.Model(
        model.input if cut is None else model.get_layer(cut).output,
        {LOGIT_OUTPUT: dense.output, EVIDENCE_OUTPUT: evidence},
        name="tail",
    )


def logit_tail(model: "keras.Model", cut: str | None) -> "keras.Model":
    """The part of ``model`` after ``cut`` (None: all of it) with one output, the logits.

    For K-class models, which train without the box loss; the output is keyed
    like :func:`evidence_tail`'s so that one training loop serves both.
    """
    import keras

    return keras.Model(
        model.input if cut is None else model.get_layer(cut).output,
        {LOGIT_OUTPUT: model.get_layer(LOGIT_LAYER).output},
        name="tail",
    )


def box_loss_terms(evidence: Any, inside: Any, label: Any) -> tuple[Any, Any, Any]:
    """The three per-image terms of the box loss, on flattened maps.

    ``evidence`` is (B, n) logit-unit evidence, ``inside`` (B, n) the 0/1 box mask,
    ``label`` (B,) 1 for fractured. Returns, per image, the peak term
    ``-log(share of softmax(E) inside the boxes)`` and the mass term
    ``-log(share of relu(E) inside the boxes)`` (both 0 unless the image is
    fractured and has boxes), and the normal term ``mean(relu(E))`` (0 unless normal).
    Callers weight and reduce them.
    """
    from keras import ops

    has_box = ops.cast(ops.sum(inside, axis=1) > 0, "float32") * label
    share = ops.sum(ops.softmax(evidence, axis=1) * inside, axis=1)
    peak = -ops.log(share + 1e-6) * has_box
    positive = ops.relu(evidence)
    # The small constant keeps a map with no positive evidence at a share of 1.
    mass_share = (ops.sum(positive * inside, axis=1) + 1e-3) / (ops.sum(positive, axis=1) + 1e-3)
    mass = -ops.log(mass_share) * has_box
    normal = ops.mean(positive, axis=1) * (1.0 - label)
    return peak, mass, normal


def box_alignment_loss(normal_weight: float = 0.2, mass_weight: float = 0.0):
    """A Keras loss on the evidence map; ``y_true`` is (B, h, w, 2): box mask, then the label.

    Per image: ``-log(share of softmax(E) inside its boxes)`` for a fractured image
    with boxes, plus ``mass_weight * -log(share of relu(E) inside its boxes)``;
    ``normal_weight * mean(relu(E))`` for a normal one; 0 otherwise
    (:func:`box_loss_terms`).

    The softmax share rewards the map's peak (the pointing game); the relu share
    rewards where its positive mass lies (the energy inside boxes, Wang et al.,
    Score-CAM, CVPR Workshops 2020), which the peak term alone leaves spread out.
    """
    from keras import ops

    def loss(y_true: Any, y_pred: Any) -> Any:
        evidence = ops.reshape(ops.cast(y_pred, "float32"), (ops.shape(y_pred)[0], -1))
        inside = ops.reshape(y_true[..., 0], (ops.shape(y_true)[0], -1))
        peak, mass, normal = box_loss_terms(evidence, inside, y_true[:, 0, 0, 1])
        return peak + mass_weight * mass + normal_weight * normal

    loss.__name__ = "box_alignment"
    return loss
