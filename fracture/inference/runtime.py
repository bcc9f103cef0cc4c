"""Which runtime runs the network: TensorFlow, or the model's ONNX export in ONNX Runtime.

``Settings.runtime`` (``FRACTURE_RUNTIME``) is ``tensorflow``, ``onnx`` or ``auto``.
:func:`load_network` is the one factory (as a pipeline factory picks the backend of a
model): it reads the setting, loads the network once in the runtime chosen, and the
object it returns makes as many :class:`~fracture.inference.predictor.Predictor` s as
a caller needs (the dashboard makes two: the shared single-image one and the batch
one), all on that one copy of the weights.

The ONNX runtime never imports TensorFlow or Keras. Its :class:`OnnxPredictor` *is* a
:class:`~fracture.inference.predictor.Predictor`: decoding, the letterbox, the heads
that read the pooled features (out-of-distribution gate, region and hardware heads),
the localisation boxes, the heat map's mapping onto the image and the verdict are the
same code; only the network step differs (:class:`OnnxEngine`), and it takes every
output from the one exported graph (:mod:`fracture.inference.export`). The export
lives in the model folder, checksummed and tied to the files it was built from
(:meth:`~fracture.model.folder.ModelFolder.onnx_export_problem`); when it is missing
or stale, :func:`ensure_onnx_export` builds it in a child process
(``python -m fracture export MODEL --format onnx --into-model-folder``), which is the
only process that imports TensorFlow for it.

``auto`` chooses per machine (:func:`choose_runtime`):

1. ONNX Runtime where TensorFlow is not installed, TensorFlow where onnxruntime is not;
2. ONNX Runtime where this process may use less than :data:`TENSORFLOW_MIN_MEMORY_MIB`
   (the smaller of the machine's memory and the container's limit): a TensorFlow
   server held 1.6-1.9 GB under load and 2.4 GB after a long session (issue 25), an
   ONNX Runtime one a fifth of that;
3. TensorFlow elsewhere: it was faster on the reference machine (AVX-512 BF16:
   TensorFlow bfloat16 6.6 img/s against ONNX Runtime float32 3.1 img/s, BENCHMARKS.md),
   and a GPU runs TensorFlow only here.

Only a binary (fracture or not) model has an export; a K-class model runs in
TensorFlow under ``auto`` and is refused under ``onnx``.
"""

from __future__ import annotations

import collections
import importlib.util
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np

from fracture.config import Settings, get_settings
from fracture.errors import FractureError
from fracture.inference.engine import BatchOutput, default_thread_counts
from fracture.inference.export import (
    FEATURE_OUTPUTS,
    INT8_FORMAT,
    LOCATION_OUTPUT,
    OnnxRunner,
)
from fracture.inference.localisation import peak_centre_logit
from fracture.inference.prediction import Source
from fracture.inference.predictor import Predictor, Prepared, _load_localiser
from fracture.model import registry
from fracture.model.folder import ModelConfig, ModelFolder, read_config

__all__ = [
    "RuntimeChoiceError",
    "TENSORFLOW_MIN_MEMORY_MIB",
    "ServedNetwork",
    "TensorFlowNetwork",
    "OnnxNetwork",
    "OnnxEngine",
    "OnnxPredictor",
    "choose_runtime",
    "memory_limit_mib",
    "ensure_onnx_export",
    "load_network",
]

logger = logging.getLogger(__name__)

# Below this much memory `auto` serves with ONNX Runtime (see the module doc): the
# TensorFlow server's 1.6-2.4 GB plus the operating system and Streamlit's own.
TENSORFLOW_MIN_MEMORY_MIB = 3072
# How long the child that builds the ONNX export may take: tf2onnx converts ResNet-50
# in about a minute on two cores; a loaded machine takes several.
EXPORT_TIMEOUT_S = 1800


class RuntimeChoiceError(FractureError, RuntimeError):
    """The runtime asked for cannot serve this model here; the message says why and what to do."""


# ------------------------------------------------------------------------------------
# Choosing


