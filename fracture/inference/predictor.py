"""Prediction: load a model once, then score many images, each with an optional heat map.

:class:`Predictor` is what the CLI, the dashboard and notebooks share. One bad
file never stops a batch: it becomes a :class:`Prediction` with
``status="error"`` and a message a person can act on.

A K-class model (``ModelConfig.classes``) gives every prediction its per-class
probabilities, ``softmax(logits / T)`` in the model's class order, and every
class's heat map from the same pass; the map shown is the top class's, and
:func:`with_class_map` switches to another class without running the network.
``probability`` stays the fracture probability that operating points, triage and
the CSV use: 1 - P(normal) where the model has a normal class.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from fracture.config import Settings, get_settings
from fracture.errors import ModelLoadError
from fracture.inference.engine import (
    PRECISIONS,
    BatchOutput,
    InferenceEngine,
    NetworkEngine,
    bfloat16_supported,
    configure_threads,
)
from fracture.inference.gradcam import (
    box_style,
    evidence_heat,
    heatmap_to_image,
    strongest_region,
)
from fracture.inference.heads import HardwareHead
from fracture.inference.localisation import (
    boxes_in_image,
    decode_boxes,
    peak_centre_logit,
)
from fracture.inference.ood import AnyOODGate, load_ood_gate
from fracture.inference.prediction import Prediction, Source, csv_columns
from fracture.inference.preprocess import Geometry, fit_within, letterbox, shown_geometry
from fracture.inference.region import RegionHead
from fracture.io.images import InvalidImageError, load_image
from fracture.model import imagenet, registry
from fracture.model.folder import LoadedModel, ModelConfig, ModelFolder, load_model
from fracture.model.localiser import Localiser

__all__ = [
    "Predictor",
    "Prepared",
    "load_predictor",
    "with_class_map",
]


@dataclass
class Prepared:
    """One source decoded and letterboxed (or its error), ready for :meth:`Predictor.score`."""

    index: int
    name: str
    network_input: np.ndarray | None
    geometry: Geometry | None
    image: np.ndarray | None
    error: str | None


class Predictor:
    """A loaded model that serves many prediction calls.

    Takes a model already loaded (:func:`fracture.model.folder.load_model`);
    :func:`load_predictor` loads one, by default the model the registry serves now.

    Thread-safe for concurrent ``predict`` calls: the compiled functions are
    stateless, and each call owns its input arrays.

    ``precision`` is ``"float32"`` or ``"bfloat16"``; ``None`` takes
    ``Settings.inference_precision`` when set, else the model's recommendation
    (:attr:`ModelConfig.inference_precision`, set by ``python -m fracture bench
    --apply``), else float32. bfloat16 is used only where the hardware computes it
    natively (see :func:`~fracture.inference.engine.bfloat16_supported`); elsewhere
    it would be emulated, slower than float32, so float32 is used with a warning.

    ``fixed_batch=False`` compiles the engine for any batch size up to
    ``batch_size`` instead of padding to it (for the shared serving queue,
    :mod:`fracture.inference.batching`).

    ``display_max_side`` (for a page that shows the image): with heat maps, the
    kept image is shrunk to at most this side and the heat map is computed at
    that size in one resize, never at the full radiograph's size. Probability,
    boxes (normalised) and ``geometry`` (the original frame) are unchanged.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        settings: Settings | None = None,
        batch_size: int | None = None,
        warmup: bool = True,
        precision: str | None = None,
        fixed_batch: bool = True,
        display_max_side: int | None = None,
    ) -> None:
        # Before the network is compiled: TensorFlow's thread pools are fixed at its first op.
        configure_threads()
        settings = settings or get_settings()
        self.loaded = loaded
        self.precision = _resolve_precision(
            precision or settings.inference_precision, loaded.config.inference_precision
        )
        batch_size = batch_size or settings.batch_size
        localiser = _load_localiser(loaded.directory)
        engine = InferenceEngine(
            loaded.model,
            batch_size,
            precision=self.precision,
            fixed_batch=fixed_batch,
            localiser=localiser,
        )
        self._serve(
            engine,
            loaded.config,
            loaded.directory,
            settings=settings,
            batch_size=batch_size,
            localiser=localiser,
            display_max_side=display_max_side,
            warmup=warmup,
        )

    def _serve(
        self,
        engine: NetworkEngine,
        config: ModelConfig,
        directory: Path | None,
        *,
        settings: Settings,
        batch_size: int,
        localiser: Localiser | None,
        display_max_side: int | None,
        warmup: bool,
    ) -> None:
        """Everything around the network: settings, the heads read from the model folder.

        Shared by every runtime: a predictor on another runtime
        (:class:`~fracture.inference.runtime.OnnxPredictor`) builds its own ``engine``
        and calls this, so decoding, letterboxing, the heads and the verdict are one code.
        """
        if display_max_side is not None and display_max_side < 1:
            raise ValueError(f"display_max_side must be at least 1, not {display_max_side}")
        self.settings = settings
        self.config = config
        self.batch_size = batch_size
        self.display_max_side = display_max_side
        self.localiser = localiser
        if config.localiser_weight and localiser is None:
            # Its probability is made of both heads: without one it would be wrong.
            raise ModelLoadError(
                f"model {config.name!r} adds its localisation head's evidence to the "
                "probability, but its folder has no localisation head"
            )
        self.engine = engine
        self.ood_gate = _load_ood_gate(directory)
        self.region_head = _load_region_head(directory)
        self.hardware_head = _load_hardware_head(directory)
        if warmup:
            self.warm_up()

    @property
    def threshold(self) -> float:
        return self.config.threshold

    @property
    def csv_columns(self) -> tuple[str, ...]:
        """The CSV columns of this model's predictions (see :func:`csv_columns`)."""
        return csv_columns(self.config.class_names if self.config.is_multiclass else None)

    def warm_up(self) -> None:
        """Trace both compiled paths now, so the first user request is not the slow one."""
        blank = np.zeros((1, self.config.image_size, self.config.image_size, 3), np.float32)
        self.engine.run(blank, with_cam=False)
        self.engine.run(blank, with_cam=True)

    def raw_logit(self, output: BatchOutput) -> np.ndarray:
        """The binary logit the calibration reads: the classifier's, plus, where the model
        sets ``localiser_weight``, that weight times the localisation head's peak."""
        if not self.config.localiser_weight:
            return output.logits
        # _serve refuses a model whose probability needs a head it lacks.
        assert output.localiser is not None
        return output.logits + self.config.localiser_weight * peak_centre_logit(output.localiser)

    def corrected_logit(self, raw_logits: np.ndarray) -> np.ndarray:
        """The network's logit with the class-weighting prior shift removed."""
        return np.asarray(raw_logits, np.float64) - self.config.prior_shift

    def probability_from_logit(self, logits: np.ndarray) -> np.ndarray:
        """Temperature-scaled (calibrated) probability from prior-corrected logits."""
        scaled = np.asarray(logits, np.float64) / self.config.temperature
        return 1.0 / (1.0 + np.exp(-scaled))

    def predict(
        self,
        sources: Sequence[Source],
        *,
        names: Sequence[str] | None = None,
        with_cam: bool = False,
    ) -> list[Prediction]:
        """Score ``sources`` (paths, encoded bytes or decoded RGB arrays), in order."""
        return list(self.iter_predict(sources, names=names, with_cam=with_cam))

    def iter_predict(
        self,
        sources: Sequence[Source],
        *,
        names: Sequence[str] | None = None,
        with_cam: bool = False,
    ) -> Iterator[Prediction]:
        """Yield one :class:`Prediction` per source, in order, as batches finish.

        With ``with_cam`` each prediction carries its heat map and the decoded
        image, so callers can draw overlays without decoding twice.
        """
        names = (
            list(names)
            if names is not None
            else [_default_name(s, i) for i, s in enumerate(sources)]
        )
        if len(names) != len(sources):
            raise ValueError(f"{len(names)} names for {len(sources)} sources")
        batch: list[Prepared] = []
        for prepared in self._prepare_all(sources, names, keep_image=with_cam):
            batch.append(prepared)
            if len(batch) == self.batch_size:
                yield from self.score(batch, with_cam)
                batch = []
        if batch:
            yield from self.score(batch, with_cam)

    def _prepare_all(
        self, sources: Sequence[Source], names: Sequence[str], keep_image: bool
    ) -> Iterator[Prepared]:
        """Decode and letterbox in tf.data's parallel map, overlapping with inference."""
        if len(sources) <= 1:
            for index, (source, name) in enumerate(zip(sources, names)):
                yield self.prepare(index, source, name, keep_image)
            return
        import tensorflow as tf

        prepared: dict[int, Prepared] = {}

        def decode(index: np.ndarray) -> np.int64:
            i = int(index)
            prepared[i] = self.prepare(i, sources[i], names[i], keep_image)
            return np.int64(i)

        # The Python objects travel in a side table keyed by index; tf.data only
        # schedules the decoding, in parallel and ahead of the model.
        pipeline = (
            tf.data.Dataset.range(len(sources))
            .map(
                lambda i: tf.numpy_function(decode, [i], tf.int64, stateful=True),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
            .prefetch(2 * self.batch_size)
        )
        # tf.data's autotuner stalled this pipeline on the 2-core reference machine,
        # where the network keeps both cores busy: some runs took exactly 160 ms per
        # image (10.24 s for 64, repeat after repeat). Without it: 8.6 img/s against
        # 6.25 float32, steady over repeats (BENCHMARKS.md). Parallelism stays
        # AUTOTUNE, which then means one decode call per core.
        options = tf.data.Options()
        options.autotune.enabled = False
        pipeline = pipeline.with_options(options)
        for index in pipeline.as_numpy_iterator():
            yield prepared.pop(int(index))

    def prepare(self, index: int, source: Source, name: str, keep_image: bool) -> Prepared:
        """Decode and letterbox one source; a bad one comes back with its error, never raises."""
        try:
            # Messages name the file, not its folders (the CSV row has the full path).
            label = Path(name).name if isinstance(source, (str, os.PathLike)) else name
            image = source if isinstance(source, np.ndarray) else load_image(source, name=label)
            if isinstance(source, np.ndarray):
                _check_array(image, name)
            network_input, geometry = letterbox(image, self.config.image_size)
        except InvalidImageError as error:
            return Prepared(index, name, None, None, None, str(error))
        except Exception:  # noqa: BLE001 - a batch never dies for one file
            # load_image turns every decoding problem into InvalidImageError; this is
            # the network input step failing, said without an exception's name.
            return Prepared(
                index,
                name,
                None,
                None,
                None,
                f"{name}: could not be prepared for the model (the decoded image is not usable)",
            )
        kept = None
        if keep_image:
            kept = (
                image if self.display_max_side is None else fit_within(image, self.display_max_side)
            )
        return Prepared(index, name, network_input, geometry, kept, None)

    def score(self, batch: list[Prepared], with_cam: bool) -> Iterator[Prediction]:
        """Run the network once over ``batch`` and yield its predictions in batch order."""
        good = [p for p in batch if p.error is None]
        results: dict[int, Prediction] = {}
        if good:
            # Prepared without error means network_input and geometry are set.
            output = self.engine.run(np.stack([p.network_input for p in good]), with_cam)  # type: ignore[misc]
            gate = self.ood_gate
            features = output.gate_features()
            ood_scores = gate.score(features) if gate is not None else None
            regions = (
                self.region_head.probabilities(output.pooled)
                if self.region_head is not None
                else None
            )
            metal = (
                self.hardware_head.metal_probability(output.pooled)
                if self.hardware_head is not None
                else None
            )
            if output.logits.ndim == 1:
                scored = self._binary(output)
            else:
                scored = self._classes(output)
            for row, prepared in enumerate(good):
                prediction = scored[row]
                # The heat map at the kept image's size (display size for a page).
                heat_geometry = shown_geometry(prepared.geometry, prepared.image)  # type: ignore[arg-type]
                if prediction.class_evidence is not None:
                    prediction = with_class_map(
                        prediction, prediction.top_class, self.config, heat_geometry
                    )
                elif prediction.evidence is not None:
                    prediction.heatmap, prediction.box, prediction.box_style = _heat_and_box(
                        prediction.evidence,
                        heat_geometry,
                        prediction.probability,
                        self.config,
                    )
                if output.localiser is not None and self.localiser is not None:
                    prediction = _with_location(
                        prediction,
                        output.localiser[row],
                        self.localiser,
                        prepared.geometry,
                        self.config,
                    )
                in_distribution = (
                    None
                    if gate is None or ood_scores is None
                    else bool(ood_scores[row] <= gate.threshold)
                )
                region, region_probability = (
                    self.region_head.name(regions[row])  # type: ignore[union-attr]
                    if regions is not None and in_distribution is not False
                    else (None, None)
                )
                result = dataclasses.replace(
                    prediction,
                    source=prepared.name,
                    geometry=prepared.geometry,
                    image=prepared.image,
                    features={layer: values[row] for layer, values in features.items()},
                    ood_score=None if ood_scores is None else float(ood_scores[row]),
                    in_distribution=in_distribution,
                    body_region=region,
                    body_region_probability=region_probability,
                    metal_probability=float(metal[row])
                    if metal is not None and in_distribution is not False
                    else None,
                )
                # The one verdict (fracture.inference.verdict): a flagged input is
                # not_assessed, never fracture or normal.
                result.label = result.verdict().label
                results[prepared.index] = result
        for prepared in batch:
            yield results.get(prepared.index) or Prediction(
                source=prepared.name, status="error", error=prepared.error
            )

    def _binary(self, output: BatchOutput) -> list[Prediction]:
        """The binary model's predictions: one calibrated sigmoid probability each.

        With ``localiser_weight`` set, the logit calibrated is the classifier's plus
        that weight times the localisation head's peak centre logit.
        """
        logits = self.corrected_logit(self.raw_logit(output))
        probabilities = self.probability_from_logit(logits)
        return [
            Prediction(
                source="",
                status="ok",
                probability=float(probability),
                threshold=self.threshold,
                logit=float(logit),
                evidence=None if output.cams is None else output.cams[row],
            )
            for row, (logit, probability) in enumerate(zip(logits, probabilities))
        ]

    def _classes(self, output: BatchOutput) -> list[Prediction]:
        """A K-class model's predictions: per-class probabilities, and the fracture probability.

        With a normal class, the fracture probability is 1 - P(normal), labelled at the
        operating point like a binary model's. Without one every class is a kind of
        finding, so there is no fracture-or-normal decision: probability and threshold
        are None and the label is the top class.
        """
        names = self.config.class_names
        matrix = self.config.probabilities(output.logits)  # softmax(logits / T), the contract's
        any_fracture = self.config.any_fracture(matrix)
        predictions = []
        for row, values in enumerate(matrix):
            classes = {name: float(value) for name, value in zip(names, values)}
            if any_fracture is None:
                probability, threshold = None, None
            else:
                probability = float(any_fracture[row])
                threshold = self.threshold
            predictions.append(
                Prediction(
                    source="",
                    status="ok",
                    probability=probability,
                    threshold=threshold,
                    class_probabilities=classes,
                    class_evidence=None if output.cams is None else output.cams[row],
                )
            )
        return predictions


def _operating_threshold(config: ModelConfig) -> float | None:
    """The operating point's threshold; None for a K-class model without a normal class,
    which has no fracture-or-not threshold (and so never gets a box)."""
    return config.threshold if config.operating_point in config.thresholds else None


def _heat_and_box(
    evidence: np.ndarray, geometry: Geometry, probability: float | None, config: ModelConfig
) -> tuple[np.ndarray, tuple[float, float, float, float] | None, str | None]:
    """Display heat at the image's size, and the strongest-region box and its style.

    The box marks a finding: it is drawn only where the image is labelled fracture at
    the model's operating point (:func:`~fracture.inference.gradcam.box_style`).
    """
    heatmap = evidence_heat(heatmap_to_image(evidence, geometry), config.evidence_scale)
    style = box_style(probability, config.thresholds, _operating_threshold(config))
    box = strongest_region(heatmap) if style else None
    return heatmap, box, style if box else None


def _with_location(
    prediction: Prediction,
    outputs: np.ndarray,
    localiser: Localiser,
    geometry: Geometry | None,
    config: ModelConfig,
) -> Prediction:
    """``prediction`` with the localisation head's map and boxes; its best box becomes the box."""
    if geometry is None:
        return prediction
    boxes = boxes_in_image(
        decode_boxes(outputs, min_score=localiser.box_threshold, max_boxes=localiser.max_boxes),
        geometry,
    )
    style = box_style(prediction.probability, config.thresholds, _operating_threshold(config))
    best = boxes[0] if boxes and style else None
    return dataclasses.replace(
        prediction,
        location_outputs=np.asarray(outputs, np.float32),
        location_boxes=boxes,
        box=best.coordinates if best else None,
        box_style=style if best else None,
        box_score=best.score if best else None,
    )


def with_class_map(
    prediction: Prediction,
    class_name: str | None,
    config: ModelConfig,
    geometry: Geometry | None = None,
) -> Prediction:
    """``prediction`` showing the heat map of ``class_name`` (a copy; no network run).

    For K-class predictions made with heat maps: every class's evidence was kept on the
    network's grid, so this only upsamples one map. The strongest-region box is drawn
    for fracture classes only (the normal class's evidence is not a finding), at the
    operating point, as for the binary model. ``geometry`` defaults to the prediction's;
    the map comes out at the size of the prediction's kept image (display size on a page).
    """
    if prediction.class_evidence is None or prediction.class_probabilities is None:
        raise ValueError(
            "this prediction has no per-class heat maps (binary model, or no Grad-CAM)"
        )
    names = list(prediction.class_probabilities)
    if class_name not in names:
        raise ValueError(f"{class_name!r} is not one of the model's classes: {', '.join(names)}")
    geometry = geometry or prediction.geometry
    if geometry is None:
        raise ValueError("this prediction has no image geometry to map its heat map onto")
    geometry = shown_geometry(geometry, prediction.image)  # at the kept image's size
    index = names.index(class_name)
    evidence = prediction.class_evidence[..., index]
    is_normal = index == config.normal_index
    heatmap, box, style = _heat_and_box(
        evidence, geometry, None if is_normal else prediction.probability, config
    )
    return dataclasses.replace(
        prediction,
        cam_class=class_name,
        evidence=evidence,
        heatmap=heatmap,
        box=box,
        box_style=style,
    )


def _load_ood_gate(directory: Path | None) -> AnyOODGate | None:
    """The model's out-of-distribution gate, when the model folder has one."""
    if directory is None or not ModelFolder(directory).has_ood_gate():
        return None
    return load_ood_gate(ModelFolder(directory).ood_path)


def _load_localiser(directory: Path | None) -> Localiser | None:
    """The model's localisation head, when the model folder has one."""
    if directory is None or not ModelFolder(directory).has_localiser():
        return None
    return Localiser.load(ModelFolder(directory).localiser_path)


def _load_region_head(directory: Path | None) -> RegionHead | None:
    """The model's body-region head, when the model folder has one."""
    if directory is None or not ModelFolder(directory).has_region_head():
        return None
    return RegionHead.load(ModelFolder(directory).region_head_path)


def _load_hardware_head(directory: Path | None) -> HardwareHead | None:
    """The model's hardware (metal implant) head, when the model folder has one."""
    if directory is None or not ModelFolder(directory).has_hardware_head():
        return None
    return HardwareHead.load(ModelFolder(directory).hardware_head_path)


def _resolve_precision(requested: str | None, recommended: str | None) -> str:
    """The precision to run: the caller's, else the model's recommendation, else float32."""
    precision = requested or recommended or "float32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bfloat16" and not bfloat16_supported():
        if requested:  # silent when it was only the model's suggestion
            warnings.warn(
                "bfloat16 was requested but this machine has no native bfloat16 arithmetic "
                "(AVX-512 BF16, AMX or a GPU); using float32, which is faster here",
                RuntimeWarning,
                stacklevel=3,
            )
        precision = "float32"
    return precision


def _default_name(source: Source, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"input-{index}"


def _check_array(image: np.ndarray, name: str) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidImageError(
            f"{name}: arrays must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}"
        )


def load_predictor(
    model_dir: str | os.PathLike[str] | None = None,
    *,
    settings: Settings | None = None,
    **options: Any,
) -> Predictor:
    """A :class:`Predictor` of ``model_dir``, or of the model served now (the registry's ACTIVE).

    ``options`` are :class:`Predictor`'s (``batch_size``, ``warmup``, ``precision``).
    """
    configure_threads()  # before the model is built: the thread pools are fixed at the first op
    settings = settings or get_settings()
    directory = Path(model_dir) if model_dir else registry.active_model_dir(settings)
    weights = imagenet.resolve_imagenet_weights(settings).path
    return Predictor(load_model(directory, weights), settings=settings, **options)
