"""ResNet-50 fracture classifier: build, split at the freeze point, save and load.

The network is one flat Keras functional graph::

    RGB [0, 255] -> CaffePreprocess -> ResNet-50 (He et al. 2016, ImageNet) ->
    GlobalAveragePooling -> Dropout -> Dense(1, "logit") -> sigmoid

Flat (not a nested sub-model) so that Grad-CAM reaches ``conv5_block3_out`` by
name. A saved model is a small folder: only what differs from ImageNet (the
fine-tuned blocks as float16 deltas, the head in float32) plus
``config.json`` and the model card. Loading rebuilds ResNet-50 from the
resolved ImageNet weights and applies the difference, which keeps a model
folder near 20 MB so that it lives in git and on a hosted demo without LFS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fracture.io.files import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    import keras

__all__ = [
    "ModelConfig",
    "LoadedModel",
    "ModelLoadError",
    "build_classifier",
    "set_trainable",
    "split_at",
    "fold_batchnorm",
    "save_model",
    "load_model",
    "file_checksums",
    "quantise_like_saved",
    "imagenet_reference",
    "read_config",
    "apply_stored_weights",
    "CAM_LAYER",
    "LOGIT_LAYER",
    "POOL_LAYER",
]

CAM_LAYER = "conv5_block3_out"
LOGIT_LAYER = "logit"
POOL_LAYER = "avg_pool"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.npz"
CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
OOD_FILE = "ood.npz"
FORMAT_VERSION = 1
# ImageNet channel means in BGR order, as used by the original caffe ResNet.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a classifier and prepare its input."""

    image_size: int = 224
    # Layers after this one are fine-tuned; it and everything before stay ImageNet.
    fine_tune_from: str = "conv5_block1_out"
    dropout: float = 0.3
    # Calibration and operating points are fitted on val. Class-weighted training
    # trains the logit as if both classes were equally common, which adds
    # log(w_fracture / w_normal) to it; ``prior_shift`` removes that before the
    # temperature is applied, so probabilities match the data's prevalence.
    prior_shift: float = 0.0
    temperature: float = 1.0
    thresholds: dict[str, float] = field(
        default_factory=lambda: {"high_sensitivity": 0.5, "high_specificity": 0.5}
    )
    operating_point: str = "high_sensitivity"
    # "bfloat16" once `python -m fracture bench --apply` has found it within 0.005
    # AUROC of float32 on val and faster; None serves float32.
    inference_precision: str | None = None
    name: str = "untrained"
    version: str = "0"

    @property
    def threshold(self) -> float:
        return float(self.thresholds[self.operating_point])

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class ModelLoadError(RuntimeError):
    """A model folder is missing, incomplete or fails its checksum."""


def _caffe_preprocess_layer() -> "keras.layers.Layer":
    import keras

    @keras.saving.register_keras_serializable(package="fracture")
    class CaffePreprocess(keras.layers.Layer):
        """RGB [0, 255] to ResNet-50's caffe input: BGR with ImageNet means removed.

        Inside the graph so every caller, notebook or server, feeds plain RGB.
        """

        def call(self, inputs):
            bgr = keras.ops.flip(inputs, axis=-1)
            return bgr - keras.ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=inputs.dtype)

    return CaffePreprocess(name="caffe_preprocess")


def build_classifier(
    config: ModelConfig, imagenet_weights: str | os.PathLike[str] | None
) -> "keras.Model":
    """Build the flat ResNet-50 binary classifier.

    ``imagenet_weights`` is a path from :func:`fracture.model.imagenet.resolve_imagenet_weights`,
    or ``None`` for random initialisation (tests, ``--no-pretrained``).
    """
    import keras

    size = config.image_size
    image = keras.Input(shape=(size, size, 3), name="image")
    normalised = _caffe_preprocess_layer()(image)
    backbone = keras.applications.ResNet50(
        include_top=False,
        weights=str(imagenet_weights) if imagenet_weights else None,
        input_tensor=normalised,
    )
    pooled = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER)(backbone.output)
    dropped = keras.layers.Dropout(config.dropout, name="head_dropout")(pooled)
    logit = keras.layers.Dense(1, name=LOGIT_LAYER)(dropped)
    probability = keras.layers.Activation("sigmoid", name="probability")(logit)
    model = keras.Model(image, probability, name="fracture_resnet50")
    if model.get_layer(CAM_LAYER) is None:  # pragma: no cover - keras renamed its layers
        raise RuntimeError(f"ResNet-50 has no layer {CAM_LAYER!r}; Grad-CAM cannot work")
    return model


def _layer_names(model: "keras.Model") -> list[str]:
    return [layer.name for layer in model.layers]


def _tail_layers(model: "keras.Model", fine_tune_from: str) -> list["keras.layers.Layer"]:
    names = _layer_names(model)
    if fine_tune_from not in names:
        raise ValueError(
            f"Layer {fine_tune_from!r} is not in the model; choose one of the '*_out' "
            f"block outputs such as conv4_block6_out or conv5_block1_out"
        )
    return model.layers[names.index(fine_tune_from) + 1 :]