def memory_limit_mib() -> float | None:
    """The memory this process may use: the smaller of the machine's and its cgroup's limit.

    None where neither can be read (not Linux).
    """
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                limits.append(int(line.split()[1]) / 1024)
                break
    except (OSError, ValueError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max", or v1's "no limit" 2**63
            limits.append(int(text) / 2**20)
    return min(limits) if limits else None


def _installed(module: str) -> bool:
    # find_spec looks for the package without importing it (importing TensorFlow
    # to find out would cost the memory this choice is meant to save).
    return importlib.util.find_spec(module) is not None


def choose_runtime(
    setting: str,
    *,
    memory_mib: float | None = None,
    tensorflow_installed: bool | None = None,
    onnxruntime_installed: bool | None = None,
) -> str:
    """``"tensorflow"`` or ``"onnx"`` for ``setting`` (``Settings.runtime``) on this machine.

    ``tensorflow`` and ``onnx`` are taken as said; ``auto`` follows the rule of the
    module doc. The keyword arguments stand in for the machine's facts (for tests).
    """
    if setting in ("tensorflow", "onnx"):
        return setting
    if setting != "auto":
        raise RuntimeChoiceError(f"unknown runtime {setting!r}: tensorflow, onnx or auto")
    has_tf = _installed("tensorflow") if tensorflow_installed is None else tensorflow_installed
    has_ort = _installed("onnxruntime") if onnxruntime_installed is None else onnxruntime_installed
    if not has_ort:
        return "tensorflow"
    if not has_tf:
        return "onnx"
    memory = memory_limit_mib() if memory_mib is None else memory_mib
    if memory is not None and memory < TENSORFLOW_MIN_MEMORY_MIB:
        return "onnx"
    return "tensorflow"


# ------------------------------------------------------------------------------------
# The ONNX network step and predictor


class OnnxEngine:
    """The network step in ONNX Runtime: letterboxed images in, a :class:`BatchOutput` out.

    One call of the exported graph gives the logit, the heat map, both pooled
    features and the localisation head's outputs. ``logits`` are returned raw (the
    prior shift added back to the export's prior-corrected logit), as
    :class:`~fracture.inference.engine.InferenceEngine` returns them, so that the
    predictor applies the calibration in one place for both runtimes. Where the
    model's logit adds the localisation head's peak (``localiser_weight``), the export's
    logit carries it, so it is taken off here: the predictor adds it again, once.
    """

    def __init__(
        self,
        runner: OnnxRunner,
        batch_size: int,
        prior_shift: float,
        localiser_weight: float = 0.0,
    ) -> None:
        self.runner = runner
        self.batch_size = batch_size
        self.size = runner.image_size
        self.prior_shift = float(prior_shift)
        self.localiser_weight = float(localiser_weight)
        self.outputs = set(runner.output_names)

    @property
    def has_location(self) -> bool:
        return LOCATION_OUTPUT in self.outputs

    def run(self, images: np.ndarray, with_cam: bool) -> BatchOutput:
        """Score ``images`` (n, size, size, 3); any n (the graph's batch is open)."""
        outputs = self.runner.run(images)
        pooled_name, early_name = FEATURE_OUTPUTS
        logits = outputs["logit"].astype(np.float64) + self.prior_shift
        if self.localiser_weight:
            logits = logits - self.localiser_weight * peak_centre_logit(outputs[LOCATION_OUTPUT])
        return BatchOutput(
            logits=logits,
            pooled=outputs[pooled_name],
            cams=outputs["heatmap"] if with_cam else None,
            early_pooled=outputs.get(early_name),
            localiser=outputs.get(LOCATION_OUTPUT),
        )


class OnnxPredictor(Predictor):
    """A :class:`~fracture.inference.predictor.Predictor` whose network runs in ONNX Runtime.

    ``model_dir`` is the model folder (config, heads); ``runner`` the opened export
    (shared by every predictor of one :class:`OnnxNetwork`); ``model_dir`` None serves
    a bare export with the config it recorded and no heads. Decoding runs on a
    thread pool instead of tf.data; everything else is the Predictor's.
    ``fixed_batch`` is accepted for the same signature and has no effect: the
    exported graph takes any batch without padding.
    """

    def __init__(
        self,
        runner: OnnxRunner,
        model_dir: str | os.PathLike[str] | None,
        *,
        settings: Settings | None = None,
        batch_size: int | None = None,
        warmup: bool = True,
        fixed_batch: bool = False,
        display_max_side: int | None = None,
        config: ModelConfig | None = None,
    ) -> None:
        del fixed_batch
        settings = settings or get_settings()
        directory = Path(model_dir) if model_dir is not None else None
        if config is None:
            # Without a model folder (a bare export): the config the export recorded,
            # and no heads.
            config = (
                read_config(directory)[0]
                if directory is not None
                else ModelConfig.from_json(runner.config["model_config"])
            )
        batch_size = batch_size or settings.batch_size
        fmt = runner.config.get("format", "onnx")
        self.precision = "onnx-int8" if fmt == INT8_FORMAT else "onnx-float32"
        localiser = _load_localiser(directory)
        engine = OnnxEngine(runner, batch_size, config.prior_shift, config.localiser_weight)
        if localiser is not None and not engine.has_location:
            raise RuntimeChoiceError(
                f"the ONNX export of {directory} has no localisation output but the model "
                "has a localisation head; rebuild it: python -m fracture export "
                f"{directory} --format onnx --into-model-folder"
            )
        self._serve(
            engine,
            config,
            directory,
            settings=settings,
            batch_size=batch_size,
            localiser=localiser,
            display_max_side=display_max_side,
            warmup=warmup,
        )

    def warm_up(self) -> None:
        """One call: the graph computes every output either way (nothing to trace twice)."""
        size = self.config.image_size
        self.engine.run(np.zeros((1, size, size, 3), np.float32), with_cam=True)

    def _prepare_all(
        self, sources: Sequence[Source], names: Sequence[str], keep_image: bool
    ) -> Iterator[Prepared]:
        """Decode and letterbox on a thread pool, a few batches ahead of the network.

        OpenCV and Pillow release the GIL while they decode, so threads overlap with
        each other and with ONNX Runtime, as tf.data's map does for the TensorFlow path.
        """
        if len(sources) <= 1:
            yield from super()._prepare_all(sources, names, keep_image)
            return
        ahead = 2 * self.batch_size
        workers = default_thread_counts()[0]
        with ThreadPoolExecutor(workers, thread_name_prefix="fracture-decode") as pool:
            pending: collections.deque[Any] = collections.deque()
            for index, (source, name) in enumerate(zip(sources, names)):
                pending.append(pool.submit(self.prepare, index, source, name, keep_image))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


# ------------------------------------------------------------------------------------
# Loading


class ServedNetwork(Protocol):
    """A network loaded once in one runtime, making predictors that share it."""

    runtime: str
    directory: Path

    def predictor(self, **options: Any) -> Predictor: ...


class TensorFlowNetwork:
    """The model rebuilt in Keras (``load_model``); its predictors share the weights."""

    runtime = "tensorflow"

    def __init__(self, directory: Path, settings: Settings) -> None:
        from fracture.inference.engine import configure_threads
        from fracture.model.folder import load_model
        from fracture.model.imagenet import resolve_imagenet_weights

        configure_threads()  # before load_model starts TensorFlow: its pools are fixed then
        self.directory = directory
        self.settings = settings
        self.loaded = load_model(directory, resolve_imagenet_weights(settings).path)

    def predictor(self, **options: Any) -> Predictor:
        """A :class:`Predictor` on the shared model; ``options`` are its keyword arguments."""
        return Predictor(self.loaded, settings=self.settings, **options)


class OnnxNetwork:
    """The model folder's ONNX export opened once in ONNX Runtime (no TensorFlow)."""

    runtime = "onnx"

    def __init__(self, directory: Path, settings: Settings) -> None:
        self.directory = directory
        self.settings = settings
        self.config = read_config(directory)[0]
        # Without ONNX Runtime's arena: a server that ran one batch of 16 would keep
        # its activations (hundreds of MB) for good (see OnnxRunner).
        self.runner = OnnxRunner(ensure_onnx_export(directory), memory_arena=False)

    def predictor(self, **options: Any) -> Predictor:
        """An :class:`OnnxPredictor` on the shared session (``precision`` has no meaning here)."""
        options.pop("precision", None)
        return OnnxPredictor(
            self.runner, self.directory, settings=self.settings, config=self.config, **options
        )


def ensure_onnx_export(model_dir: str | os.PathLike[str]) -> Path:
    """The model folder's verified ONNX export, built by a child process first if needed.

    The child (``python -m fracture export MODEL --format onnx --into-model-folder``)
    imports TensorFlow and tf2onnx and exits, so this process stays free of both.
    """
    folder = ModelFolder(model_dir)
    problem = folder.onnx_export_problem()
    if problem is None:
        return folder.onnx_dir
    logger.info("building the ONNX export in a child process: %s", problem)
    command = [
        sys.executable,
        "-m",
        "fracture",
        "export",
        str(folder.path),
        "--format",
        "onnx",
        "--into-model-folder",
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RuntimeChoiceError(f"the ONNX export could not be built: {error}") from error
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no message"]
        raise RuntimeChoiceError(
            f"the ONNX export of {folder.path} could not be built ({detail[0]}); build it "
            f"where TensorFlow and tf2onnx are installed: python -m fracture export "
            f"{folder.path} --format onnx --into-model-folder"
        )
    problem = folder.onnx_export_problem()
    if problem is not None:
        raise RuntimeChoiceError(f"the ONNX export was built but cannot be served: {problem}")
    return folder.onnx_dir


def load_network(
    model_dir: str | os.PathLike[str] | None = None,
    *,
    runtime: str | None = None,
    settings: Settings | None = None,
) -> ServedNetwork:
    """Load the model (default: the one the registry serves) in the runtime chosen.

    ``runtime`` defaults to ``Settings.runtime``; ``auto`` is resolved by
    :func:`choose_runtime`. Under ``auto`` a model the ONNX runtime cannot serve (a
    K-class model; an export that could not be built) is served by TensorFlow, with
    the reason in the log; under ``onnx`` it is an error that says what to do.
    """
    settings = settings or get_settings()
    directory = Path(model_dir) if model_dir else registry.active_model_dir(settings)
    setting = runtime or settings.runtime
    chosen = choose_runtime(setting)
    if chosen == "onnx":
        config = read_config(directory)[0]
        try:
            if config.is_multiclass:
                raise RuntimeChoiceError(
                    f"{directory} is a {config.num_outputs}-class model; the ONNX runtime "
                    "serves binary (fracture or not) models only: use FRACTURE_RUNTIME=tensorflow"
                )
            network: ServedNetwork = OnnxNetwork(directory, settings)
        except RuntimeChoiceError as error:
            if setting != "auto":
                raise
            logger.warning("serving with TensorFlow instead of ONNX Runtime: %s", error)
        else:
            logger.info("serving %s with ONNX Runtime", directory)
            return network
    logger.info("serving %s with TensorFlow", directory)
    return TensorFlowNetwork(directory, settings)
