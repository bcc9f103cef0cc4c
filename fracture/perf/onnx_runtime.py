"""ONNX Runtime float32 and int8 against the TensorFlow path the dashboard serves, in one bench run.

Runs inside the bench's serving process, after the TensorFlow predictors:

* :func:`prepare_onnx` exports the benchmarked model to ONNX
  (:func:`~fracture.inference.export.export_model`) and quantises a copy to int8
  (:func:`~fracture.inference.export.quantize_onnx_int8`), calibrated on
  TRAIN radiographs of the bench's dataset (never the val images it is judged
  on; generated radiographs when there is no dataset, which is good for speed
  figures only).
* :class:`~fracture.inference.runtime.OnnxPredictor` is what the dashboard's server
  runs per upload with ``FRACTURE_RUNTIME=onnx``: decode, letterbox, one ONNX Runtime
  call for every output, the heads, boxes and heat map as the TensorFlow
  :class:`~fracture.inference.predictor.Predictor` does them. The bench times it in
  the same interleaved latency loop as the TensorFlow predictors.
* :func:`val_check` scores the val subset with TensorFlow float32 (the
  reference) and each ONNX variant: AUROC, largest probability difference,
  labels changed, and how well the heat maps agree.
* :func:`cold_start` starts a fresh process that imports ONNX Runtime (not
  TensorFlow), loads the model and answers one request: its cold start and
  peak memory are those of a TensorFlow-free serving process.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fracture.errors import BenchError
from fracture.perf.children import peak_rss_mib, run_child
from fracture.perf.config import (
    HEATMAP_MIN_CORRELATION,
    HEATMAP_MIN_PEAK_AGREEMENT,
    ONNX_MAX_AUROC_DELTA,
    BenchConfig,
)
from fracture.perf.workload import dataset_subset, make_radiograph_jpegs

if TYPE_CHECKING:
    from fracture.inference.predictor import Predictor
    from fracture.inference.runtime import OnnxPredictor
    from fracture.model.folder import LoadedModel

__all__ = [
    "VARIANTS",
    "OnnxSetup",
    "onnx_unavailable",
    "prepare_onnx",
    "val_check",
    "heatmap_agreement",
    "heatmap_kept",
    "cold_start",
    "measure_onnx_cold_start",
]

logger = logging.getLogger(__name__)

VARIANTS = ("float32", "int8")


@dataclass
class OnnxSetup:
    """The exported variants, ready to time, and how long making them took."""

    predictors: dict[str, "OnnxPredictor"]
    directories: dict[str, str]
    export_s: float
    quantise_s: float
    calibration: dict[str, Any]


def onnx_unavailable() -> str | None:
    """Why the ONNX Runtime section cannot run here, or None when it can."""
    missing = []
    for module in ("onnxruntime", "tf2onnx", "onnx"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        return (
            f"skipped: {', '.join(missing)} not installed "
            "(pip install -r requirements-dev.txt to measure ONNX Runtime)"
        )
    return None


def prepare_onnx(
    config: BenchConfig, loaded: "LoadedModel", scratch: Path, batch_size: int
) -> OnnxSetup:
    """Export to ONNX float32, quantise to int8 on train images, open both in ONNX Runtime."""
    from fracture.inference.export import export_model, quantize_onnx_int8

    start = time.perf_counter()
    fp32 = export_model(loaded, "onnx", scratch / "float32")
    exported = time.perf_counter()
    images, calibration = _calibration_images(config, loaded.config.image_size)
    int8 = quantize_onnx_int8(
        fp32.directory, scratch / "int8", images, calibration_source=calibration["source"]
    )
    quantised = time.perf_counter()
    directories = {"float32": str(fp32.directory), "int8": str(int8.directory)}
    return OnnxSetup(
        predictors={
            name: _serving_predictor(directory, loaded.directory, batch_size)
            for name, directory in directories.items()
        },
        directories=directories,
        export_s=exported - start,
        quantise_s=quantised - exported,
        calibration=calibration,
    )


def _serving_predictor(
    export_dir: str, model_dir: Path | None, batch_size: int, warmup: bool = True
) -> "OnnxPredictor":
    """The dashboard's ONNX predictor on ``export_dir``, with the model folder's heads."""
    from fracture.inference.export import OnnxRunner
    from fracture.inference.runtime import OnnxPredictor

    return OnnxPredictor(OnnxRunner(export_dir), model_dir, batch_size=batch_size, warmup=warmup)


def _calibration_images(config: BenchConfig, size: int) -> tuple[Any, dict[str, Any]]:
    """Letterboxed TRAIN images (generated radiographs when there is no dataset), lazily."""
    from fracture.inference.preprocess import letterbox
    from fracture.io.images import load_image

    records, _, reason = dataset_subset(config, "train", config.calibration_images, seed=1)
    if records:
        sources: list[Any] = [record.path for record in records]
        label = f"{len(records)} training radiographs (seeded, class-balanced as the split)"
    else:
        sources = make_radiograph_jpegs(config.calibration_images, seed=3)
        label = f"{len(sources)} generated radiographs ({reason}; speed figures only)"
    images = (letterbox(load_image(source), size)[0] for source in sources)
    return images, {"images": len(sources), "source": label, "train_split": bool(records)}


def val_check(
    records: Sequence[Any], reference: "Predictor", predictors: dict[str, "OnnxPredictor"]
) -> dict[str, Any]:
    """TensorFlow float32 and each ONNX variant on the same val images, chunk by chunk.

    Per variant: AUROC and its difference from the reference's, the largest
    probability difference, labels changed at the model's threshold, and the
    heat-map agreement (:func:`heatmap_agreement`) with the reference's maps.
    """
    from sklearn.metrics import roc_auc_score

    from fracture.inference.preprocess import letterbox
    from fracture.io.images import load_image

    labels: list[int] = []
    reference_p: list[np.ndarray] = []
    reference_maps: list[np.ndarray] = []
    variant_p: dict[str, list[np.ndarray]] = {name: [] for name in predictors}
    variant_maps: dict[str, list[np.ndarray]] = {name: [] for name in predictors}
    size = reference.config.image_size
    chunk = reference.batch_size
    for start in range(0, len(records), chunk):
        inputs, kept = [], []
        for record in records[start : start + chunk]:
            try:
                inputs.append(letterbox(load_image(record.path), size)[0])
                kept.append(record.label)
            except Exception as error:  # noqa: BLE001 - an unreadable file is left out, not fatal
                logger.warning("left out of the ONNX check: %s", error)
        if not inputs:
            continue
        batch = np.stack(inputs)
        output = reference.engine.run(batch, with_cam=True)
        reference_p.append(
            reference.probability_from_logit(reference.corrected_logit(reference.raw_logit(output)))
        )
        reference_maps.append(np.asarray(output.cams))
        for name, predictor in predictors.items():
            result = predictor.engine.run(batch, with_cam=True)
            variant_p[name].append(
                predictor.probability_from_logit(
                    predictor.corrected_logit(predictor.raw_logit(result))
                )
            )
            variant_maps[name].append(np.asarray(result.cams))
        labels.extend(kept)
    y = np.asarray(labels)
    if len(set(y.tolist())) < 2:
        return {"check": "n/a", "reason": "n/a: the val subset holds one class only"}
    p_ref = np.concatenate(reference_p)
    maps_ref = np.concatenate(reference_maps)
    auroc_ref = float(roc_auc_score(y, p_ref))
    variants = {}
    for name in predictors:
        p = np.concatenate(variant_p[name])
        auroc = float(roc_auc_score(y, p))
        heat = heatmap_agreement(maps_ref, np.concatenate(variant_maps[name]))
        kept_auroc = abs(auroc - auroc_ref) <= ONNX_MAX_AUROC_DELTA
        kept_map = heatmap_kept(heat)
        variants[name] = {
            "auroc": auroc,
            "delta_auroc": auroc - auroc_ref,
            "max_abs_probability_diff": float(np.max(np.abs(p - p_ref))),
            "decisions_changed": int(
                np.sum((p >= reference.threshold) != (p_ref >= reference.threshold))
            ),
            "heatmap": heat,
            "check": "PASS" if kept_auroc and kept_map else "FAIL",
        }
    return {
        "check": "done",
        "reason": None,
        "val_images": int(len(y)),
        "auroc_reference": auroc_ref,
        "reference": f"TensorFlow float32 ({reference.precision})",
        "variants": variants,
    }


def heatmap_kept(heat: dict[str, Any]) -> bool:
    """Whether :func:`heatmap_agreement`'s figures keep the heat map (the adoption rule)."""
    return (heat.get("median_correlation") or 0.0) >= HEATMAP_MIN_CORRELATION and (
        heat.get("peak_cell_agreement") or 0.0
    ) >= HEATMAP_MIN_PEAK_AGREEMENT