def set_trainable(model: "keras.Model", fine_tune_from: str | None) -> None:
    """Freeze everything up to ``fine_tune_from``; fine-tune after it, BatchNorm excepted.

    ``None`` freezes the whole backbone (head-only training). BatchNorm layers
    stay frozen, which in Keras 3 also keeps them in inference mode: with the
    small batches a CPU affords, batch statistics would be noise.
    """
    import keras

    backbone_end = POOL_LAYER if fine_tune_from is None else fine_tune_from
    tail = set(id(layer) for layer in _tail_layers(model, backbone_end))
    for layer in model.layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = id(layer) in tail and not is_bn


def split_at(model: "keras.Model", layer_name: str) -> tuple["keras.Model", "keras.Model"]:
    """Split ``model`` into (frozen stem up to ``layer_name``, trainable tail after it).

    Both halves share the model's layers, so training the tail trains the model.
    The stem's outputs are what the feature cache stores; the tail ends at the
    logit, because a loss on logits is numerically safer than on probabilities.
    """
    import keras

    cut = model.get_layer(layer_name).output
    stem = keras.Model(model.input, cut, name="stem")
    tail = keras.Model(cut, model.get_layer(LOGIT_LAYER).output, name="tail")
    return stem, tail


def fold_batchnorm(model: "keras.Model") -> "keras.Model":
    """An inference-only copy of ``model`` with each BatchNormalization folded into its convolution.

    In inference mode a BatchNormalization layer is a fixed per-channel affine
    map, ``gamma * (x - mean) / sqrt(var + eps) + beta``; after a convolution it
    folds exactly into that convolution's kernel and bias (Ioffe & Szegedy 2015;
    Jacob et al., CVPR 2018, section 3.2). ResNet-50 has 53 of them, each a
    memory-bound pass over a full activation map, and in bfloat16 each is also a
    round trip through float32. Measured on the 2-core reference machine at
    384 px: float32 about 1.1x faster, bfloat16 about 1.4x faster than bfloat16
    without folding (``python -m fracture bench``). Outputs agree with ``model``
    to float32 round-off (tested).

    Layer names are kept: a folded layer becomes a pass-through of the same
    name, so Grad-CAM and the feature taps find their layers. The copy cannot
    be trained (its BatchNorm statistics are gone); train ``model`` itself.
    A BatchNormalization that does not directly follow a convolution is left as it is.
    """
    import keras

    # Keras has no public graph-walking API; the functional model's node records
    # (_inbound_nodes / _outbound_nodes) are what clone_model itself uses.
    folded_into: dict[str, keras.layers.Layer] = {}  # convolution name -> its BatchNorm
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            parent = layer._inbound_nodes[0].parent_nodes
            source = parent[0].operation if len(parent) == 1 else None
            if isinstance(source, keras.layers.Conv2D) and not _has_other_consumers(source):
                folded_into[source.name] = layer
    folded_bn = {bn.name for bn in folded_into.values()}

    def clone(layer: "keras.layers.Layer") -> "keras.layers.Layer":
        if layer.name in folded_bn:
            return _pass_through_layer(layer.name)
        config = layer.get_config()
        if layer.name in folded_into:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.name in folded_bn:
            continue
        target = copy.get_layer(layer.name)
        bn = folded_into.get(layer.name)
        if bn is None:
            target.set_weights(layer.get_weights())
            continue
        gamma = bn.gamma.numpy() if bn.scale else 1.0
        beta = bn.beta.numpy() if bn.center else 0.0
        scale = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
        bias = layer.bias.numpy() if layer.use_bias else 0.0
        target.set_weights([layer.kernel.numpy() * scale,
                            (bias - bn.moving_mean.numpy()) * scale + beta])
    return copy


def _has_other_consumers(layer: "keras.layers.Layer") -> bool:
    # Folding rewrites the convolution's output: only safe when the BatchNorm is its one reader.
    return len(layer._outbound_nodes) > 1


def _pass_through_layer(name: str) -> "keras.layers.Layer":
    import keras

    class FoldedBatchNorm(keras.layers.Layer):
        """Where a BatchNormalization was before :func:`fold_batchnorm` moved it into the convolution."""

        def call(self, inputs, training=None, mask=None):  # noqa: ARG002 - BatchNorm's signature
            return inputs

    return FoldedBatchNorm(name=name)


def _trained_layers(model: "keras.Model", config: ModelConfig) -> list["keras.layers.Layer"]:
    return [layer for layer in _tail_layers(model, config.fine_tune_from) if layer.weights]


def _is_head(name: str) -> bool:
    return name == LOGIT_LAYER


