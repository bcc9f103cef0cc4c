"""Export the classifier for runtimes without this package: SavedModel, ONNX and TFLite.

Each export is one folder holding the network file and ``preprocessing.json``
(owned by this module: :func:`export_model` writes it, :func:`read_export_config`
reads it). The exported function takes what :func:`~fracture.inference.preprocess.letterbox`
returns, a batch of letterboxed RGB images as float32 in [0, 255], ``(N, S, S, 3)``;
the caffe normalisation of ResNet-50 is inside the network, as in the Keras model.
It returns three outputs:

* ``probability`` (N,): the calibrated probability, with the model's prior
  shift and temperature applied inside (``sigmoid((logit - prior_shift) / T)``),
  the number the dashboard shows;
* ``logit`` (N,): the prior-corrected logit, before temperature: the classifier's,
  plus ``localiser_weight`` times the localisation head's peak centre logit where the
  model's calibration adds it (``ModelConfig.localiser_weight``);
* ``heatmap`` (N, h, w): the conv5 Grad-CAM on the network's feature grid, in
  logit units, exactly what the app computes. For a global-average-pooling +
  dense head the gradient of the logit with respect to the last feature map A
  is the dense kernel w divided by the number of positions, the same at every
  position, so Grad-CAM (Selvaraju et al., ICCV 2017) reduces to
  ``relu(w · A)``: the class activation map of Zhou et al. (CVPR 2016), a
  forward computation that every runtime can run, no gradient needed. It is
  not normalised per image; divide by ``display.evidence_scale`` from
  ``preprocessing.json`` and clip to [0, 1] for the app's display, and map it
  back onto the original image with the letterbox geometry.

and, for the numpy heads that read the same pass (the out-of-distribution gate,
the region and hardware heads, :mod:`fracture.inference.ood`,
:mod:`fracture.inference.heads`), so that a runtime without TensorFlow serves
everything the dashboard shows from this one graph:

* ``pooled`` (N, 2048): the head's global-average-pooled conv5 features;
* ``early_pooled`` (N, 1024): ``conv4_block6_out`` average-pooled
  (:data:`~fracture.model.network.EARLY_FEATURE_LAYER`);
* ``location`` (N, h, w, 5), only for a model folder with a localisation head:
  the head's raw outputs (:meth:`~fracture.model.localiser.Localiser.attach`),
  decoded into boxes by :mod:`fracture.inference.localisation`.

The network is exported in float32 with BatchNorm folded
(:func:`~fracture.inference.engine.inference_network`).

:func:`quantize_onnx_int8` turns an ONNX export into an int8 one for CPUs with
8-bit dot-product instructions (x86 AVX-512 VNNI / AVX-VNNI, Arm dot product):
ONNX Runtime static quantisation (Jacob et al., CVPR 2018), QDQ format,
per-channel int8 weights and uint8 activations whose ranges are calibrated on
training radiographs. Only the backbone is quantised: the head after the conv5
features (pooling, dense unit, calibration, heat-map product) stays float32,
so the probability and the heat map are computed from int8 features but not
rounded to 8 bits themselves. :class:`OnnxRunner` runs either without TensorFlow.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fracture.errors import FractureError
from fracture.inference.engine import default_thread_counts, inference_network
from fracture.inference.preprocess import PAD_VALUE
from fracture.model.network import CAM_LAYER, EARLY_FEATURE_LAYER, LOGIT_LAYER, POOL_LAYER

if TYPE_CHECKING:
    import onnx
    import onnxruntime

    from fracture.model.folder import LoadedModel

__all__ = [
    "EXPORT_CONFIG_FILE",
    "FORMATS",
    "ExportError",
    "ExportResult",
    "INT8_FORMAT",
    "OnnxRunner",
    "export_model",
    "export_into_model_folder",
    "quantize_onnx_int8",
    "read_export_config",
    "run_export",
]

logger = logging.getLogger(__name__)

FORMATS = ("savedmodel", "onnx", "tflite")
# Written by quantize_onnx_int8 from an ONNX export; run like "onnx".
INT8_FORMAT = "onnx-int8"
EXPORT_CONFIG_FILE = "preprocessing.json"
NETWORK_FILES = {"savedmodel": "saved_model", "onnx": "model.onnx", "tflite": "model.tflite"}
# The classifier's outputs, which every export has; FEATURE_OUTPUTS and LOCATION_OUTPUT
# are added where the network has them (see the module doc).
OUTPUTS = ("probability", "logit", "heatmap")
FEATURE_OUTPUTS = ("pooled", "early_pooled")
LOCATION_OUTPUT = "location"
# ONNX opset: 17 is read by every ONNX Runtime since 1.12 and by TensorRT 8.6+.
ONNX_OPSET = 17
# The calibrator keeps every intermediate tensor of the images it has run
# (hundreds of MB per 384 px image for ResNet-50): it is given this many images
# at a time and folds their ranges into running minima and maxima in between
# (min-max ranges merge exactly, so the result equals one pass over all).
INT8_CALIBRATION_STRIDE = 1
_EXPORT_FORMAT_VERSION = 1


class ExportError(FractureError, RuntimeError):
    """A model could not be exported; the message says which format and why."""


@dataclass(frozen=True)
class ExportResult:
    format: str
    directory: Path
    network: Path
    config: Path


def export_model(loaded: "LoadedModel", fmt: str, out_dir: str | os.PathLike[str]) -> ExportResult:
    """Write ``loaded`` as ``fmt`` (one of :data:`FORMATS`) into ``out_dir`` with its config."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if loaded.config.is_multiclass:
        # The exported graph computes one sigmoid fracture probability; a K-class
        # head would come out as its first class's logit, silently wrong.
        raise ExportError(
            f"exporting a model of {loaded.config.num_outputs} classes is not supported yet; "
            "only the binary fracture model can be exported"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    network = out / NETWORK_FILES[fmt]
    if network.exists():
        shutil.rmtree(network) if network.is_dir() else network.unlink()
    module = _ExportModule(loaded)
    try:
        if fmt == "savedmodel":
            _save_savedmodel(module, network)
        elif fmt == "onnx":
            _save_onnx(module, network)
        else:
            _save_tflite(module, network)
    except ExportError:
        raise
    except Exception as error:  # noqa: BLE001 - converters raise anything; say which step failed
        raise ExportError(f"the {fmt} export failed: {error}") from error
    config = out / EXPORT_CONFIG_FILE
    config.write_text(
        json.dumps(_export_config(loaded, fmt, network.name, module.output_names), indent=2) + "\n"
    )
    logger.info("exported %s to %s", fmt, network)
    return ExportResult(fmt, out, network, config)


def export_into_model_folder(loaded: "LoadedModel") -> Path:
    """Build the ONNX export inside ``loaded``'s model folder, checksummed; returns its folder.

    The runtime without TensorFlow (:mod:`fracture.inference.runtime`) serves it. It
    is built in a staging folder and moved into place whole
    (:meth:`~fracture.model.folder.ModelFolder.install_onnx_export`), recorded as
    built from the model files verified when ``loaded`` was read.
    """
    from fracture.model.folder import ModelFolder

    if loaded.directory is None:
        raise ExportError("this model has no folder to hold its ONNX export")
    folder = ModelFolder(loaded.directory)
    staged = folder.onnx_staging_dir()
    try:
        export_model(loaded, "onnx", staged)
        return folder.install_onnx_export(staged, built_from=loaded.card.get("checksums"))
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # gone already once installed


def read_export_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``preprocessing.json`` of an export folder."""
    path = Path(directory) / EXPORT_CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ExportError(f"{path} could not be read: {error}") from error


def run_export(directory: str | os.PathLike[str], images: np.ndarray) -> dict[str, np.ndarray]:
    """Run an export folder in its own runtime on letterboxed ``images`` (N, S, S, 3) float32.

    SavedModel in ``tf.saved_model.load``, ONNX in ONNX Runtime, TFLite in the
    TFLite interpreter: what a deployment would do, so the parity tests check
    the files, not this package's Keras model.
    """
    config = read_export_config(directory)
    network = Path(directory) / config["network_file"]
    images = np.ascontiguousarray(images, np.float32)
    fmt = config["format"]
    if fmt == "savedmodel":
        import tensorflow as tf

        serve = tf.saved_model.load(str(network)).signatures["serving_default"]
        outputs = serve(image=tf.constant(images))
        return {name: value.numpy() for name, value in outputs.items()}
    if fmt in ("onnx", INT8_FORMAT):
        return OnnxRunner(directory).run(images)
    if fmt == "tflite":
        import tensorflow as tf

        interpreter = tf.lite.Interpreter(model_path=str(network))
        runner = interpreter.get_signature_runner(next(iter(interpreter.get_signature_list())))
        # The TFLite file has a fixed batch of one (phones score one image at a time).
        rows = [runner(image=images[i : i + 1]) for i in range(images.shape[0])]
        names = config.get("output_names", {})
        return {names.get(key, key): np.concatenate([row[key] for row in rows]) for key in rows[0]}
    raise ExportError(f"{network}: unknown export format {fmt!r}")


class OnnxRunner:
    """An ONNX export (float32 or int8) in ONNX Runtime: letterboxed images in, outputs out.

    Imports neither TensorFlow nor Keras, so a process that serves with it
    starts in about a second and holds a few hundred MB. ``threads`` sets
    ONNX Runtime's intra-op pool (default: as TensorFlow's, the CPUs this
    process may use or ``FRACTURE_INTRA_OP_THREADS``). ``memory_arena=False``
    turns off ONNX Runtime's CPU arena, which keeps the largest batch's activations
    for good: measured on the default model at 384 px, peak RSS 550 MiB instead of
    709 MiB for a batch of 8, and the activations handed back after each call (the
    dashboard's runtime on a small host, :mod:`fracture.inference.runtime`).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        threads: int | None = None,
        *,
        memory_arena: bool = True,
    ) -> None:
        try:
            import onnxruntime
        except ImportError as error:
            raise ExportError(
                "running an ONNX export needs onnxruntime: pip install -r requirements.txt"
            ) from error
        self.config = read_export_config(directory)
        if self.config["format"] not in ("onnx", INT8_FORMAT):
            raise ExportError(f"{directory} holds a {self.config['format']} export, not ONNX")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or default_thread_counts()[0]
        options.enable_cpu_mem_arena = memory_arena
        self.session: onnxruntime.InferenceSession = onnxruntime.InferenceSession(
            str(Path(directory) / self.config["network_file"]),
            options,
            providers=["CPUExecutionProvider"],
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.image_size = int(self.config["preprocessing"]["size"])

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``probability`` (N,), ``logit`` (N,) and ``heatmap`` (N, h, w) for letterboxed images."""
        batch = np.ascontiguousarray(images, np.float32)
        values = self.session.run(self.output_names, {self.input_name: batch})
        return {_output_name(name): value for name, value in zip(self.output_names, values)}


def quantize_onnx_int8(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    calibration: Iterable[np.ndarray],
    *,
    calibration_source: str = "",
) -> ExportResult:
    """Write an int8 copy of the ONNX export in ``source`` to ``out_dir``.

    ``calibration`` yields letterboxed images (S, S, 3) float32 from the
    TRAINING split (never the images the result is evaluated on): their
    activation ranges set the uint8 scales (min-max calibration). Weights are
    int8 per output channel, which keeps ResNet's widely varying filter
    scales; activations uint8 with ``reduce_range`` off, the combination ONNX
    Runtime recommends for x86 CPUs with VNNI. ``calibration_source`` is
    recorded in the export's config.
    """
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as error:
        raise ExportError(
            "int8 quantisation needs onnxruntime: pip install -r requirements-dev.txt"
        ) from error
    import onnx

    config = read_export_config(source)
    if config["format"] != "onnx":
        raise ExportError(f"{source}: int8 quantisation starts from an ONNX export")
    images = [np.asarray(image, np.float32) for image in calibration]
    if not images:
        raise ExportError("int8 quantisation needs calibration images; none were given")

    class Images(CalibrationDataReader):  # type: ignore[misc]
        """One image per call, within the range the strided calibration asks for."""

        def __init__(self) -> None:
            self.next, self.end = 0, len(images)

        def __len__(self) -> int:
            return len(images)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.next, self.end = start_index, min(end_index, len(images))

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.next >= self.end:
                return None
            self.next += 1
            return {"image": images[self.next - 1][None]}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    network = out / NETWORK_FILES["onnx"]
    try:
        with tempfile.TemporaryDirectory(prefix="fracture-int8-") as scratch:
            prepared = Path(scratch) / "prepared.onnx"
            # Shape inference and graph fusions first, as ONNX Runtime recommends:
            # quantisation then sees Conv+Relu as one unit. ONNX's own shape inference
            # covers this network (fixed image size); the symbolic one would need sympy.
            quant_pre_process(
                str(Path(source) / config["network_file"]),
                str(prepared),
                skip_symbolic_shape=True,
            )
            head = _head_nodes(onnx.load(str(prepared)))
            quantize_static(
                str(prepared),
                str(network),
                Images(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=head,
                # Not CalibMaxIntermediateOutputs: ONNX Runtime 1.32 drops the data
                # it holds when that limit is reached instead of folding it in.
                extra_options={"CalibStridedMinMax": INT8_CALIBRATION_STRIDE},
            )
    except ExportError:
        raise
    except Exception as error:  # noqa: BLE001 - the quantiser raises anything; say which step
        raise ExportError(f"the int8 quantisation failed: {error}") from error
    config.update(
        format=INT8_FORMAT,
        quantisation={
            "method": "ONNX Runtime static quantisation, QDQ, min-max calibration",
            "weights": "int8, per output channel",
            "activations": "uint8 (asymmetric), reduce_range off (for VNNI)",
            "float32_nodes": "the head after the conv5 features (pooling, dense, calibration, heat map)",
            "calibration_images": len(images),
            "calibration_source": calibration_source,
        },
    )
    path = out / EXPORT_CONFIG_FILE
    path.write_text(json.dumps(config, indent=2) + "\n")
    logger.info("quantised %s to int8 in %s (%d calibration images)", source, network, len(images))
    return ExportResult(INT8_FORMAT, out, network, path)


def _head_nodes(model: "onnx.ModelProto") -> list[str]:
    """Nodes after the last tensor that both outputs depend on: the conv5 features.

    Everything computed from the features (pooling, dense unit, calibration,
    heat-map product) is the head. Nodes are topologically sorted in ONNX,
    so the head is every node after the last common ancestor of the outputs.
    """
    nodes = list(model.graph.node)
    producer = {name: index for index, node in enumerate(nodes) for name in node.output}

    def ancestors(tensor: str) -> set[int]:
        found: set[int] = set()
        stack = [tensor]
        while stack:
            index = producer.get(stack.pop())
            if index is None or index in found:
                continue
            found.add(index)
            stack.extend(nodes[index].input)
        return found

    # The classifier's outputs only: the pooled features and the localisation head read
    # earlier layers, and the common ancestor of those would leave conv4-5 in float32.
    per_output = [
        ancestors(output.name)
        for output in model.graph.output
        if _output_name(output.name) in OUTPUTS
    ]
    common = set.intersection(*per_output) if per_output else set()
    last = max(common, default=-1)
    return [node.name for node in nodes[last + 1 :] if node.name]


# ------------------------------------------------------------------------------------


class _ExportModule:
    """The exported function: letterboxed images in, probability, logit and heat map out."""

    def __init__(self, loaded: "LoadedModel") -> None:
        import keras
        import tensorflow as tf

        from fracture.model.folder import ModelFolder
        from fracture.model.localiser import Localiser

        network = inference_network(loaded.model, "float32")
        self.size = int(network.input.shape[1])
        outputs = [
            network.get_layer(CAM_LAYER).output,
            network.get_layer(LOGIT_LAYER).output,
            network.get_layer(POOL_LAYER).output,
        ]
        names = {layer.name for layer in network.layers}
        self.has_early = EARLY_FEATURE_LAYER in names
        if self.has_early:
            outputs.append(
                keras.layers.GlobalAveragePooling2D(dtype="float32")(
                    network.get_layer(EARLY_FEATURE_LAYER).output
                )
            )
        folder = ModelFolder(loaded.directory) if loaded.directory is not None else None
        self.has_location = folder is not None and folder.has_localiser()
        if self.has_location:
            # The localisation head on the backbone's own layers: one pass gives both.
            outputs.append(Localiser.load(folder.localiser_path).attach(network))  # type: ignore[union-attr]
        self.graph = keras.Model(network.input, outputs)
        self.output_names = [
            *OUTPUTS,
            FEATURE_OUTPUTS[0],
            *(FEATURE_OUTPUTS[1:] if self.has_early else ()),
            *((LOCATION_OUTPUT,) if self.has_location else ()),
        ]
        kernel = network.get_layer(LOGIT_LAYER).get_weights()[0]  # (channels, 1)
        # numpy, made a constant inside the traced function: a tensor captured from
        # outside would become an extra graph input in the ONNX and TFLite converters.
        self.kernel = kernel[:, 0].astype(np.float32)
        self.prior_shift = float(loaded.config.prior_shift)
        self.temperature = float(loaded.config.temperature)
        self.localiser_weight = float(loaded.config.localiser_weight)
        if self.localiser_weight and not self.has_location:
            raise ExportError(
                "the model's probability adds its localisation head's peak, but its folder "
                "has no localisation head to export"
            )
        self.module = tf.Module()
        self.module.graph = self.graph  # tracked, so the SavedModel carries the weights

    def function(self, batch: int | None):
        import tensorflow as tf

        spec = tf.TensorSpec((batch, self.size, self.size, 3), tf.float32, name="image")

        @tf.function(input_signature=[spec])
        def serve(image):
            features, logits, *extra = self.graph(image, training=False)
            logit = logits[:, 0] - self.prior_shift
            if self.localiser_weight:
                # The head's outputs come last; channel 0 is its centre logit.
                peak = tf.reduce_max(extra[-1][..., 0], axis=[1, 2])
                logit = logit + self.localiser_weight * peak
            probability = tf.sigmoid(logit / self.temperature)
            kernel = tf.constant(self.kernel)
            heatmap = tf.nn.relu(tf.tensordot(features, kernel, axes=[[3], [0]]))
            values = [probability, logit, heatmap, *extra]
            return {
                name: tf.identity(value, name=name)
                for name, value in zip(self.output_names, values)
            }

        return serve


def _save_savedmodel(module: _ExportModule, path: Path) -> None:
    import tensorflow as tf

    serve = module.function(None)
    module.module.serve = serve
    tf.saved_model.save(module.module, str(path), signatures={"serving_default": serve})


def _save_onnx(module: _ExportModule, path: Path) -> None:
    try:
        import tf2onnx
    except ImportError as error:
        raise ExportError(
            "the ONNX export needs tf2onnx: pip install -r requirements-dev.txt"
        ) from error
    import tensorflow as tf

    serve = module.function(None)
    spec = [tf.TensorSpec((None, module.size, module.size, 3), tf.float32, name="image")]
    with _collecting_cycles():
        tf2onnx.convert.from_function(
            serve, input_signature=spec, opset=ONNX_OPSET, output_path=str(path)
        )


@contextlib.contextmanager
def _collecting_cycles() -> Iterator[None]:
    """Collect garbage often while tf2onnx converts, and hand it back to the system after.

    tf2onnx leaves copies of the weights in reference cycles, which Python's
    collector counts as objects, not bytes: for ResNet-50 the process grew by
    about 6.5 GB per conversion and kept it (measured: 7.9 GB peak, 1.2 GB
    once collected). Collecting every few hundred allocations keeps the peak
    near 5.8 GB; ``malloc_trim`` returns the freed heap, so a second export in
    the same process (the test suite, the bench) starts from the same size.
    """
    thresholds = gc.get_threshold()
    gc.set_threshold(200, 2, 1)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc only; elsewhere the heap stays


def _save_tflite(module: _ExportModule, path: Path) -> None:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    # Weights frozen into constants first: left as resource variables, the
    # TFLite file reads variables that nothing initialises (NaN outputs).
    frozen = convert_variables_to_constants_v2(module.function(1).get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], tf.Module())
    path.write_bytes(converter.convert())


def _output_name(name: str) -> str:
    # tf2onnx keeps the dict keys as output names; strip any ":0" suffix a converter adds.
    return name.split(":")[0]


def _export_config(
    loaded: "LoadedModel", fmt: str, network_file: str, output_names: list[str]
) -> dict[str, Any]:
    config = loaded.config
    return {
        "export_format_version": _EXPORT_FORMAT_VERSION,
        "format": fmt,
        "network_file": network_file,
        "model": {"name": config.name, "version": config.version},
        "input": {
            "name": "image",
            "shape": [1 if fmt == "tflite" else None, config.image_size, config.image_size, 3],
            "dtype": "float32",
            "layout": "NHWC, RGB, values 0-255 (no normalisation: the network does it)",
        },
        "preprocessing": {
            "method": "letterbox",
            "size": config.image_size,
            "keep_aspect_ratio": True,
            "resize": "longest side to size; OpenCV INTER_AREA when shrinking, INTER_LINEAR when enlarging",
            "placement": "centred; top = (size - new_height) // 2, left = (size - new_width) // 2",
            "pad_value": PAD_VALUE,
            "colour": "greyscale radiographs are repeated to three RGB channels",
        },
        "outputs": {
            "probability": "calibrated fracture probability: sigmoid((logit_raw - prior_shift) / temperature), applied inside",
            "logit": "prior-corrected logit (logit_raw - prior_shift), before temperature",
            "heatmap": "Grad-CAM of conv5, relu(w . A) in logit units on the feature grid; crop the letterbox padding and resize to the image",
            "pooled": "conv5 features, global-average-pooled (the heads' and the OOD gate's input)",
            "early_pooled": f"{EARLY_FEATURE_LAYER} global-average-pooled (the OOD gate's second input)",
            "location": "the localisation head's raw outputs per cell: centre logit, offset (2), log size (2); only with a localisation head",
        },
        "display": {
            "evidence_scale": getattr(config, "evidence_scale", None),
            "meaning": "display heat = clip(heatmap / evidence_scale, 0, 1); null: scale each map to its own peak",
        },
        "calibration": {
            "applied_inside": True,
            "temperature": config.temperature,
            "prior_shift": config.prior_shift,
        },
        "thresholds": dict(config.thresholds),
        "operating_point": config.operating_point,
        "heatmap_layer": CAM_LAYER,
        # Freezing the weights (TFLite) drops the output names: the converter
        # numbers them in the order tf.nest flattens the output dict, by name.
        "output_names": (
            {f"output_{i}": name for i, name in enumerate(sorted(output_names))}
            if fmt == "tflite"
            else {}
        ),
        "model_config": _jsonable(asdict(config)) if _is_dataclass(config) else None,
    }


def _is_dataclass(value: Any) -> bool:
    import dataclasses

    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