def heatmap_agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, float | int | None]:
    """How closely ``other`` heat maps (N, h, w) follow ``reference``'s, image by image.

    * Pearson correlation of the two grids, over images where both vary
      (an all-zero map has no shape to compare): median and 5th percentile;
    * the largest absolute difference relative to that image's reference peak;
    * the share of images whose strongest cell is the same or a neighbour.
    """
    correlations, relative, same_peak, compared = [], [], 0, 0
    for ref, oth in zip(reference.astype(np.float64), other.astype(np.float64)):
        peak = ref.max()
        if peak <= 0:
            continue
        compared += 1
        relative.append(float(np.abs(ref - oth).max() / peak))
        if ref.std() > 0 and oth.std() > 0:
            correlations.append(float(np.corrcoef(ref.ravel(), oth.ravel())[0, 1]))
        a = np.unravel_index(int(np.argmax(ref)), ref.shape)
        b = np.unravel_index(int(np.argmax(oth)), oth.shape)
        same_peak += int(max(abs(a[0] - b[0]), abs(a[1] - b[1])) <= 1)
    return {
        "images": compared,
        "median_correlation": float(np.median(correlations)) if correlations else None,
        "p5_correlation": float(np.percentile(correlations, 5)) if correlations else None,
        "max_relative_difference": max(relative) if relative else None,
        "peak_cell_agreement": same_peak / compared if compared else None,
    }