def save_model(
    model: "keras.Model",
    config: ModelConfig,
    directory: str | os.PathLike[str],
    *,
    reference: dict[str, list[np.ndarray]],
    card: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a model folder: config, weight deltas and card.

    ``reference`` maps layer names to their ImageNet weights (see
    :func:`imagenet_reference`); the backbone is stored as float16 differences from it, which are small, so
    float16 loses nothing that matters. Call :func:`quantise_like_saved` first
    when the in-memory model must predict exactly as the saved one will.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for layer in _trained_layers(model, config):
        values = [np.asarray(w) for w in layer.get_weights()]
        if _is_head(layer.name):
            for index, value in enumerate(values):
                arrays[f"head/{layer.name}/{index}"] = value.astype(np.float32)
            continue
        base = reference[layer.name]
        for index, (value, base_value) in enumerate(zip(values, base)):
            arrays[f"delta/{layer.name}/{index}"] = (value - base_value).astype(np.float16)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(directory / WEIGHTS_FILE, buffer.getvalue())
    atomic_write_json(directory / CONFIG_FILE, config.to_json())
    card = dict(card or {})
    card["checksums"] = file_checksums(directory)
    atomic_write_json(directory / CARD_JSON, card)
    return directory


def imagenet_reference(model: "keras.Model", config: ModelConfig) -> dict[str, list[np.ndarray]]:
    """Snapshot the weights of the layers that fine-tuning will change, before it does."""
    return {
        layer.name: [np.array(w) for w in layer.get_weights()]
        for layer in _trained_layers(model, config)
        if not _is_head(layer.name)
    }


def quantise_like_saved(
    model: "keras.Model", config: ModelConfig, reference: dict[str, list[np.ndarray]]
) -> None:
    """Round the fine-tuned backbone to what :func:`save_model` stores.

    Evaluating, calibrating and choosing thresholds after this step means the
    numbers in the model card describe the model that is shipped, bit for bit.
    """
    for layer in _trained_layers(model, config):
        if _is_head(layer.name):
            continue
        base = reference[layer.name]
        rounded = [
            b + (w - b).astype(np.float16).astype(np.float32)
            for w, b in zip(layer.get_weights(), base)
        ]
        layer.set_weights(rounded)


def file_checksums(directory: str | os.PathLike[str]) -> dict[str, str]:
    """SHA256 of the files that define a model's behaviour."""
    directory = Path(directory)
    return {
        name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
        for name in (CONFIG_FILE, WEIGHTS_FILE, OOD_FILE)
        if (directory / name).is_file()
    }


@dataclass
class LoadedModel:
    """A rebuilt classifier with its configuration and card."""

    model: "keras.Model"
    config: ModelConfig
    card: dict[str, Any]
    directory: Path | None


def read_config(directory: str | os.PathLike[str]) -> tuple[ModelConfig, dict[str, Any]]:
    """Read and verify a model folder's config and card without building anything."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise ModelLoadError(
            f"No model at {directory}: it has no {CONFIG_FILE}. Train one with "
            f"'python -m fracture train DATA --out runs/NAME' or pass --model."
        )
    card_path = directory / CARD_JSON
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    expected = card.get("checksums")
    if not expected:
        raise ModelLoadError(f"Model {directory} has no checksums in {CARD_JSON}; refusing it")
    actual = file_checksums(directory)
    for name, digest in expected.items():
        if actual.get(name) != digest:
            raise ModelLoadError(
                f"Model {directory} is corrupt or half-written: {name} does not match "
                f"the checksum in its model card"
            )
    unverified = sorted(set(actual) - set(expected))
    if unverified:
        raise ModelLoadError(
            f"Model {directory} has {', '.join(unverified)} not covered by the checksums "
            f"in {CARD_JSON}; refusing it"
        )
    config = ModelConfig.from_json(json.loads((directory / CONFIG_FILE).read_text()))
    return config, card


def load_model(
    directory: str | os.PathLike[str],
    imagenet_weights: str | os.PathLike[str] | None,
) -> LoadedModel:
    """Rebuild a saved model: ResNet-50 from ImageNet weights plus the stored difference."""
    directory = Path(directory)
    config, card = read_config(directory)
    model = build_classifier(config, imagenet_weights)
    with np.load(directory / WEIGHTS_FILE) as stored:
        arrays = {key: stored[key] for key in stored.files}
    apply_stored_weights(model, config, arrays)
    return LoadedModel(model=model, config=config, card=card, directory=directory)


def apply_stored_weights(
    model: "keras.Model", config: ModelConfig, arrays: dict[str, np.ndarray]
) -> None:
    """Add stored deltas to the ImageNet backbone and set the head."""
    used: set[str] = set()
    for layer in _trained_layers(model, config):
        kind = "head" if _is_head(layer.name) else "delta"
        current = layer.get_weights()
        updated = []
        for index, value in enumerate(current):
            key = f"{kind}/{layer.name}/{index}"
            if key not in arrays:
                raise ModelLoadError(f"Stored weights lack {key}; the model folder is incomplete")
            stored = arrays[key].astype(np.float32)
            updated.append(stored if kind == "head" else value + stored)
            used.add(key)
        layer.set_weights(updated)
    unused = set(arrays) - used
    if unused:
        raise ModelLoadError(
            f"Stored weights have {len(unused)} arrays this architecture does not use "
            f"(e.g. {sorted(unused)[0]}); was it saved with another fine_tune_from?"
        )
