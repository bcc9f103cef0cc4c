"""The measurements: serving (throughput, latency, RSS, bfloat16), training (with and without
the feature cache) and cold start. Each runs in its own child process when orchestrated
by :func:`fracture.perf.bench.run_bench`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from fracture.errors import FractureError
from fracture.perf.children import peak_rss_mib
from fracture.perf.config import BF16_MAX_AUROC_DELTA, BenchConfig
from fracture.perf.machine import count_macs
from fracture.perf.workload import (
    bench_image_size,
    bench_model,
    build_naive_model,
    dataset_subset,
    letterboxed,
    make_radiograph_jpegs,
    naive_predict,
    resolve_weights,
)

if TYPE_CHECKING:
    import keras

    from fracture.inference.predictor import Predictor

__all__ = [
    "measure_serving",
    "measure_training",
    "COLD_START_SCRIPT",
    "measure_cold_start",
    "measure_gemm",
    "median",
]


class _Laps:
    """Wall time per step of a section, so a slow benchmark says where its time went."""

    def __init__(self) -> None:
        self.steps: dict[str, float] = {}
        self._last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.steps[name] = round(now - self._last, 3)
        self._last = now


def _timed(function: Callable[[], Any]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, np.float64)))


def _percentiles_ms(values: Sequence[float]) -> tuple[float, float]:
    ms = np.asarray(values, np.float64) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _single_request(predictor: "Predictor", data: bytes, with_cam: bool) -> None:
    """What the dashboard does for one upload: bytes to probability (and overlay)."""
    from fracture.inference.gradcam import overlay_heatmap

    result = predictor.predict([data], with_cam=with_cam)[0]
    if with_cam:
        overlay_heatmap(result.image, result.heatmap)  # type: ignore[arg-type]


def _latencies(
    predictors: Sequence["Predictor"], jpegs: Sequence[bytes], repeats: int
) -> list[dict[str, Any]]:
    """Per predictor, p50/p95 of bytes -> probability + Grad-CAM overlay and bytes -> probability.

    Requests alternate between the predictors and the two kinds, so a change
    in background load reaches every figure alike. CPU time per request is
    kept too: unlike wall time it hardly depends on other jobs.
    """
    timings: list[dict[str, list[float]]] = [
        {"cam": [], "prob": [], "cam_cpu": [], "prob_cpu": []} for _ in predictors
    ]
    for predictor in predictors:  # warm: first executions allocate buffers
        _single_request(predictor, jpegs[0], with_cam=True)
        _single_request(predictor, jpegs[0], with_cam=False)
    for index in range(repeats):
        data = jpegs[index % len(jpegs)]
        for predictor, timing in zip(predictors, timings):
            for kind, with_cam in (("cam", True), ("prob", False)):
                cpu_start = _cpu_seconds()
                # _timed calls the lambda at once, inside this iteration.
                request = lambda: _single_request(predictor, data, with_cam)  # noqa: B023, E731
                timing[kind].append(_timed(request))
                timing[f"{kind}_cpu"].append(_cpu_seconds() - cpu_start)
    results = []
    for predictor, timing in zip(predictors, timings):
        cam_p50, cam_p95 = _percentiles_ms(timing["cam"])
        prob_p50, prob_p95 = _percentiles_ms(timing["prob"])
        results.append(
            {
                "image_size": predictor.config.image_size,
                "precision": predictor.precision,
                "repeats": repeats,
                "prob_cam_p50_ms": cam_p50,
                "prob_cam_p95_ms": cam_p95,
                "prob_p50_ms": prob_p50,
                "prob_p95_ms": prob_p95,
                "prob_cam_cpu_p50_ms": _percentiles_ms(timing["cam_cpu"])[0],
            }
        )
    return results


def _val_subset(config: BenchConfig) -> tuple[list[Any], int, str | None]:
    """Val records (a stratified, seeded subset when ``val_images`` is set), the split's size,
    or the reason there are none."""
    return dataset_subset(config, "val", config.val_images)


def _auroc_check(fp32: "Predictor", bf16: "Predictor", config: BenchConfig) -> dict[str, Any]:
    """AUROC of float32 and bfloat16 on the same val images; PASS within BF16_MAX_AUROC_DELTA."""
    from sklearn.metrics import roc_auc_score

    records, total, reason = _val_subset(config)
    if reason:
        return {"check": "n/a", "reason": reason}
    paths = [r.path for r in records]
    labels = np.array([r.label for r in records])
    if len(set(labels.tolist())) < 2:
        return {"check": "n/a", "reason": "n/a: the val subset holds one class only"}
    first = fp32.predict(paths)
    second = bf16.predict(paths)
    ok = np.array([a.ok and b.ok for a, b in zip(first, second)])
    p32 = np.array([a.probability if a.ok else np.nan for a in first])[ok]
    p16 = np.array([b.probability if b.ok else np.nan for b in second])[ok]
    auroc32 = float(roc_auc_score(labels[ok], p32))
    auroc16 = float(roc_auc_score(labels[ok], p16))
    delta = auroc16 - auroc32
    return {
        "check": "PASS" if abs(delta) <= BF16_MAX_AUROC_DELTA else "FAIL",
        "reason": None,
        "val_images": int(ok.sum()),
        "val_split_images": total,
        "val_subset": len(records) < total,
        "auroc_fp32": auroc32,
        "auroc_bf16": auroc16,
        "delta_auroc": delta,
        "max_abs_probability_diff": float(np.max(np.abs(p32 - p16))),
        "decisions_changed": int(np.sum((p32 >= fp32.threshold) != (p16 >= fp32.threshold))),
        # The OOD gate was fitted in one precision: say whether the other moves its flags.
        "ood_flags_changed": int(
            sum(
                a.in_distribution != b.in_distribution
                for a, b, kept in zip(first, second, ok)
                if kept
            )
        ),
    }


def measure_serving(config: BenchConfig) -> dict[str, Any]:
    """Everything measured in the serving process, as raw timings (see :func:`summarise`)."""
    from fracture.inference.engine import bfloat16_supported, configure_threads

    threads = configure_threads()
    from fracture.inference.predictor import Predictor

    started = time.perf_counter()
    lap = _Laps()
    weights = resolve_weights(config)
    loaded, model_info = bench_model(config, weights)
    size = loaded.config.image_size
    lap("load model")
    jpegs = make_radiograph_jpegs(config.images)

    def dashboard_pair(precision: str) -> tuple[Predictor, Predictor]:
        # The dashboard's two predictors on one model: batch-1 for the image on
        # screen, the configured batch for folders; both warm and used.
        batch = Predictor(loaded, batch_size=config.batch_size, precision=precision)
        single = Predictor(loaded, batch_size=1, precision=precision)
        batch.predict(jpegs)  # warm: the tf.data pipeline and the partial last batch
        for data in jpegs[:2]:
            _single_request(single, data, with_cam=True)
        return batch, single

    # The serving peak is that of the precision the dashboard serves (the model's
    # recommendation), taken before anything only the benchmark allocates.
    served = Predictor(loaded, batch_size=1, warmup=False).precision
    pairs = {served: dashboard_pair(served)}
    serving_rss = peak_rss_mib()
    lap(f"{served} predictors, warm-up, serving RSS")

    naive = build_naive_model(size, weights)
    naive_predict(naive, jpegs[0], size)  # warm: Keras builds its predict function
    if "float32" not in pairs:
        pairs["float32"] = dashboard_pair("float32")
    batch, single = pairs["float32"]
    bf16_ok = bfloat16_supported()
    bf16_batch = bf16_single = None
    if bf16_ok:
        if "bfloat16" not in pairs:
            pairs["bfloat16"] = dashboard_pair("bfloat16")
        bf16_batch, bf16_single = pairs["bfloat16"]
    inputs = letterboxed(jpegs, size)  # for timing the network without decoding
    engine = batch.engine
    chunks = [inputs[i : i + engine.batch_size] for i in range(0, len(inputs), engine.batch_size)]
    lap("comparison models")

    # Removed at the end, or by its finaliser if a measurement fails.
    scratch = tempfile.TemporaryDirectory(prefix="fracture-bench-onnx-")
    onnx, setup = _prepare_onnx_section(config, loaded, Path(scratch.name), batch.batch_size)
    onnx_predictors = list(setup.predictors.values()) if setup else []
    lap("ONNX export and int8 quantisation")

    tf_predictors = [single] + ([bf16_single] if bf16_single else [])
    latencies = _latencies(tf_predictors + onnx_predictors, jpegs, config.latency_repeats)
    latency, *bf16_latency = latencies[: len(tf_predictors)]
    for predictor, timing in zip(onnx_predictors, latencies[len(tf_predictors) :]):
        onnx.setdefault("variants", {})[predictor.precision.removeprefix("onnx-")] = {
            "latency": timing
        }
    lap("latency")

    runs = _interleaved_runs(
        config, jpegs, batch, chunks, naive, bf16_batch, onnx_predictors, size=size
    )
    del naive, inputs, chunks
    for predictor in onnx_predictors:
        onnx["variants"][predictor.precision.removeprefix("onnx-")]["seconds"] = runs[
            predictor.precision
        ]
    lap("interleaved throughput")

    bf16: dict[str, Any] = {"supported": bf16_ok}
    if bf16_batch is not None:
        bf16["latency"] = bf16_latency[0]
        bf16["seconds"] = runs["bf16"]
    bf16["auroc"] = _bf16_auroc(config, model_info, batch, bf16_batch)
    lap("bf16 AUROC check")

    if setup is not None:
        _finish_onnx_section(onnx, setup, config, model_info, batch, jpegs[0], Path(scratch.name))
        lap("ONNX Runtime val check and cold starts")
    scratch.cleanup()

    gemm = measure_gemm()
    lap("GEMM ceiling")

    latency_224 = None
    if config.latency_at_224 and size != 224:
        latency_224 = _latency_at_224(config, weights, jpegs, bf16_ok)
        lap("latency at 224 px")

    return {
        "model": model_info,
        "threads": {"intra_op": threads[0], "inter_op": threads[1]},
        "batch_size": batch.batch_size,
        "images": config.images,
        "naive_images": config.naive_images,
        "project_seconds": runs["project"],
        "project_cpu_seconds": runs["project_cpu"],
        "naive_seconds": runs["naive"],
        "pipeline": {"decode_seconds": runs["decode"], "inference_seconds": runs["network"]},
        "latency": latency,
        "latency_224": latency_224,
        "serving_peak_rss_mib": serving_rss,
        "serving_precision": served,
        "gemm": gemm,
        "bf16": bf16,
        "onnx": onnx,
        "seconds": time.perf_counter() - started,
        "laps": lap.steps,
    }


def _interleaved_runs(
    config: BenchConfig,
    jpegs: list[bytes],
    batch: "Predictor",
    chunks: list[np.ndarray],
    naive: "keras.Model",
    bf16_batch: "Predictor | None",
    onnx_predictors: list[Any],
    *,
    size: int,
) -> dict[str, list[float]]:
    """Seconds of every path, each repeat: background load drifts hit all alike.

    ``project`` is the predict path (with its CPU seconds), ``network`` the compiled
    network alone on letterboxed ``chunks``, ``decode`` the letterboxing alone,
    ``naive`` the one-image-at-a-time baseline, then bfloat16 and each ONNX variant.
    """
    engine = batch.engine
    runs: dict[str, list[float]] = {
        key: [] for key in ("project", "project_cpu", "network", "decode", "naive", "bf16")
    }
    for _ in range(config.repeats):
        cpu_start = _cpu_seconds()
        runs["project"].append(_timed(lambda: batch.predict(jpegs)))
        runs["project_cpu"].append(_cpu_seconds() - cpu_start)
        runs["network"].append(_timed(lambda: [engine.run(c, False) for c in chunks]))
        runs["decode"].append(_timed(lambda: letterboxed(jpegs, size)))
        runs["naive"].append(
            _timed(
                lambda: [naive_predict(naive, data, size) for data in jpegs[: config.naive_images]]
            )
        )
        if bf16_batch is not None:
            runs["bf16"].append(_timed(lambda: bf16_batch.predict(jpegs)))
        for predictor in onnx_predictors:
            runs.setdefault(predictor.precision, []).append(
                _timed(lambda: predictor.predict(jpegs))  # noqa: B023 (called at once)
            )
    return runs


def _bf16_auroc(
    config: BenchConfig,
    model_info: dict[str, Any],
    batch: "Predictor",
    bf16_batch: "Predictor | None",
) -> dict[str, Any]:
    """bfloat16's AUROC against float32 on val, or why it could not be checked."""
    if bf16_batch is None:
        return {"check": "n/a", "reason": "n/a: no native bfloat16 on this machine"}
    if model_info["kind"] != "trained":
        return {"check": "n/a", "reason": "n/a: no trained model (ImageNet + random head)"}
    return _auroc_check(batch, bf16_batch, config)