# Run as ``python -c ONNX_COLD_START_SCRIPT EXPORT_DIR MODEL_DIR JPEG`` (MODEL_DIR "" for
# none): ONNX Runtime and the package's TensorFlow-free modules only; the result says
# whether TensorFlow got in.
ONNX_COLD_START_SCRIPT = r"""
import time
WALL0, T0 = time.time(), time.perf_counter()
import json, sys
import numpy, onnxruntime  # noqa: F401 - the heavy part of this cold start
import fracture.inference.runtime, fracture.io.images  # noqa: F401
T_IMPORT = time.perf_counter()
from fracture.perf.onnx_runtime import measure_onnx_cold_start
result = measure_onnx_cold_start(sys.argv[1], sys.argv[2] or None, sys.argv[3], T0, T_IMPORT)
result["wall_start"] = WALL0
print("FRACTURE_BENCH_RESULT " + json.dumps(result), flush=True)
"""


def measure_onnx_cold_start(
    directory: str, model_dir: str | None, jpeg: str, t0: float, t_import: float
) -> dict[str, Any]:
    """In a fresh process: open the ONNX model, answer one request with heat map and overlay."""
    from fracture.inference.gradcam import overlay_heatmap

    t_load = time.perf_counter()
    predictor = _serving_predictor(
        directory, Path(model_dir) if model_dir else None, batch_size=1, warmup=False
    )
    t_loaded = time.perf_counter()
    first = predictor.predict([Path(jpeg).read_bytes()], with_cam=True)[0]
    overlay_heatmap(first.image, first.heatmap)  # type: ignore[arg-type]
    t_first = time.perf_counter()
    return {
        "import_s": t_import - t0,
        "load_s": t_loaded - t_load,
        "first_predict_s": t_first - t_loaded,
        "to_first_prediction_s": t_first - t0,
        "peak_rss_mib": peak_rss_mib(),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


def cold_start(directory: str, model_dir: Path | None, jpeg: Path) -> dict[str, Any]:
    """Cold start and peak memory of a fresh process serving ``directory`` with ONNX Runtime."""
    try:
        result, spawned = run_child(
            ["-c", ONNX_COLD_START_SCRIPT, directory, str(model_dir or ""), str(jpeg)],
            "ONNX Runtime cold start",
        )
    except BenchError as error:  # an optional section reports its failure, the run goes on
        return {"error": str(error)}
    result["interpreter_s"] = max(0.0, result.pop("wall_start") - spawned)
    result["total_s"] = result["interpreter_s"] + result["to_first_prediction_s"]
    return result
