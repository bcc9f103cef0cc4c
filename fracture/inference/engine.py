"""The batched inference engine: logits, pooled features and Grad-CAM in one pass.

Pooled features come from two layers: the head's global pooling, and
``conv4_block6_out`` pooled (:data:`~fracture.model.network.EARLY_FEATURE_LAYER`), which the
OOD gate also reads (:mod:`fracture.inference.ood`); the latter costs one mean over a
map the forward pass computes anyway.

:class:`InferenceEngine` computes the logits and heat maps from one forward
pass (for a K-class model, every class's map at once), inside a ``tf.function`` with a fixed input signature, in float32 or,
on hardware with native bfloat16 arithmetic, in bfloat16 (see
:func:`bfloat16_copy`). :func:`configure_threads` sizes TensorFlow's thread
pools; callers run it before TensorFlow executes its first operation.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fracture.inference.gradcam import class_activation_maps, grad_cam, to_float32
from fracture.model.network import (
    CAM_LAYER,
    EARLY_FEATURE_LAYER,
    LOGIT_LAYER,
    POOL_LAYER,
    fold_batchnorm,
)

if TYPE_CHECKING:
    import keras

    from fracture.model.localiser import Localiser

__all__ = [
    "InferenceEngine",
    "BatchOutput",
    "NetworkEngine",
    "PRECISIONS",
    "inference_network",
    "bfloat16_copy",
    "bfloat16_supported",
    "configure_threads",
    "default_thread_counts",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("float32", "bfloat16")
# Layers kept in float32 in a bfloat16 copy: the input normalisation (subtracting
# the channel means in float32 first leaves bfloat16 a small, centred value to
# round) and the head from the global pooling on (pooling 2048 channels and the
# logit are cheap, and their rounding would land directly on the probability).
_FLOAT32_LAYERS = frozenset(
    {"caffe_preprocess", POOL_LAYER, "head_dropout", LOGIT_LAYER, "probability"}
)
# CPU flags of native bfloat16 arithmetic (AVX-512 BF16, AMX); without them
# TensorFlow emulates bfloat16 and is slower than float32.
_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# At most this many inter-op threads (see configure_threads for the measurements).
MAX_INTER_OP_THREADS = 2
_threads: tuple[int, int] | None = None


def configure_threads(intra_op: int | None = None, inter_op: int | None = None) -> tuple[int, int]:
    """Size TensorFlow's two thread pools; the first call wins, later ones change nothing.

    Must run before TensorFlow executes any operation (TensorFlow refuses to
    resize its pools afterwards): :class:`~fracture.inference.predictor.Predictor` calls it
    first thing, and so should anything that builds a model before it.
    Returns the (intra-op, inter-op) threads in effect (0: TensorFlow's own
    default, when TensorFlow was already running).

    Why these values:

    * intra-op = the CPUs this process may run on (``os.sched_getaffinity``,
      which honours ``taskset`` and container cpusets, unlike
      ``os.cpu_count``): every convolution of ResNet-50 is large enough to
      spread over all of them.
    * inter-op = min(2, CPUs): ResNet-50 has at most two independent ops at
      any point (a block's main branch and its projection shortcut), so a
      third inter-op thread never has work, while TensorFlow's default (one
      per core) lets several requests' ops run at once on a many-core server,
      each asking for every core. Measured on the 2-core reference machine
      with ``fracture bench`` in alternating fresh processes (BENCHMARKS.md):
      inter-op 1 and 2 give the same batch throughput and CPU time per image
      within noise, and 2 was 3-8 % faster for a single image in two
      alternating pairs (the shortcut can overlap the main branch), so 2.
      tf.data decodes on threads of its own either way.

    ``FRACTURE_INTRA_OP_THREADS`` and ``FRACTURE_INTER_OP_THREADS`` override
    the defaults (for benchmarking, or a server shared with other work).
    """
    global _threads
    import tensorflow as tf

    if _threads is not None:
        return _threads
    default_intra, default_inter = default_thread_counts()
    intra = intra_op or default_intra
    inter = inter_op or default_inter
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
        _threads = (intra, inter)
    except RuntimeError:
        # TensorFlow already ran an op (a notebook, a test session): keep its
        # pools and report them; 0 stands for TensorFlow's own default.
        logger.info("TensorFlow is already initialised; thread pools left as they are")
        _threads = (
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        )
    return _threads


def default_thread_counts() -> tuple[int, int]:
    """The (intra-op, inter-op) threads :func:`configure_threads` sets when not told otherwise."""
    if hasattr(os, "sched_getaffinity"):
        cpus = len(os.sched_getaffinity(0))
    else:  # macOS, Windows
        cpus = os.cpu_count() or 1
    intra = _env_int("FRACTURE_INTRA_OP_THREADS") or cpus
    inter = _env_int("FRACTURE_INTER_OP_THREADS") or min(MAX_INTER_OP_THREADS, intra)
    return intra, inter


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def bfloat16_supported() -> bool:
    """Whether this machine computes bfloat16 natively: a GPU, or a CPU with AVX-512 BF16 or AMX."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return True
    return bool(_cpu_flags() & _BF16_CPU_FLAGS)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: assume no native bfloat16 rather than guess
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def bfloat16_copy(model: "keras.Model") -> "keras.Model":
    """A copy of ``model`` computing in bfloat16, from the same weights.

    Convolutions hold their kernels in bfloat16 (Keras policy ``bfloat16``):
    rounding them once here gives exactly the numbers that ``mixed_bfloat16``
    would round to on every call, without re-casting 23 M weights per call
    (measured 6-8 % faster for one image) and with half the copy's memory.
    The other layers use ``mixed_bfloat16`` (float32 variables; a BatchNormalization
    left in the model normalises in float32 under it, which is why
    :func:`inference_network` folds them away first), and the layers in
    ``_FLOAT32_LAYERS`` stay float32. Layer names are kept, so Grad-CAM finds
    its target layer in the copy.
    """
    import keras

    def clone(layer):
        config = layer.get_config()
        if layer.name not in _FLOAT32_LAYERS:
            is_conv = isinstance(layer, keras.layers.Conv2D)
            config["dtype"] = "bfloat16" if is_conv else "mixed_bfloat16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())  # cast to each variable's dtype
    return copy


