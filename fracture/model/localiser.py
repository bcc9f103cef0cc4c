"""The localisation head: where on the radiograph the fracture is, as a map and boxes.

A second head on the same ResNet-50 pass as the classifier. It reads
``conv4_block6_out`` (:data:`~fracture.model.network.EARLY_FEATURE_LAYER`, a 24 x 24 grid
at 384 px) and, in its two-level form, ``conv3_block4_out`` too (48 x 48), layers that the
classifier's recipe leaves at their ImageNet weights, and it is trained on the radiologists' boxes *after* the classifier, on frozen features
(:mod:`fracture.training.localiser`). Its gradient never reaches the classifier, so
the fracture probability is bit for bit what it was without it: the two jobs (how
likely, and where) no longer trade against each other, which the box-supervised
classifier of the previous model did (0.03 AUROC on unseen images for a map that
pointed at the fracture).

The head is CenterNet's (Zhou, Wang and Krähenbühl, "Objects as Points", 2019):
per grid cell, a centre score (a sigmoid: how likely a fracture's centre lies in this
cell), a sub-cell offset of that centre, and the box's width and height (log cells).
:mod:`fracture.inference.localisation` turns them into boxes with scores, several per
image where a radiograph has several fractures.

Layers (kept small: the head must add little to the network's own cost). One level::

    conv4 (24, 24, 1024) -> 1x1 conv 256, ReLU -> 3x3 conv 128, ReLU -> 3x3 conv 128, ReLU
                         -> 1x1 conv: centre (1), offset (2), log size (2)

Two levels, a feature pyramid's top-down step (Lin et al., "Feature Pyramid Networks
for Object Detection", CVPR 2017), for a grid of 8-pixel cells: a 16-pixel cell placed a
small fracture's centre too coarsely for its box to overlap the radiologist's by half::

    conv4 (24, 24, 1024) -> 1x1 conv 128, ReLU -> 2x upsampling --+
    conv3 (48, 48, 512)  -> 1x1 conv 128, ReLU -------------------+-> sum
                         -> 3x3 conv 128, ReLU -> 3x3 conv 128, ReLU -> 1x1 conv: 5 outputs

Stored as ``localiser.npz`` in a model folder (:class:`~fracture.model.folder.ModelFolder`
names the file and covers it with the card's checksums); this module owns its contents.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fracture.errors import FractureError
from fracture.io.files import atomic_write_npz, read_npz

if TYPE_CHECKING:
    import keras

__all__ = [
    "LocaliserError",
    "Localiser",
    "build_localiser_head",
    "CENTRE",
    "OFFSET",
    "SIZE",
    "OUTPUT_CHANNELS",
    "INPUT_LAYER",
    "PYRAMID_LAYERS",
]

# -- Configurable parameters ---------------------------------------------------------
INPUT_LAYER = "conv4_block6_out"  # the same as network.EARLY_FEATURE_LAYER (tested)
PYRAMID_LAYERS = ("conv3_block4_out", INPUT_LAYER)  # the two-level head's inputs, fine first
WIDTHS = (256, 128, 128)  # the 1x1 reduction, then two 3x3 convolutions
PYRAMID_WIDTH = 128  # both 1x1 reductions of the two-level head
# The centre channel's bias starts at log(0.01 / 0.99): CenterNet's prior that almost
# every cell holds no centre, so early training is not swamped by easy negatives.
CENTRE_PRIOR = 0.01
FORMAT_VERSION = 2  # 2 stores the input layers as a list; 1 (one layer) is still read

# The output channels, in order.
CENTRE = slice(0, 1)
OFFSET = slice(1, 3)
SIZE = slice(3, 5)
OUTPUT_CHANNELS = 5
_LAYER_NAMES = ("loc_reduce", "loc_conv1", "loc_conv2", "loc_out")
_PYRAMID_LAYER_NAMES = ("loc_reduce", "loc_lateral", "loc_conv1", "loc_conv2", "loc_out")


def _weight_count(levels: int) -> int:
    return 2 * len(_LAYER_NAMES if levels == 1 else _PYRAMID_LAYER_NAMES)


class LocaliserError(FractureError, ValueError):
    """A localiser file that is missing parts or does not fit the network."""


def build_localiser_head(channels: int | tuple[int, ...], name: str = "localiser") -> "keras.Model":
    """The head as a Keras model from feature maps to (H, W, 5) outputs.

    ``channels`` is one feature map's channel count (the one-level head on conv4), or
    a pair, fine level first (the two-level head on conv3 and conv4, whose outputs lie
    on the fine grid). The centre channel is a logit (the sigmoid is applied when
    decoding, where it is also clipped for the focal loss), the offset is in cells and
    the size in log cells.
    """
    import keras

    levels = (channels,) if isinstance(channels, int) else tuple(channels)
    if len(levels) == 1:
        inputs = [keras.Input(shape=(None, None, levels[0]), name=f"{name}_features")]
        x = keras.layers.Conv2D(WIDTHS[0], 1, activation="relu", name=_LAYER_NAMES[0])(inputs[0])
    elif len(levels) == 2:
        inputs = [
            keras.Input(shape=(None, None, c), name=f"{name}_{level}")
            for c, level in zip(levels, ("fine", "coarse"))
        ]
        coarse = keras.layers.Conv2D(
            PYRAMID_WIDTH, 1, activation="relu", name=_PYRAMID_LAYER_NAMES[0]
        )(inputs[1])
        fine = keras.layers.Conv2D(
            PYRAMID_WIDTH, 1, activation="relu", name=_PYRAMID_LAYER_NAMES[1]
        )(inputs[0])
        x = keras.layers.Add(name="loc_sum")(
            [fine, keras.layers.UpSampling2D(2, name="loc_upsample")(coarse)]
        )
    else:
        raise LocaliserError(f"the localisation head reads one or two levels, not {len(levels)}")
    x = keras.layers.Conv2D(WIDTHS[1], 3, padding="same", activation="relu", name="loc_conv1")(x)
    x = keras.layers.Conv2D(WIDTHS[2], 3, padding="same", activation="relu", name="loc_conv2")(x)
    prior = float(np.log(CENTRE_PRIOR / (1 - CENTRE_PRIOR)))
    bias = np.zeros(OUTPUT_CHANNELS, np.float32)
    bias[CENTRE] = prior
    outputs = keras.layers.Conv2D(
        OUTPUT_CHANNELS,
        1,
        name="loc_out",
        bias_initializer=keras.initializers.Constant(bias),
    )(x)
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=name)


@dataclass
class Localiser:
    """A trained localisation head: its weights and the settings its boxes need.

    ``box_threshold`` is the centre score above which a decoded box is shown; it was
    chosen on images the head did not train on (``trained_on`` says how; the card holds
    the evaluation figures).
    """

    weights: list[np.ndarray]
    input_layers: tuple[str, ...] = (INPUT_LAYER,)
    box_threshold: float = 0.3
    max_boxes: int = 5
    trained_on: str = ""

    def __post_init__(self) -> None:
        self.input_layers = tuple(self.input_layers)
        if len(self.input_layers) not in (1, 2):
            raise LocaliserError(
                f"a localiser reads one or two layers, got {len(self.input_layers)}"
            )
        expected = _weight_count(len(self.input_layers))
        if len(self.weights) != expected:
            raise LocaliserError(
                f"a localiser on {len(self.input_layers)} layer(s) has {expected} weight "
                f"arrays, got {len(self.weights)}"
            )
        if not all(np.isfinite(w).all() for w in self.weights):
            raise LocaliserError("the localiser has non-finite weights")
        if not 0 < self.box_threshold < 1:
            raise LocaliserError(f"box threshold must lie in (0, 1), got {self.box_threshold}")
        if self.weights[-1].shape != (OUTPUT_CHANNELS,):
            raise LocaliserError(f"the localiser's output has {self.weights[-1].shape} channels")

    @property
    def input_channels(self) -> tuple[int, ...]:
        """The channels of each input layer, in ``input_layers`` order."""
        if len(self.input_layers) == 1:
            return (int(self.weights[0].shape[2]),)
        # Two levels: weights[0] reduces the coarse level, weights[2] the fine one.
        return (int(self.weights[2].shape[2]), int(self.weights[0].shape[2]))

    def head(self) -> "keras.Model":
        """A Keras head with these weights, taking the ``input_layers`` outputs in order."""
        head = build_localiser_head(self.input_channels)
        head.set_weights(self.weights)
        return head

    def describe(self) -> str:
        """The head's layers in words, for the model card."""
        if len(self.input_layers) == 1:
            return (
                f"a CenterNet localisation head (1x1 conv {WIDTHS[0]}, two 3x3 conv "
                f"{WIDTHS[1]}, 5 outputs) on {self.input_layers[0]}"
            )
        fine, coarse = self.input_layers
        return (
            f"a CenterNet localisation head on two levels, a feature pyramid's top-down step: "
            f"{coarse} (1x1 conv {PYRAMID_WIDTH}, upsampled 2x) added to {fine} (1x1 conv "
            f"{PYRAMID_WIDTH}), then two 3x3 conv {WIDTHS[1]} and 5 outputs on {fine}'s grid"
        )

    def attach(self, network: "keras.Model") -> Any:
        """The head's output tensor on ``network``'s own ``input_layers``: no second pass."""
        features = [network.get_layer(name).output for name in self.input_layers]
        return self.head()(features if len(features) > 1 else features[0])

    @classmethod
    def from_head(cls, head: "keras.Model", **settings: Any) -> "Localiser":
        return cls(weights=[np.asarray(w, np.float32) for w in head.get_weights()], **settings)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the head as an ``.npz`` file, atomically."""
        arrays = {f"w{i}": w.astype(np.float32) for i, w in enumerate(self.weights)}
        arrays.update(
            format=np.array(FORMAT_VERSION, np.int64),
            input_layers=np.array(list(self.input_layers), dtype=np.str_),
            box_threshold=np.array(self.box_threshold, np.float64),
            max_boxes=np.array(self.max_boxes, np.int64),
            trained_on=np.array(self.trained_on, dtype=np.str_),
        )
        return atomic_write_npz(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Localiser":
        """Read a head written by :meth:`save`; raises :class:`LocaliserError` if it is not one."""
        stored = read_npz(
            path,
            what="localisation head",
            required=["box_threshold", "max_boxes"],
            formats=(1, FORMAT_VERSION),
            error=LocaliserError,
        )
        if "input_layers" in stored:
            layers = tuple(str(name) for name in np.atleast_1d(stored["input_layers"]))
        elif "input_layer" in stored:  # format 1
            layers = (str(stored["input_layer"]),)
        else:
            raise LocaliserError(f"{path} does not say which layers the localisation head reads")
        count = _weight_count(len(layers))
        missing = [f"w{i}" for i in range(count) if f"w{i}" not in stored]
        if missing:
            raise LocaliserError(f"{path} lacks the localisation head's weights {missing}")
        return cls(
            weights=[stored[f"w{i}"].astype(np.float32) for i in range(count)],
            input_layers=layers,
            box_threshold=float(stored["box_threshold"]),
            max_boxes=int(stored["max_boxes"]),
            trained_on=str(stored["trained_on"]) if "trained_on" in stored else "",
        )