def _latency_at_224(
    config: BenchConfig, weights: str, jpegs: list[bytes], bf16_ok: bool
) -> dict[str, Any]:
    """Single-image latency of an ImageNet-size (224 px) network, for comparison with others."""
    from fracture.inference.predictor import Predictor
    from fracture.model.folder import LoadedModel, ModelConfig
    from fracture.model.network import build_classifier

    small = ModelConfig(image_size=224, name="imagenet-random-head")
    small_loaded = LoadedModel(build_classifier(small, weights), small, {}, None)
    predictors = [Predictor(small_loaded, batch_size=1, precision="float32")]
    if bf16_ok and not config.quick:
        predictors.append(Predictor(small_loaded, batch_size=1, precision="bfloat16"))
    latency_224, *rest = _latencies(predictors, jpegs, config.latency_repeats)
    if rest:
        latency_224["bf16"] = rest[0]
    return latency_224


def _prepare_onnx_section(
    config: BenchConfig, loaded: Any, scratch: Path, batch_size: int
) -> tuple[dict[str, Any], Any]:
    """The ONNX Runtime variants ready to time, or the reason they are not measured."""
    from fracture.perf import onnx_runtime

    if not config.onnx:
        return {"available": False, "reason": "skipped: turned off for this run"}, None
    reason = onnx_runtime.onnx_unavailable()
    if reason:
        return {"available": False, "reason": reason}, None
    try:
        setup = onnx_runtime.prepare_onnx(config, loaded, scratch, batch_size)
    except FractureError as error:
        return {"available": False, "reason": f"failed: {error}"}, None
    return {
        "available": True,
        "reason": None,
        "export_s": setup.export_s,
        "quantise_s": setup.quantise_s,
        "calibration": setup.calibration,
    }, setup