_networks: "weakref.WeakKeyDictionary[keras.Model, dict[str, keras.Model]]" = (
    weakref.WeakKeyDictionary()
)
_networks_lock = threading.Lock()


def inference_network(model: "keras.Model", precision: str = "float32") -> "keras.Model":
    """The network :class:`InferenceEngine` runs for ``model``: BatchNorm folded
    (:func:`~fracture.model.network.fold_batchnorm`), then a :func:`bfloat16_copy` if asked.

    Made once per model and precision and shared: a server's batch-of-one and
    batch engines over the same model hold one copy of the weights, not two.
    Rebuilt if ``model`` is a new object (a reloaded or promoted model).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    with _networks_lock:
        built = _networks.setdefault(model, {})
        if precision not in built:
            folded = built.get("float32") or fold_batchnorm(model)
            built[precision] = folded if precision == "float32" else bfloat16_copy(folded)
        return built[precision]


@dataclass
class BatchOutput:
    """Network outputs for one batch, as numpy arrays.

    A binary model has one logit and one map per image; a K-class model has K of each,
    the last axis following the model's class list.
    """

    logits: np.ndarray  # (B,) binary, (B, K) K-class
    pooled: np.ndarray  # (B, 2048) the head's global-average-pooled features
    # Grad-CAM in logit units on the network's grid: (B, h, w) binary, (B, h, w, K) K-class
    cams: np.ndarray | None
    # (B, 1024) conv4_block6_out, average-pooled; None for a network without that layer
    early_pooled: np.ndarray | None = None
    # (B, h, w, 5) the localisation head's raw outputs (fracture.model.localiser); None
    # for a model without one
    localiser: np.ndarray | None = None

    def gate_features(self) -> dict[str, np.ndarray]:
        """The pooled features by layer name, as the OOD gate reads them."""
        features = {POOL_LAYER: self.pooled}
        if self.early_pooled is not None:
            features[EARLY_FEATURE_LAYER] = self.early_pooled
        return features


class NetworkEngine(Protocol):
    """The network step of a predictor: letterboxed images in, one :class:`BatchOutput` out.

    :class:`InferenceEngine` runs it in TensorFlow,
    :class:`~fracture.inference.runtime.OnnxEngine` in ONNX Runtime; everything
    before (decoding, letterbox) and after (heads, boxes, verdict) is the predictor's.
    """

    batch_size: int

    def run(self, images: np.ndarray, with_cam: bool) -> BatchOutput: ...


class InferenceEngine:
    """Batched, retrace-free inference with optional Grad-CAM on ``target_layer``.

    Two compiled functions share one model: ``scores`` (forward only) and
    ``scores_and_cams`` (one forward pass under a gradient tape, then a
    backward pass that stops at ``target_layer``). Both take a fixed
    ``(batch_size, size, size, 3)`` input; callers pad the last batch. With
    ``fixed_batch=False`` the batch dimension is left open instead (still one
    trace, any size up to ``batch_size``, no padding): the shared serving queue
    (:mod:`fracture.inference.batching`) runs whatever batch has formed, and
    padding one waiting image to eight would cost eight images' time.

    It runs :func:`inference_network` of the model (BatchNorm folded, and in
    bfloat16 when ``precision="bfloat16"``); inputs and outputs stay float32.

    A model whose logit layer has K > 1 units (a softmax classifier) gets every
    class's map from the forward pass alone (:func:`~fracture.inference.gradcam.class_activation_maps`):
    K backward passes would cost K times the binary path's, for the same maps.
    """

    def __init__(
        self,
        model: "keras.Model",
        batch_size: int,
        target_layer: str = CAM_LAYER,
        precision: str = "float32",
        fixed_batch: bool = True,
        localiser: "Localiser | None" = None,
    ) -> None:
        import keras
        import tensorflow as tf

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision

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
        self.fixed_batch = fixed_batch
        self.size = int(model.input.shape[1])
        model = inference_network(model, precision)
        logit_layer = model.get_layer(LOGIT_LAYER)
        self.num_outputs = int(logit_layer.output.shape[-1])
        self._class_kernel = logit_layer.kernel if self.num_outputs > 1 else None
        pooled = model.get_layer(POOL_LAYER).output
        self._pooled_width = int(pooled.shape[-1])
        if EARLY_FEATURE_LAYER in names:
            # Carried beside the head's pooled features as one tensor, so that the
            # Grad-CAM functions pass it through without knowing about it.
            early = keras.layers.GlobalAveragePooling2D(dtype="float32")(
                model.get_layer(EARLY_FEATURE_LAYER).output
            )
            pooled = keras.layers.Concatenate(dtype="float32")([pooled, early])
        outputs = [
            model.get_layer(target_layer).output,
            pooled,
            model.get_layer(LOGIT_LAYER).output,
        ]
        self.has_localiser = localiser is not None
        if localiser is not None:
            # The second head reads the backbone's own pass: no second network call.
            outputs.append(localiser.attach(model))
        self._graph = keras.Model(model.input, outputs)
        spec = [
            tf.TensorSpec(
                (batch_size if fixed_batch else None, self.size, self.size, 3), tf.float32
            )
        ]
        self._scores = tf.function(self._forward, input_signature=spec, jit_compile=False)
        self._scores_and_cams = tf.function(self._forward_with_cam, input_signature=spec)

    def _forward(self, images):
        _, pooled, logits, *others = self._graph(images, training=False)
        # Callers always get float32, whatever precision the network computes in.
        if self.num_outputs == 1:
            logits = logits[:, 0]
        return (to_float32(logits), to_float32(pooled), *map(to_float32, others))

    def _forward_with_cam(self, images):
        if self._class_kernel is not None:
            outputs = class_activation_maps(self._graph, self._class_kernel, images)
        else:
            outputs = grad_cam(self._graph, images)
        return (*outputs[:3], *map(to_float32, outputs[3:]))

    def run(self, images: np.ndarray, with_cam: bool) -> BatchOutput:
        """Score ``images`` (n <= batch_size, size, size, 3), padding to the fixed batch."""
        count = images.shape[0]
        if count > self.batch_size:
            raise ValueError(f"batch of {count} exceeds the engine's batch size {self.batch_size}")
        if (count == self.batch_size or not self.fixed_batch) and images.dtype == np.float32:
            padded = np.ascontiguousarray(images)  # a full (or open-sized) batch needs no copy
        else:
            rows = self.batch_size if self.fixed_batch else count
            padded = np.zeros((rows, self.size, self.size, 3), np.float32)
            padded[:count] = images
        if with_cam and self.has_cam:
            logits, pooled, cams, *others = self._scores_and_cams(padded)
            cams_np = cams.numpy()[:count]
        else:
            logits, pooled, *others = self._scores(padded)
            cams_np = None
        pooled_np = pooled.numpy()[:count]
        width = self._pooled_width
        return BatchOutput(
            logits.numpy()[:count],
            pooled_np[:, :width],
            cams_np,
            pooled_np[:, width:] if pooled_np.shape[1] > width else None,
            others[0].numpy()[:count] if others else None,
        )