def _finish_onnx_section(
    onnx: dict[str, Any],
    setup: Any,
    config: BenchConfig,
    model_info: dict[str, Any],
    reference: "Predictor",
    jpeg: bytes,
    scratch: Path,
) -> None:
    """Val AUROC and heat maps against TensorFlow float32, then one cold start per variant."""
    from fracture.perf import onnx_runtime

    if model_info["kind"] != "trained":
        onnx["val"] = {"check": "n/a", "reason": "n/a: no trained model (ImageNet + random head)"}
    else:
        records, _, reason = _val_subset(config)
        onnx["val"] = (
            onnx_runtime.val_check(records, reference, setup.predictors)
            if records
            else {"check": "n/a", "reason": reason}
        )
    sample = scratch / "cold-start.jpg"
    sample.write_bytes(jpeg)
    for name, directory in setup.directories.items():
        onnx["variants"][name]["cold_start"] = onnx_runtime.cold_start(
            directory, reference.loaded.directory, sample
        )


def measure_training(config: BenchConfig) -> dict[str, Any]:
    """Fine-tuning steps per second with and without the feature cache, as train.py trains.

    "Without": the full network (frozen stem, trainable tail) on letterboxed
    images. "With": the tail alone on the stem's features, stored float16 and
    cast to float32 per batch as :func:`fracture.training.trainer._batches` does. Image
    decoding and augmentation, which an uncached epoch would also repeat, are
    left out, so the speed-up is if anything understated.
    """
    from fracture.inference.engine import configure_threads

    configure_threads()

    from fracture.model.folder import ModelConfig
    from fracture.model.network import build_classifier, set_trainable, split_at
    from fracture.training.config import TrainConfig
    from fracture.training.losses import EVIDENCE_OUTPUT, LOGIT_OUTPUT, evidence_tail
    from fracture.training.trainer import _compile

    started = time.perf_counter()
    lap = _Laps()
    size = bench_image_size(config)
    train_config = TrainConfig(image_size=size, batch_size=config.train_batch_size)
    model = build_classifier(
        ModelConfig(image_size=size, fine_tune_from=train_config.fine_tune_from),
        resolve_weights(config),
    )
    set_trainable(model, train_config.fine_tune_from)
    stem, _ = split_at(model, train_config.fine_tune_from)
    # The two-output models training compiles (logit and evidence map, box loss included).
    full = evidence_tail(model, None)
    tail = evidence_tail(model, train_config.fine_tune_from)
    _compile(full, train_config.lr, train_config)
    _compile(tail, train_config.lr, train_config)

    # FLOP bound of the speed-up: a cached step is the tail's forward and backward
    # (backward ~ 2 x forward: input and weight gradients); an uncached step adds
    # the whole stem's forward pass. Compute-bound steps cannot beat this ratio.
    full_macs, tail_macs = count_macs(model.layers), count_macs(tail.layers)
    flop_bound = (full_macs + 2 * tail_macs) / (3 * tail_macs)

    batch = train_config.batch_size
    images = letterboxed(make_radiograph_jpegs(batch, seed=1), size)
    labels = (np.arange(batch) % 2).astype(np.float32)
    weights = np.ones(batch, np.float32)
    grid = tuple(int(d) for d in tail.output[EVIDENCE_OUTPUT].shape[1:3])
    box_target = np.zeros((batch, *grid, 2), np.float32)
    box_target[:, : grid[0] // 2, : grid[1] // 2, 0] = 1.0  # a box in one quadrant
    box_target[..., 1] = labels[:, None, None]
    targets = {LOGIT_OUTPUT: labels, EVIDENCE_OUTPUT: box_target}
    features = stem.predict(images, batch_size=batch, verbose=0).astype(np.float16)
    lap("build, compile, features")

    def uncached() -> None:
        full.train_on_batch(images, targets, sample_weight=weights)

    def cached() -> None:
        tail.train_on_batch(features.astype(np.float32), targets, sample_weight=weights)

    uncached()  # warm: traces each train function
    cached()
    lap("trace train steps")
    uncached_s, cached_s = [], []
    for _ in range(config.train_steps):
        uncached_s.append(_timed(uncached))
        cached_s.append(_timed(cached))
    lap("timed steps")
    return {
        "image_size": size,
        "batch_size": batch,
        "fine_tune_from": train_config.fine_tune_from,
        "steps": config.train_steps,
        "uncached_seconds": uncached_s,
        "cached_seconds": cached_s,
        "feature_shape": list(features.shape[1:]),
        "forward_gmacs_per_image": full_macs / 1e9,
        "tail_forward_gmacs_per_image": tail_macs / 1e9,
        "flop_bound_speedup": flop_bound,
        "feature_bytes_per_image_view": int(np.prod(features.shape[1:]) * 2),
        "training_peak_rss_mib": peak_rss_mib(),
        "seconds": time.perf_counter() - started,
        "laps": lap.steps,
    }


# Run as ``python -c COLD_START_SCRIPT CONFIG_JSON``: nothing is imported before
# the first marker except what the interpreter itself loads.
COLD_START_SCRIPT = r"""
import time
WALL0, T0 = time.time(), time.perf_counter()
import json, sys
import tensorflow, keras  # noqa: F401 - the heavy part of a cold start
import fracture.inference.engine, fracture.model.folder, fracture.inference.predictor, fracture.model.imagenet  # noqa: F401
T_IMPORT = time.perf_counter()
from fracture.perf.measure import measure_cold_start
result = measure_cold_start(json.loads(sys.argv[1]), T0, T_IMPORT)
result["wall_start"] = WALL0
print("FRACTURE_BENCH_RESULT " + json.dumps(result), flush=True)
"""


def measure_cold_start(config_json: dict[str, Any], t0: float, t_import: float) -> dict[str, Any]:
    """In a fresh process: build, load weights, first prediction; then a short throughput run.

    Build and weight loading are told apart by timing Keras's ``load_weights``
    (ImageNet) and :func:`fracture.model.folder.apply_stored_weights` (the trained
    difference) where the model calls them.
    """
    import keras

    import fracture.model.folder as model_module
    from fracture.inference.engine import configure_threads
    from fracture.inference.gradcam import overlay_heatmap
    from fracture.inference.predictor import Predictor

    config = BenchConfig.from_json(config_json)
    threads = configure_threads()
    spent = {"weights": 0.0}

    def timing(function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent["weights"] += time.perf_counter() - start

        return wrapper

    original_load, original_apply = keras.Model.load_weights, model_module.apply_stored_weights
    keras.Model.load_weights = timing(original_load)
    model_module.apply_stored_weights = timing(original_apply)
    try:
        t_start = time.perf_counter()
        weights = resolve_weights(config)  # verifies the file's hash: part of loading weights
        t_resolved = time.perf_counter()
        loaded, model_info = bench_model(config, weights)
        t_built = time.perf_counter()
    finally:
        keras.Model.load_weights, model_module.apply_stored_weights = original_load, original_apply
    weights_s = (t_resolved - t_start) + spent["weights"]
    build_s = (t_built - t_resolved) - spent["weights"]

    jpegs = make_radiograph_jpegs(max(config.sweep_images, 1), seed=2)
    t_engine = time.perf_counter()
    single = Predictor(loaded, batch_size=1)  # warms up (traces) both paths, as served
    t_warm = time.perf_counter()
    first = single.predict([jpegs[0]], with_cam=True)[0]
    overlay_heatmap(first.image, first.heatmap)  # type: ignore[arg-type]
    t_first = time.perf_counter()

    # Whole-pipeline throughput under this process's thread settings.
    # A batch no larger than the image count: padding would time images that do not exist.
    batch_size = min(config.batch_size or single.settings.batch_size, len(jpegs))
    batch = Predictor(loaded, batch_size=batch_size, warmup=False)
    batch.predict(jpegs)
    wall, cpu = [], []
    for _ in range(config.sweep_repeats):
        cpu_start = _cpu_seconds()
        wall.append(_timed(lambda: batch.predict(jpegs)))
        cpu.append(_cpu_seconds() - cpu_start)
    return {
        "model": model_info,
        "threads": {"intra_op": threads[0], "inter_op": threads[1]},
        "import_s": t_import - t0,
        "build_s": build_s,
        "weights_s": weights_s,
        "warmup_s": t_warm - t_engine,
        "first_predict_s": t_first - t_warm,
        "to_first_prediction_s": t_first - t0,
        "sweep_images": len(jpegs),
        "sweep_seconds": wall,
        "sweep_cpu_seconds": cpu,
        "peak_rss_mib": peak_rss_mib(),
    }


def measure_gemm(size: int = 2048, repeats: int = 5) -> dict[str, float | None]:
    """Achieved GFLOP/s of one large matrix product, float32 and bfloat16 (best of ``repeats``).

    A large GEMM runs near the machine's real peak, so it checks the formula's
    peak where the clock is unknown (virtual machines report the nominal
    clock, not the boost clock) and is a reachable ceiling for convolutions.
    """
    import tensorflow as tf

    from fracture.inference.engine import bfloat16_supported

    out: dict[str, float | None] = {"gemm_size": float(size)}
    dtypes = [("fp32", tf.float32)] + ([("bf16", tf.bfloat16)] if bfloat16_supported() else [])
    for name, dtype in dtypes:
        a = tf.cast(tf.random.normal((size, size), seed=1), dtype)
        b = tf.cast(tf.random.normal((size, size), seed=2), dtype)
        tf.linalg.matmul(a, b).numpy()  # warm: oneDNN picks and caches its kernel
        walls, cpus = [], []
        for _ in range(repeats):
            cpu_start = _cpu_seconds()
            walls.append(_timed(lambda: tf.linalg.matmul(a, b).numpy()))  # noqa: B023 (called at once)
            cpus.append(_cpu_seconds() - cpu_start)
        flop = 2 * size**3
        out[f"{name}_gflops"] = flop / min(walls) / 1e9
        # Per CPU-second: the same ceiling, but independent of other jobs' load.
        out[f"{name}_gflop_per_cpu_second"] = flop / min(cpus) / 1e9
    out.setdefault("bf16_gflops", None)
    out.setdefault("bf16_gflop_per_cpu_second", None)
    return out
