"""``python -m fracture bench``: how fast the project serves and trains, measured in one run.

What is measured, each as a median over repeats after a warm-up:

* **Batch throughput** of :meth:`Predictor.predict` over generated radiograph
  JPEGs (decode, letterbox, inference; no CAM) against the *naive* baseline a
  simple GUI would use: a Keras ResNet-50 classifier of the same architecture
  and input size, called with ``model.predict(x[None])`` once per image after
  a PIL decode and resize. Both run interleaved in one process, so a
  background load slows both alike and their ratio stays meaningful.
* **Single-image latency** (p50/p95) of bytes to probability plus Grad-CAM
  overlay, and of bytes to probability alone, with a batch-1 Predictor as the
  dashboard uses; at the model's size and, when that is not 224 px, at 224 px.
* **Cold start** in a fresh process: interpreter, imports, model build,
  weight load, warm-up, first prediction (``time.perf_counter`` markers).
* **Fine-tuning throughput** with and without the feature cache of
  :mod:`fracture.training.trainer`, same batch, same freeze point.
* **Peak RSS** of the serving and the training processes.
* **Efficiency**: achieved GFLOP/s against the CPU's peak, with the formula.
* **bfloat16**: speed-up, and AUROC against float32 on FracAtlas val when a
  trained model is benchmarked; bfloat16 is recommended only within 0.005 AUROC.
* **Threading**: whole-pipeline throughput for each inter-op setting tried.

Serving, training and each cold start run in child processes, so every peak
RSS belongs to one job and every cold start is really cold (the parent never
imports TensorFlow). Absolute speeds depend on what else the machine runs:
the load at the start is recorded, and only ratios measured in one run
should be compared.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from fracture.errors import BenchError

if TYPE_CHECKING:
    import keras

    from fracture.model.folder import LoadedModel
    from fracture.inference.predictor import Predictor

__all__ = [
    "BenchConfig",
    "BenchError",
    "TARGETS",
    "add_bench_parser",
    "apply_precision_verdict",
    "build_naive_model",
    "cmd_bench",
    "config_from_args",
    "count_macs",
    "describe_machine",
    "evaluate_targets",
    "flops_per_image",
    "format_machine",
    "format_table",
    "make_radiograph_jpegs",
    "measure_cold_start",
    "measure_gemm",
    "measure_serving",
    "measure_training",
    "naive_predict",
    "peak_gflops",
    "run_bench",
    "summarise",
]

# ---------------------------------------------------------------------------
# Configurable parameters (the reason for each default beside it)

# FracAtlas radiographs are 1024 x 819 or 819 x 1024 JPEGs of about 100 kB;
# generated test images match, so decode costs what it costs on real data.
RADIOGRAPH_SHAPE = (1024, 820)  # height, width
JPEG_QUALITY = 90
# ResNet-50 costs about 4.1 GMACs per 224 px image, the commonly quoted count of
# multiply-accumulates (He et al. 2016 give 3.8 G; Keras's layers count 3.86 G,
# see count_macs); it scales with the pixel count. 1 MAC = 2 FLOPs.
RESNET50_GMACS_AT_224 = 4.1
# Targets for a 2-core CPU: (op, value, unit).
TARGETS: dict[str, tuple[str, float, str]] = {
    "throughput_ratio": (">=", 5.0, "x"),
    "latency_prob_cam_p50_ms": ("<=", 150.0, "ms"),
    "cold_start_s": ("<=", 15.0, "s"),
    "serving_peak_rss_mb": ("<=", 1536.0, "MiB"),  # 1.5 GiB
    "cache_speedup": (">=", 5.0, "x"),
    "bf16_abs_delta_auroc": ("<=", 0.005, ""),
}
BF16_MAX_AUROC_DELTA = TARGETS["bf16_abs_delta_auroc"][1]
# A bfloat16 path that is not clearly faster is not worth its rounding.
BF16_MIN_SPEEDUP = 1.05
# FracAtlas as prepared for this project sits in ../shared beside the checkout.
DEFAULT_VAL_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "fracatlas"
# Thread settings tried by the sweep: (intra-op, inter-op); 0 = every CPU of the process.
THREAD_SETTINGS: tuple[tuple[int, int], ...] = ((0, 1), (0, 2))
# The child prints its result on one line starting with this.
RESULT_MARKER = "FRACTURE_BENCH_RESULT "
CHILD_TIMEOUT_S = 1800
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run. :meth:`full` and :meth:`quick_config` give the two standard sizes."""

    quick: bool = False
    model_dir: str | None = None  # a trained model; None: the active model when it exists
    image_size: int | None = None  # an ImageNet model with a random head at this size instead
    weights: str | None = None  # ImageNet weights file; None: resolve_imagenet_weights()
    batch_size: int | None = None  # Predictor batch; None: the settings' batch size
    images: int = 64  # JPEGs per batch-throughput repeat
    naive_images: int = 16  # the naive path is slow, so fewer images per repeat
    repeats: int = 5
    latency_repeats: int = 30
    latency_at_224: bool = True  # also time the latency target at 224 px when the model differs
    train_batch_size: int = 16
    train_steps: int = 5
    val_root: str | None = None  # None: DEFAULT_VAL_ROOT
    val_images: int | None = None  # None: the whole val split
    thread_settings: tuple[tuple[int, int], ...] = THREAD_SETTINGS
    sweep_images: int = 16
    sweep_repeats: int = 3
    cold_start_repeats: int = 2  # cold starts per thread setting, alternating settings

    @classmethod
    def full(cls, **changes: Any) -> "BenchConfig":
        return dataclasses.replace(cls(), **changes)

    @classmethod
    def quick_config(cls, **changes: Any) -> "BenchConfig":
        """Every figure, fewer repeats: under 3 minutes on an idle 2-core machine.

        The Predictor keeps the configured batch size, so the serving RSS is
        the real one; with 16 images that may be a single batch, and then
        decoding cannot overlap inference (the full run measures the overlap).
        """
        quick = cls(
            quick=True, images=16, naive_images=6, repeats=3, latency_repeats=8,
            train_batch_size=8, train_steps=2, val_images=120, sweep_images=8,
            sweep_repeats=1, cold_start_repeats=1, latency_at_224=True,
        )
        return dataclasses.replace(quick, **changes)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "BenchConfig":
        data = dict(data)
        data["thread_settings"] = tuple(tuple(pair) for pair in data.get("thread_settings", ()))
        return cls(**data)


# ---------------------------------------------------------------------------
# Machine


def describe_machine() -> dict[str, Any]:
    """CPU, memory, library versions and the load at this moment (absolute speeds depend on it)."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    interesting = sorted(
        f for f in flags
        if f in {"fma", "avx", "avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16"}
        or f.startswith("amx")
    )
    mem_kb = _meminfo_kb("MemTotal")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    machine = {
        "cpu_model": info.get("model name", platform.processor() or "unknown"),
        "vendor": info.get("vendor_id", "unknown"),
        "cpu_family": _int_or_none(info.get("cpu family")),
        "cpu_model_number": _int_or_none(info.get("model")),
        "microarchitecture": _microarchitecture(info, flags),
        "cores": _usable_cpus(),
        "threads_per_core": _threads_per_core(info),
        "mhz": _cpu_mhz(info),
        "mhz_source": _cpu_mhz_source(),
        "simd_flags": interesting,
        "ram_gib": round(mem_kb / 2**20, 1) if mem_kb else None,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "load_average_1m": round(load[0], 2),
        "cpu_pressure_some_avg60": _cpu_pressure(),
    }
    machine["versions"] = _library_versions()
    return machine


def _usable_cpus() -> int:
    """CPUs this process may run on (honours taskset and container cpusets)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    packages = ("tensorflow-cpu", "tensorflow", "keras", "numpy", "opencv-python-headless",
                "pillow")
    for name in packages:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    versions["onednn"] = "off" if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0" else "on (default)"
    return versions


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():  # the first CPU describes them all
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    return info


def _meminfo_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _threads_per_core(info: dict[str, str]) -> int | None:
    siblings, cores = _int_or_none(info.get("siblings")), _int_or_none(info.get("cpu cores"))
    return siblings // cores if siblings and cores else None


def _lscpu_max_mhz() -> float | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith("CPU max MHz:"):
            try:
                return float(line.split(":", 1)[1])
            except ValueError:
                return None
    return None


def _cpu_mhz(info: dict[str, str]) -> float | None:
    # The maximum (turbo) clock is what a busy core runs at; virtual machines
    # often hide it, and then the current clock in /proc/cpuinfo is the best figure.
    return _lscpu_max_mhz() or (float(info["cpu MHz"]) if "cpu MHz" in info else None)


def _cpu_mhz_source() -> str:
    if _lscpu_max_mhz():
        return "lscpu 'CPU max MHz'"
    return "/proc/cpuinfo 'cpu MHz' (no max clock exposed)"


def _cpu_pressure() -> float | None:
    """Percent of the last minute in which some task waited for a CPU (Linux PSI)."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = dict(part.split("=") for part in line.split()[1:])
    return float(fields.get("avg60", "nan"))


def _microarchitecture(info: dict[str, str], flags: set[str]) -> str:
    vendor, family = info.get("vendor_id"), _int_or_none(info.get("cpu family"))
    if vendor == "AuthenticAMD" and family == 25:
        return "AMD Zen 4" if "avx512f" in flags else "AMD Zen 3"
    if vendor == "AuthenticAMD" and family == 26:
        return "AMD Zen 5"
    if vendor == "GenuineIntel" and "amx_tile" in flags:
        return "Intel Sapphire Rapids or later (AMX)"
    if vendor == "GenuineIntel" and "avx512f" in flags:
        return "Intel AVX-512 (Skylake-SP or later)"
    return "unknown"


def peak_gflops(machine: dict[str, Any]) -> dict[str, Any]:
    """Peak float32 (and bfloat16) GFLOP/s = cores x GHz x FMA units x SIMD lanes x 2.

    The factor 2 counts a fused multiply-add as two FLOPs. FMA units and lanes
    come from the CPU flags and family, with the assumption written out.
    """
    flags = set(machine.get("simd_flags", []))
    cores, mhz = machine.get("cores") or 1, machine.get("mhz")
    arch = machine.get("microarchitecture", "")
    if "avx512f" in flags and arch == "AMD Zen 4":
        units, lanes = 2, 8
        how = ("Zen 4 runs AVX-512 on two 256-bit FMA pipes (each 512-bit FMA is double-pumped): "
               "2 units x 8 fp32 lanes")
    elif "avx512f" in flags:
        units, lanes = 2, 16
        how = ("AVX-512: assumed 2 FMA units of 16 fp32 lanes (server parts; "
               "CPUs with one AVX-512 FMA unit have half this peak)")
    elif "avx2" in flags and "fma" in flags:
        units, lanes = 2, 8
        how = "AVX2 + FMA: assumed 2 FMA units of 8 fp32 lanes"
    else:
        units, lanes = 1, 4
        how = "no FMA flags: assumed 1 unit of 4 fp32 lanes (SSE)"
    if mhz is None:
        return {"fp32": None, "bf16": None, "formula": "unknown clock", "how": how}
    ghz = mhz / 1000
    fp32 = cores * ghz * units * lanes * 2
    bf16, bf16_how = None, "no native bfloat16 (avx512_bf16 / AMX) flags"
    if any(f.startswith("amx_bf16") for f in flags):
        bf16 = cores * ghz * 1024
        bf16_how = "AMX: 1024 bf16 FLOPs per cycle per core (one TMUL tile op per 16 cycles)"
    elif "avx512_bf16" in flags:
        bf16 = 2 * fp32
        bf16_how = ("AVX-512 BF16: VDPBF16PS does two bf16 products per fp32 lane, so 2 x the "
                    "fp32 peak")
    return {
        "fp32": round(fp32, 1),
        "bf16": None if bf16 is None else round(bf16, 1),
        "formula": f"{cores} cores x {ghz:.2f} GHz x {units} FMA units x {lanes} lanes x 2",
        "how": how,
        "bf16_how": bf16_how,
    }


def flops_per_image(image_size: int) -> float:
    """Forward-pass FLOPs of ResNet-50 at ``image_size`` (2 x MACs, scaled by pixel count)."""
    return 2 * RESNET50_GMACS_AT_224 * 1e9 * (image_size / 224) ** 2


# ---------------------------------------------------------------------------
# Inputs and small helpers


def make_radiograph_jpegs(count: int, shape: tuple[int, int] = RADIOGRAPH_SHAPE,
                          seed: int = 0) -> list[bytes]:
    """``count`` JPEGs that decode like radiographs: grey, smooth, bright bones, some noise.

    Decoding cost depends on size and entropy, so the images have the size
    and roughly the file size (about 100 kB) of FracAtlas radiographs.
    """
    from PIL import Image

    height, width = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for _ in range(count):
        base = 30 + 25 * (yy / height) + rng.normal(0, 4, (height, width))
        angle = rng.uniform(-0.3, 0.3)
        centre = width * rng.uniform(0.35, 0.65)
        distance = np.abs((xx - centre) * math.cos(angle) - (yy - height / 2) * math.sin(angle))
        bone_width = width * rng.uniform(0.06, 0.12)
        base += 140 * np.clip(1 - (distance / bone_width) ** 2, 0, None)
        crack_row = int(height * rng.uniform(0.3, 0.7))
        base[crack_row : crack_row + 3] -= 60 * (distance[crack_row : crack_row + 3] < bone_width)
        grey = np.clip(base, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(grey).convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
        out.append(buffer.getvalue())
    return out


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


def _median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, np.float64)))


def _percentiles_ms(values: Sequence[float]) -> tuple[float, float]:
    ms = np.asarray(values, np.float64) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def _peak_rss_mib() -> float:
    """This process's peak resident set size so far."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _resolve_weights(config: BenchConfig) -> str:
    if config.weights:
        return str(config.weights)
    from fracture.model.imagenet import resolve_imagenet_weights

    return str(resolve_imagenet_weights().path)


def _bench_model(config: BenchConfig, weights: str) -> tuple["LoadedModel", dict[str, Any]]:
    """The model to benchmark: the trained one when there is one, else ImageNet + a random head.

    A random head changes no timing: the head is one 2048-to-1 dense layer.
    """
    from fracture.model.folder import CONFIG_FILE, LoadedModel, ModelConfig, load_model
    from fracture.model.network import build_classifier
    from fracture.config import get_settings

    if config.image_size is None:
        directory = Path(config.model_dir) if config.model_dir else get_settings().active_model_dir
        if config.model_dir or (directory / CONFIG_FILE).is_file():
            loaded = load_model(directory, weights)
            return loaded, {"kind": "trained", "directory": str(directory),
                            "name": loaded.config.name, "image_size": loaded.config.image_size}
    size = config.image_size or 224
    model_config = ModelConfig(image_size=size, name="imagenet-random-head")
    loaded = LoadedModel(build_classifier(model_config, weights), model_config, {}, None)
    return loaded, {"kind": "imagenet-random-head", "directory": None, "name": model_config.name,
                    "image_size": size}


def _bench_image_size(config: BenchConfig) -> int:
    """The benchmarked model's input size, read without building it."""
    from fracture.model.folder import CONFIG_FILE, read_config
    from fracture.config import get_settings

    if config.image_size is not None:
        return config.image_size
    directory = Path(config.model_dir) if config.model_dir else get_settings().active_model_dir
    if config.model_dir or (directory / CONFIG_FILE).is_file():
        return read_config(directory)[0].image_size
    return 224


def count_macs(layers: Sequence["keras.layers.Layer"]) -> int:
    """Multiply-accumulates of one forward pass through the Conv2D and Dense ``layers``.

    Convolutions and the dense head are all but every FLOP of ResNet-50;
    batch normalisation, additions and activations are left out.
    """
    import keras

    total = 0
    for layer in layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, channels_out = layer.output.shape
            kernel_h, kernel_w = layer.kernel_size
            total += height * width * kernel_h * kernel_w * layer.input.shape[-1] * channels_out
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return int(total)


def _letterboxed(jpegs: Sequence[bytes], size: int) -> np.ndarray:
    from fracture.io.images import load_image
    from fracture.inference.preprocess import letterbox

    return np.stack([letterbox(load_image(data), size)[0] for data in jpegs])


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
            walls.append(_timed(lambda: tf.linalg.matmul(a, b).numpy()))
            cpus.append(_cpu_seconds() - cpu_start)
        flop = 2 * size**3
        out[f"{name}_gflops"] = flop / min(walls) / 1e9
        # Per CPU-second: the same ceiling, but independent of other jobs' load.
        out[f"{name}_gflop_per_cpu_second"] = flop / min(cpus) / 1e9
    out.setdefault("bf16_gflops", None)
    out.setdefault("bf16_gflop_per_cpu_second", None)
    return out


# ---------------------------------------------------------------------------
# Naive baseline


def build_naive_model(image_size: int, weights: str) -> "keras.Model":
    """What a simple GUI builds: Keras's ResNet-50 + global pooling + a sigmoid unit."""
    import keras

    backbone = keras.applications.ResNet50(
        include_top=False, weights=weights, input_shape=(image_size, image_size, 3)
    )
    pooled = keras.layers.GlobalAveragePooling2D()(backbone.output)
    output = keras.layers.Dense(1, activation="sigmoid")(pooled)
    return keras.Model(backbone.input, output, name="naive_resnet50")


def naive_predict(model: "keras.Model", data: bytes, image_size: int) -> float:
    """One image the simple way: PIL decode, stretch to the input size, ``model.predict``."""
    import keras
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB").resize((image_size, image_size))
    x = keras.applications.resnet50.preprocess_input(np.asarray(image, np.float32))
    return float(model.predict(x[None], verbose=0)[0, 0])


# ---------------------------------------------------------------------------
# Serving: throughput, pipeline overlap, latency, RSS, bfloat16


def _single_request(predictor: "Predictor", data: bytes, with_cam: bool) -> None:
    """What the dashboard does for one upload: bytes to probability (and overlay)."""
    from fracture.inference.gradcam import overlay_heatmap

    result = predictor.predict([data], with_cam=with_cam)[0]
    if with_cam:
        overlay_heatmap(result.image, result.heatmap)


def _latencies(predictors: Sequence["Predictor"], jpegs: Sequence[bytes],
               repeats: int) -> list[dict[str, Any]]:
    """Per predictor, p50/p95 of bytes -> probability + Grad-CAM overlay and bytes -> probability.

    Requests alternate between the predictors and the two kinds, so a change
    in background load reaches every figure alike. CPU time per request is
    kept too: unlike wall time it hardly depends on other jobs.
    """
    timings = [{"cam": [], "prob": [], "cam_cpu": [], "prob_cpu": []} for _ in predictors]
    for predictor in predictors:  # warm: first executions allocate buffers
        _single_request(predictor, jpegs[0], with_cam=True)
        _single_request(predictor, jpegs[0], with_cam=False)
    for index in range(repeats):
        data = jpegs[index % len(jpegs)]
        for predictor, timing in zip(predictors, timings):
            for kind, with_cam in (("cam", True), ("prob", False)):
                cpu_start = _cpu_seconds()
                timing[kind].append(_timed(lambda: _single_request(predictor, data, with_cam)))
                timing[f"{kind}_cpu"].append(_cpu_seconds() - cpu_start)
    results = []
    for predictor, timing in zip(predictors, timings):
        cam_p50, cam_p95 = _percentiles_ms(timing["cam"])
        prob_p50, prob_p95 = _percentiles_ms(timing["prob"])
        results.append({
            "image_size": predictor.config.image_size,
            "precision": predictor.precision,
            "repeats": repeats,
            "prob_cam_p50_ms": cam_p50,
            "prob_cam_p95_ms": cam_p95,
            "prob_p50_ms": prob_p50,
            "prob_p95_ms": prob_p95,
            "prob_cam_cpu_p50_ms": _percentiles_ms(timing["cam_cpu"])[0],
        })
    return results


def _val_subset(config: BenchConfig) -> tuple[list[Any], int, str | None]:
    """Val records (a stratified, seeded subset when ``val_images`` is set), the split's size,
    or the reason there are none."""
    from fracture.data.layouts import load_dataset

    root = Path(config.val_root) if config.val_root else DEFAULT_VAL_ROOT
    if not root.is_dir():
        return [], 0, f"n/a: no validation data at {root}"
    records = load_dataset(root).split("val")
    total = len(records)
    if not records:
        return [], 0, f"n/a: {root} has no val split"
    limit = config.val_images
    if limit and limit < len(records):
        rng = np.random.default_rng(0)
        positives = [r for r in records if r.label == 1]
        negatives = [r for r in records if r.label == 0]
        n_pos = max(1, round(limit * len(positives) / len(records)))
        n_pos = min(n_pos, len(positives), limit - 1)
        chosen = [positives[i] for i in rng.choice(len(positives), n_pos, replace=False)]
        chosen += [negatives[i] for i in rng.choice(len(negatives), limit - n_pos, replace=False)]
        records = sorted(chosen, key=lambda r: str(r.path))
    return records, total, None


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
        "ood_flags_changed": int(sum(a.in_distribution != b.in_distribution
                                     for a, b, kept in zip(first, second, ok) if kept)),
    }


def measure_serving(config: BenchConfig) -> dict[str, Any]:
    """Everything measured in the serving process, as raw timings (see :func:`summarise`)."""
    from fracture.inference.engine import bfloat16_supported, configure_threads

    threads = configure_threads()
    from fracture.inference.predictor import Predictor

    started = time.perf_counter()
    lap = _Laps()
    weights = _resolve_weights(config)
    loaded, model_info = _bench_model(config, weights)
    size = loaded.config.image_size
    lap("load model")
    jpegs = make_radiograph_jpegs(config.images)

    def dashboard_pair(precision: str) -> tuple[Predictor, Predictor]:
        # The dashboard's two predictors on one model: batch-1 for the image on
        # screen, the configured batch for folders; both warm and used.
        batch = Predictor(loaded=loaded, batch_size=config.batch_size, precision=precision)
        single = Predictor(loaded=loaded, batch_size=1, precision=precision)
        batch.predict(jpegs)  # warm: the tf.data pipeline and the partial last batch
        for data in jpegs[:2]:
            _single_request(single, data, with_cam=True)
        return batch, single

    # The serving peak is that of the precision the dashboard serves (the model's
    # recommendation), taken before anything only the benchmark allocates.
    served = Predictor(loaded=loaded, batch_size=1, warmup=False).precision
    pairs = {served: dashboard_pair(served)}
    serving_rss = _peak_rss_mib()
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
    inputs = _letterboxed(jpegs, size)  # for timing the network without decoding
    engine = batch.engine
    chunks = [inputs[i : i + engine.batch_size] for i in range(0, len(inputs), engine.batch_size)]
    lap("comparison models")

    latency, *bf16_latency = _latencies(
        [single] + ([bf16_single] if bf16_single else []), jpegs, config.latency_repeats
    )
    lap("latency")

    # Every path in turn, each repeat: background load drifts hit all alike.
    runs: dict[str, list[float]] = {
        key: [] for key in ("project", "project_cpu", "network", "decode", "naive", "bf16")
    }
    for _ in range(config.repeats):
        cpu_start = _cpu_seconds()
        runs["project"].append(_timed(lambda: batch.predict(jpegs)))
        runs["project_cpu"].append(_cpu_seconds() - cpu_start)
        runs["network"].append(_timed(lambda: [engine.run(c, False) for c in chunks]))
        runs["decode"].append(_timed(lambda: _letterboxed(jpegs, size)))
        runs["naive"].append(_timed(lambda: [naive_predict(naive, data, size)
                                             for data in jpegs[: config.naive_images]]))
        if bf16_batch is not None:
            runs["bf16"].append(_timed(lambda: bf16_batch.predict(jpegs)))
    del naive, inputs, chunks
    lap("interleaved throughput")

    bf16: dict[str, Any] = {"supported": bf16_ok}
    if bf16_batch is not None:
        bf16["latency"] = bf16_latency[0]
        bf16["seconds"] = runs["bf16"]
        if model_info["kind"] == "trained":
            bf16["auroc"] = _auroc_check(batch, bf16_batch, config)
        else:
            bf16["auroc"] = {"check": "n/a",
                             "reason": "n/a: no trained model (ImageNet + random head)"}
    else:
        bf16["auroc"] = {"check": "n/a", "reason": "n/a: no native bfloat16 on this machine"}
    lap("bf16 AUROC check")

    gemm = measure_gemm()
    lap("GEMM ceiling")

    latency_224 = None
    if config.latency_at_224 and size != 224:
        from fracture.model.folder import LoadedModel, ModelConfig
        from fracture.model.network import build_classifier

        small = ModelConfig(image_size=224, name="imagenet-random-head")
        small_loaded = LoadedModel(build_classifier(small, weights), small, {}, None)
        predictors = [Predictor(loaded=small_loaded, batch_size=1, precision="float32")]
        if bf16_ok and not config.quick:
            predictors.append(Predictor(loaded=small_loaded, batch_size=1, precision="bfloat16"))
        latency_224, *rest = _latencies(predictors, jpegs, config.latency_repeats)
        if rest:
            latency_224["bf16"] = rest[0]
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
        "seconds": time.perf_counter() - started,
        "laps": lap.steps,
    }


# ---------------------------------------------------------------------------
# Training


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
    import keras

    from fracture.model.folder import ModelConfig
    from fracture.model.network import LOGIT_LAYER, build_classifier, set_trainable, split_at
    from fracture.training.config import TrainConfig
    from fracture.training.trainer import _compile

    started = time.perf_counter()
    lap = _Laps()
    size = _bench_image_size(config)
    train_config = TrainConfig(image_size=size, batch_size=config.train_batch_size)
    model = build_classifier(
        ModelConfig(image_size=size, fine_tune_from=train_config.fine_tune_from),
        _resolve_weights(config),
    )
    set_trainable(model, train_config.fine_tune_from)
    stem, tail = split_at(model, train_config.fine_tune_from)
    full = keras.Model(model.input, model.get_layer(LOGIT_LAYER).output, name="full")
    _compile(full, train_config.lr, train_config.weight_decay)
    _compile(tail, train_config.lr, train_config.weight_decay)

    # FLOP bound of the speed-up: a cached step is the tail's forward and backward
    # (backward ~ 2 x forward: input and weight gradients); an uncached step adds
    # the whole stem's forward pass. Compute-bound steps cannot beat this ratio.
    full_macs, tail_macs = count_macs(model.layers), count_macs(tail.layers)
    flop_bound = (full_macs + 2 * tail_macs) / (3 * tail_macs)

    batch = train_config.batch_size
    images = _letterboxed(make_radiograph_jpegs(batch, seed=1), size)
    labels = (np.arange(batch) % 2).astype(np.float32)
    weights = np.ones(batch, np.float32)
    features = stem.predict(images, batch_size=batch, verbose=0).astype(np.float16)
    lap("build, compile, features")

    def uncached() -> None:
        full.train_on_batch(images, labels, sample_weight=weights)

    def cached() -> None:
        tail.train_on_batch(features.astype(np.float32), labels, sample_weight=weights)

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
        "training_peak_rss_mib": _peak_rss_mib(),
        "seconds": time.perf_counter() - started,
        "laps": lap.steps,
    }


# ---------------------------------------------------------------------------
# Cold start and threading (one fresh process each)

# Run as ``python -c COLD_START_SCRIPT CONFIG_JSON``: nothing is imported before
# the first marker except what the interpreter itself loads.
COLD_START_SCRIPT = r"""
import time
WALL0, T0 = time.time(), time.perf_counter()
import json, sys
import tensorflow, keras  # noqa: F401 - the heavy part of a cold start
import fracture.inference.engine, fracture.model.folder, fracture.inference.predictor, fracture.model.imagenet  # noqa: F401
T_IMPORT = time.perf_counter()
from fracture.perf.bench import measure_cold_start
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
        weights = _resolve_weights(config)  # verifies the file's hash: part of loading weights
        t_resolved = time.perf_counter()
        loaded, model_info = _bench_model(config, weights)
        t_built = time.perf_counter()
    finally:
        keras.Model.load_weights, model_module.apply_stored_weights = original_load, original_apply
    weights_s = (t_resolved - t_start) + spent["weights"]
    build_s = (t_built - t_resolved) - spent["weights"]

    jpegs = make_radiograph_jpegs(max(config.sweep_images, 1), seed=2)
    t_engine = time.perf_counter()
    single = Predictor(loaded=loaded, batch_size=1)  # warms up (traces) both paths, as served
    t_warm = time.perf_counter()
    first = single.predict([jpegs[0]], with_cam=True)[0]
    overlay_heatmap(first.image, first.heatmap)
    t_first = time.perf_counter()

    # Whole-pipeline throughput under this process's thread settings.
    # A batch no larger than the image count: padding would time images that do not exist.
    batch_size = min(config.batch_size or single.settings.batch_size, len(jpegs))
    batch = Predictor(loaded=loaded, batch_size=batch_size, warmup=False)
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
        "peak_rss_mib": _peak_rss_mib(),
    }


# ---------------------------------------------------------------------------
# Children


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def _run_child(args: list[str], description: str, extra_env: dict[str, str] | None = None
               ) -> tuple[dict[str, Any], float]:
    """Run ``python ARGS``; return the JSON it printed after RESULT_MARKER and its spawn time."""
    spawned = time.time()
    process = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=_child_env(extra_env),
        cwd=PROJECT_ROOT, timeout=CHILD_TIMEOUT_S,
    )
    lines = [ln for ln in process.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if process.returncode != 0 or not lines:
        tail = "\n".join((process.stderr or process.stdout).strip().splitlines()[-15:])
        raise BenchError(f"the {description} step failed (exit {process.returncode}):\n{tail}")
    return json.loads(lines[-1][len(RESULT_MARKER):]), spawned


def _section_in_child(section: str, config: BenchConfig) -> dict[str, Any]:
    result, _ = _run_child(
        ["-m", "fracture.perf.bench", "--child", section, "--config", json.dumps(config.to_json())],
        section,
    )
    return result


def _cold_starts(config: BenchConfig) -> list[dict[str, Any]]:
    """One fresh process per thread setting (and repeat), alternating settings."""
    runs = []
    for _ in range(max(config.cold_start_repeats, 1)):
        for intra, inter in config.thread_settings:
            env = {"FRACTURE_INTER_OP_THREADS": str(inter)}
            if intra:
                env["FRACTURE_INTRA_OP_THREADS"] = str(intra)
            result, spawned = _run_child(
                ["-c", COLD_START_SCRIPT, json.dumps(config.to_json())], "cold start", env
            )
            result["interpreter_s"] = max(0.0, result.pop("wall_start") - spawned)
            result["total_s"] = result["interpreter_s"] + result["to_first_prediction_s"]
            result["requested"] = {"intra_op": intra, "inter_op": inter}
            runs.append(result)
    return runs


# ---------------------------------------------------------------------------
# Orchestration and summary


def run_bench(config: BenchConfig, *, isolate: bool = True,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every measurement and return the summary (see :func:`summarise`).

    ``isolate`` runs serving and training in child processes (true peak RSS
    per job); ``False`` runs them here, for tests. Cold starts always run in
    fresh processes: that is what they measure.
    """
    say = progress or (lambda message: None)
    machine = describe_machine()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    say("serving: batch throughput vs naive, latency, bfloat16")
    serving = _section_in_child("serving", config) if isolate else measure_serving(config)
    timings["serving"] = time.perf_counter() - start
    say("cold start and threading")
    mark = time.perf_counter()
    cold = _cold_starts(config) if config.thread_settings else []
    timings["cold_start"] = time.perf_counter() - mark
    say("training: with and without the feature cache")
    mark = time.perf_counter()
    training = _section_in_child("training", config) if isolate else measure_training(config)
    timings["training"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - start
    # CPU time of the children: with the machine to itself the run would take
    # about this divided by the cores, which tells a loaded run's idle duration.
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    timings["children_cpu_seconds"] = children.ru_utime + children.ru_stime
    if hasattr(os, "getloadavg"):
        machine["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    return summarise(config, machine, serving, cold, training, timings, isolated=isolate)


def summarise(config: BenchConfig, machine: dict[str, Any], serving: dict[str, Any],
              cold: list[dict[str, Any]], training: dict[str, Any], timings: dict[str, float],
              *, isolated: bool = True) -> dict[str, Any]:
    """Turn raw measurements into figures: every ratio here comes from the measurements given."""
    from fracture.inference.engine import MAX_INTER_OP_THREADS

    size = serving["model"]["image_size"]
    project_ips = serving["images"] / _median(serving["project_seconds"])
    naive_ips = serving["naive_images"] / _median(serving["naive_seconds"])
    pipeline = serving["pipeline"]
    pipelined_s = _median(serving["project_seconds"])
    decode_s = _median(pipeline["decode_seconds"])
    network_s = _median(pipeline["inference_seconds"])
    sequential = decode_s + network_s
    throughput = {
        "image_size": size,
        "batch_size": serving["batch_size"],
        "images": serving["images"],
        "naive_images": serving["naive_images"],
        "repeats": len(serving["project_seconds"]),
        "project_ips": project_ips,
        "naive_ips": naive_ips,
        "throughput_ratio": project_ips / naive_ips,
        "paired_ratio": _paired_ratio(serving["project_seconds"], serving["images"],
                                      serving["naive_seconds"], serving["naive_images"]),
        "pipeline": {
            "decode_s": decode_s,
            "inference_s": network_s,
            "pipelined_s": pipelined_s,
            "sequential_s": sequential,
            # Share of the decoding time that the overlap hid behind inference
            # (above 1: tf.data also decoded in parallel; below 0: it cost more).
            "decode_hidden_fraction": (sequential - pipelined_s) / decode_s,
        },
    }

    bf16_raw = serving["bf16"]
    bf16: dict[str, Any] = {"supported": bf16_raw["supported"], **bf16_raw["auroc"]}
    if bf16_raw.get("seconds"):
        bf16_ips = serving["images"] / _median(bf16_raw["seconds"])
        bf16["fp32_ips"] = project_ips
        bf16["bf16_ips"] = bf16_ips
        bf16["speedup"] = bf16_ips / project_ips
        bf16["paired_speedup"] = _paired_ratio(bf16_raw["seconds"], serving["images"],
                                               serving["project_seconds"], serving["images"])
        bf16["load_stable"] = _agrees(bf16["speedup"], bf16["paired_speedup"])
        bf16["throughput_ratio_vs_naive"] = bf16_ips / naive_ips
        bf16["latency"] = bf16_raw.get("latency")
    else:
        bf16["speedup"] = None
    # When the load changed mid-run the back-to-back pairs are the fairer speed-up.
    speedup = bf16.get("paired_speedup") if bf16.get("load_stable") is False else bf16["speedup"]
    bf16["recommended"] = bool(bf16.get("check") == "PASS" and (speedup or 0) >= BF16_MIN_SPEEDUP)

    peak = peak_gflops(machine)
    gflop = flops_per_image(size) / 1e9
    inference_ips = serving["images"] / network_s
    # Work per CPU-second does not depend on how much of the CPU other jobs took:
    # it compares the kernels with one core's peak even on a busy machine.
    cpu_per_image = _median(serving["project_cpu_seconds"]) / serving["images"]
    per_core_peak = peak["fp32"] / machine["cores"] if peak["fp32"] else None
    efficiency = {
        "gflop_per_image": gflop,
        "predict_path_gflops": project_ips * gflop,
        "network_only_gflops": inference_ips * gflop,
        "peak_fp32_gflops": peak["fp32"],
        "peak_bf16_gflops": peak["bf16"],
        "predict_path_fraction_of_peak": _ratio(project_ips * gflop, peak["fp32"]),
        "network_only_fraction_of_peak": _ratio(inference_ips * gflop, peak["fp32"]),
        "bf16_gflops": bf16.get("bf16_ips", 0) * gflop if bf16.get("bf16_ips") else None,
        "cpu_seconds_per_image": cpu_per_image,
        "gflop_per_cpu_second": gflop / cpu_per_image if cpu_per_image > 0 else None,
        "per_core_peak_fp32_gflops": per_core_peak,
        "fraction_of_per_core_peak": (gflop / cpu_per_image / per_core_peak)
        if per_core_peak and cpu_per_image > 0 else None,
        "gemm_fp32_gflop_per_cpu_second": serving["gemm"]["fp32_gflop_per_cpu_second"],
        # Load-independent efficiency: the predict path's work per CPU-second
        # against the best a large matrix product does per CPU-second.
        "fraction_of_gemm_per_cpu_second": _ratio(
            gflop / cpu_per_image, serving["gemm"]["fp32_gflop_per_cpu_second"]),
        "measured_gemm_fp32_gflops": serving["gemm"]["fp32_gflops"],
        "measured_gemm_bf16_gflops": serving["gemm"]["bf16_gflops"],
        "predict_path_fraction_of_gemm": project_ips * gflop / serving["gemm"]["fp32_gflops"],
        # The clock the GEMM needs at least, had it reached 100 % of the formula's peak.
        "implied_min_ghz": (serving["gemm"]["fp32_gflops"] / peak["fp32"] * machine["mhz"] / 1000)
        if peak["fp32"] and machine.get("mhz") else None,
        "peak_formula": peak["formula"],
        "peak_how": peak["how"],
        "bf16_peak_how": peak.get("bf16_how"),
        "clock_source": machine.get("mhz_source"),
    }

    sweep = []
    for run in cold:
        sweep.append({
            "intra_op": run["threads"]["intra_op"],
            "inter_op": run["threads"]["inter_op"],
            "ips": run["sweep_images"] / _median(run["sweep_seconds"]),
            "cpu_seconds_per_image": _median(run["sweep_cpu_seconds"]) / run["sweep_images"],
        })
    # The project's default: configure_threads() with no overrides, on this machine's CPUs.
    default_inter = min(MAX_INTER_OP_THREADS, machine.get("cores") or 1)
    chosen = [r for r in cold if r["threads"]["inter_op"] == default_inter] or cold
    cold_start = None
    if chosen:
        keys = ("interpreter_s", "import_s", "build_s", "weights_s", "warmup_s", "first_predict_s",
                "total_s")
        cold_start = {key: _median([r[key] for r in chosen]) for key in keys}
        cold_start["runs"] = len(chosen)
        cold_start["threads"] = chosen[0]["threads"]

    train_ips_uncached = training["batch_size"] / _median(training["uncached_seconds"])
    train_ips_cached = training["batch_size"] / _median(training["cached_seconds"])
    train = {
        "image_size": training["image_size"],
        "batch_size": training["batch_size"],
        "fine_tune_from": training["fine_tune_from"],
        "steps": training["steps"],
        "uncached_ips": train_ips_uncached,
        "cached_ips": train_ips_cached,
        "cache_speedup": train_ips_cached / train_ips_uncached,
        "paired_speedup": _paired_ratio(training["cached_seconds"], training["batch_size"],
                                        training["uncached_seconds"], training["batch_size"]),
        "flop_bound_speedup": training["flop_bound_speedup"],
        "forward_gmacs_per_image": training["forward_gmacs_per_image"],
        "tail_forward_gmacs_per_image": training["tail_forward_gmacs_per_image"],
        "feature_bytes_per_image_view": training["feature_bytes_per_image_view"],
    }
    memory = {
        "serving_peak_rss_mib": serving["serving_peak_rss_mib"],
        "serving_precision": serving.get("serving_precision", "float32"),
        "training_peak_rss_mib": training["training_peak_rss_mib"],
        "isolated": isolated,
    }
    result = {
        "schema": 1,
        "quick": config.quick,
        "config": config.to_json(),
        "machine": machine,
        "model": serving["model"],
        "threads": serving["threads"],
        "throughput": throughput,
        "latency": serving["latency"],
        "latency_224": serving["latency_224"],
        "cold_start": cold_start,
        "training": train,
        "memory": memory,
        "efficiency": efficiency,
        "bf16": bf16,
        "threading": {"default_inter_op": default_inter, "sweep": sweep},
        "section_seconds": timings,
        "section_laps": {"serving": serving.get("laps"), "training": training.get("laps")},
        "raw": {
            "project_seconds": serving["project_seconds"],
            "project_cpu_seconds": serving["project_cpu_seconds"],
            "naive_seconds": serving["naive_seconds"],
            "bf16_seconds": bf16_raw.get("seconds"),
            "network_seconds": pipeline["inference_seconds"],
            "decode_seconds": pipeline["decode_seconds"],
            "uncached_step_seconds": training["uncached_seconds"],
            "cached_step_seconds": training["cached_seconds"],
        },
    }
    throughput["load_stable"] = _agrees(throughput["throughput_ratio"], throughput["paired_ratio"])
    train["load_stable"] = _agrees(train["cache_speedup"], train["paired_speedup"])
    result["targets"] = evaluate_targets(result)
    return result


def _paired_ratio(first_s: Sequence[float], first_n: int, second_s: Sequence[float],
                  second_n: int) -> float | None:
    """Median over repeats of (first img/s) / (second img/s), each pair timed back to back.

    A cross-check of the ratio of medians: if the background load changed
    during the run, the medians may come from different load, the pairs do not.
    """
    pairs = [(first_n / a) / (second_n / b) for a, b in zip(first_s, second_s) if a > 0 and b > 0]
    return _median(pairs) if pairs else None


def _agrees(ratio: float | None, paired: float | None, tolerance: float = 0.15) -> bool | None:
    if ratio is None or paired is None:
        return None
    return abs(paired / ratio - 1) <= tolerance


def _ratio(numerator: float, denominator: float | None) -> float | None:
    return numerator / denominator if denominator else None


def _check(op: str, value: float | None, target: float) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value >= target if op == ">=" else value <= target


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: the figure it applies to, met (True/False) or None when not measured."""
    cold = result.get("cold_start") or {}
    bf16 = result["bf16"]
    values: list[tuple[str, str, float | None]] = [
        ("throughput_ratio", "batch throughput, project / naive",
         result["throughput"]["throughput_ratio"]),
        ("latency_prob_cam_p50_ms",
         f"prob + Grad-CAM p50 at {result['latency']['image_size']} px", 
         result["latency"]["prob_cam_p50_ms"]),
    ]
    if result.get("latency_224"):
        values.append(("latency_prob_cam_p50_ms", "prob + Grad-CAM p50 at 224 px",
                       result["latency_224"]["prob_cam_p50_ms"]))
    values += [
        ("cold_start_s", "cold start to first prediction", cold.get("total_s")),
        ("serving_peak_rss_mb", "serving peak RSS", result["memory"]["serving_peak_rss_mib"]),
        ("cache_speedup", "fine-tuning speed-up from the feature cache",
         result["training"]["cache_speedup"]),
        ("bf16_abs_delta_auroc", "bfloat16 |delta AUROC| vs float32",
         None if bf16.get("delta_auroc") is None else abs(bf16["delta_auroc"])),
    ]
    rows = []
    for key, figure, value in values:
        op, target, unit = TARGETS[key]
        met = _check(op, value, target)
        rows.append({
            "id": key, "figure": figure, "value": value, "op": op, "target": target, "unit": unit,
            "met": met, "status": "n/a" if met is None else ("met" if met else "missed"),
        })
    return rows


# ---------------------------------------------------------------------------
# Report


def _unstable(figures: dict[str, Any], paired_key: str) -> str:
    """A warning when the paired ratio disagrees: the load changed during the run."""
    if figures.get("load_stable") is False:
        return f" [load changed during the run; paired repeats give {figures[paired_key]:.2f}x]"
    return ""


def _latency_cell(latency: dict[str, Any]) -> str:
    cpu = latency.get("prob_cam_cpu_p50_ms")
    return (f"{latency['prob_cam_p50_ms']:.0f} / {latency['prob_cam_p95_ms']:.0f} ms"
            + (f" (CPU {cpu:.0f} ms)" if cpu is not None else ""))


def _pct(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.0f}%"


def _fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


def format_table(result: dict[str, Any], markdown: bool = False) -> str:
    """The figures as a table: figure, value, target, status."""
    t, lat, cold = result["throughput"], result["latency"], result["cold_start"] or {}
    tr, mem, eff, bf = result["training"], result["memory"], result["efficiency"], result["bf16"]
    status = {row["figure"]: row for row in result["targets"]}

    def target_cells(figure: str) -> tuple[str, str]:
        row = status[figure]
        unit = row["unit"]
        value = f"{row['target']:g}" if unit in ("", "x") else f"{row['target']:g} {unit}"
        return f"{row['op']} {value}{'x' if unit == 'x' else ''}", row["status"]

    size = t["image_size"]
    rows: list[tuple[str, str, str, str]] = [
        (f"Batch throughput, project predict ({size} px, batch {t['batch_size']})",
         f"{t['project_ips']:.2f} img/s", "", ""),
        ("Batch throughput, naive Keras model.predict per image",
         f"{t['naive_ips']:.2f} img/s", "", ""),
        ("Throughput ratio project / naive",
         f"{t['throughput_ratio']:.2f}x" + _unstable(t, "paired_ratio"),
         *target_cells("batch throughput, project / naive")),
        ("  decode / inference / pipelined (s)",
         f"{t['pipeline']['decode_s']:.2f} / {t['pipeline']['inference_s']:.2f} / "
         f"{t['pipeline']['pipelined_s']:.2f}",
         "", f"{100 * t['pipeline']['decode_hidden_fraction']:.0f}% of decode hidden"),
        (f"Single image prob + Grad-CAM overlay, p50 / p95 ({lat['image_size']} px)",
         _latency_cell(lat),
         *target_cells(f"prob + Grad-CAM p50 at {lat['image_size']} px")),
        (f"Single image prob only, p50 / p95 ({lat['image_size']} px)",
         f"{lat['prob_p50_ms']:.0f} / {lat['prob_p95_ms']:.0f} ms", "", ""),
    ]
    if result.get("latency_224"):
        l224 = result["latency_224"]
        rows.append(("Single image prob + Grad-CAM overlay, p50 / p95 (224 px)",
                     _latency_cell(l224),
                     *target_cells("prob + Grad-CAM p50 at 224 px")))
        if l224.get("bf16"):
            rows.append(("  same in bfloat16 (224 px)", _latency_cell(l224["bf16"]), "<= 150 ms",
                         "met" if l224["bf16"]["prob_cam_p50_ms"] <= 150 else "missed"))
    rows += [
        ("Cold start to first prediction (fresh process)", _fmt(cold.get("total_s"), 1, " s"),
         *target_cells("cold start to first prediction")),
        ("  interpreter / import / build / weights / warm-up / first predict",
         " / ".join(_fmt(cold.get(k), 2) for k in ("interpreter_s", "import_s", "build_s",
                                                   "weights_s", "warmup_s", "first_predict_s"))
         + " s", "", ""),
        (f"Serving peak RSS (batch + batch-1 predictors, {mem['serving_precision']})",
         f"{mem['serving_peak_rss_mib']:.0f} MiB",
         *target_cells("serving peak RSS")),
        (f"Training peak RSS (bench steps, batch {tr['batch_size']})",
         f"{mem['training_peak_rss_mib']:.0f} MiB", "", ""),
        (f"Fine-tuning without cache ({tr['image_size']} px, from {tr['fine_tune_from']})",
         f"{tr['uncached_ips']:.2f} img/s", "", ""),
        ("Fine-tuning with feature cache", f"{tr['cached_ips']:.1f} img/s", "", ""),
        ("Feature-cache speed-up", f"{tr['cache_speedup']:.1f}x{_unstable(tr, 'paired_speedup')} "
         f"(FLOP bound at this freeze point {tr['flop_bound_speedup']:.1f}x)",
         *target_cells("fine-tuning speed-up from the feature cache")),
        ("Predict path GFLOP/s / fp32 peak",
         f"{eff['predict_path_gflops']:.1f} / {_fmt(eff['peak_fp32_gflops'])} "
         f"({_pct(eff['predict_path_fraction_of_peak'])})",
         "", ""),
        ("Predict path GFLOP per CPU-second / per-core peak / GEMM per CPU-second",
         f"{_fmt(eff['gflop_per_cpu_second'])} / {_fmt(eff['per_core_peak_fp32_gflops'])} "
         f"({_pct(eff['fraction_of_per_core_peak'])}) / "
         f"{_fmt(eff['gemm_fp32_gflop_per_cpu_second'])} "
         f"({_pct(eff['fraction_of_gemm_per_cpu_second'])})", "", "load-independent"),
        ("Predict path GFLOP/s / measured fp32 GEMM GFLOP/s",
         f"{eff['predict_path_gflops']:.1f} / {eff['measured_gemm_fp32_gflops']:.1f} "
         f"({100 * eff['predict_path_fraction_of_gemm']:.0f}%; GEMM implies >= "
         f"{_fmt(eff['implied_min_ghz'], 2)} GHz)", "", ""),
        ("Network only GFLOP/s (no decode)",
         f"{eff['network_only_gflops']:.1f} "
         f"({_pct(eff['network_only_fraction_of_peak'])})",
         "", ""),
    ]
    if bf["supported"] and bf.get("speedup"):
        rows += [
            ("bfloat16 predict speed-up vs float32",
             f"{bf['speedup']:.2f}x{_unstable(bf, 'paired_speedup')} "
             f"({bf['bf16_ips']:.2f} img/s, {bf['bf16_ips'] * eff['gflop_per_image']:.1f} GFLOP/s "
             f"of {_fmt(eff['peak_bf16_gflops'])} bf16 peak)", "", ""),
            ("bfloat16 throughput ratio vs naive", f"{bf['throughput_ratio_vs_naive']:.2f}x",
             ">= 5x", "met" if bf["throughput_ratio_vs_naive"] >= 5 else "missed"),
        ]
        if bf.get("latency"):
            rows.append((f"bfloat16 prob + Grad-CAM p50 / p95 ({bf['latency']['image_size']} px)",
                         _latency_cell(bf["latency"]), "<= 150 ms",
                         "met" if bf["latency"]["prob_cam_p50_ms"] <= 150 else "missed"))
    if bf.get("check") in ("PASS", "FAIL"):
        subset = f"{bf['val_images']} val images" + (" (quick subset)" if result["quick"] else "")
        rows.append((f"bfloat16 AUROC vs float32 ({subset})",
                     f"{bf['auroc_bf16']:.4f} vs {bf['auroc_fp32']:.4f} "
                     f"(delta {bf['delta_auroc']:+.4f})", "|delta| <= 0.005", bf["check"]))
        rows.append(("  labels / OOD flags changed by bfloat16",
                     f"{bf.get('decisions_changed', 'n/a')} / {bf.get('ood_flags_changed', 'n/a')}"
                     f" of {bf['val_images']}", "", ""))
    else:
        rows.append(("bfloat16 AUROC vs float32", bf.get("reason") or "n/a",
                     "|delta| <= 0.005", "n/a"))
    rows.append(("bfloat16 recommended", "yes" if bf["recommended"] else "no", "", ""))
    for entry in result["threading"]["sweep"]:
        chosen = entry["inter_op"] == result["threading"]["default_inter_op"]
        rows.append((f"Threads intra {entry['intra_op']} / inter {entry['inter_op']}"
                     + (" (default)" if chosen else ""),
                     f"{entry['ips']:.2f} img/s, {entry['cpu_seconds_per_image']:.2f} CPU s/img",
                     "", ""))

    header = ("Figure", "Value", "Target", "Status")
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
                  for row in rows]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    return "\n".join(lines)


def format_machine(machine: dict[str, Any]) -> str:
    """One paragraph describing the machine and the load it carried."""
    versions = machine["versions"]
    tf_version = versions.get("tensorflow-cpu") or versions.get("tensorflow", "?")
    pressure = machine.get("cpu_pressure_some_avg60")
    return (
        f"{machine['cpu_model']} ({machine['microarchitecture']}, family {machine['cpu_family']} "
        f"model {machine['cpu_model_number']}), {machine['cores']} cores usable, "
        f"{machine['threads_per_core'] or '?'} thread(s) per core, "
        f"{_fmt(machine['mhz'], 0)} MHz ({machine['mhz_source']}); "
        f"flags {' '.join(machine['simd_flags'])}; RAM {machine['ram_gib']} GiB; "
        f"Python {machine['python']}, TensorFlow {tf_version}, Keras {versions.get('keras', '?')}, "
        f"oneDNN {versions['onednn']}. Load average at start {machine['load_average_1m']}"
        + (f", CPU pressure {pressure:.0f}% (some, 60 s)" if pressure is not None else "")
        + "."
    )


# ---------------------------------------------------------------------------
# Command line


def apply_precision_verdict(model_dir: str | os.PathLike[str], bf16: dict[str, Any]) -> str:
    """Record the benchmark's bfloat16 verdict in a model folder; returns the precision now served.

    bfloat16 becomes the model's default only when the run recommended it
    (within 0.005 AUROC of float32 on val, and faster); otherwise float32.
    The evidence goes into the model card beside it.
    """
    import dataclasses

    from fracture.model.card import rewrite_model_config
    from fracture.model.folder import read_config

    config, card = read_config(model_dir)
    precision = "bfloat16" if bf16.get("recommended") else None
    evidence = {key: bf16.get(key) for key in
                ("check", "auroc_fp32", "auroc_bf16", "delta_auroc", "val_images",
                 "decisions_changed", "ood_flags_changed", "speedup")}
    rewrite_model_config(model_dir, dataclasses.replace(config, inference_precision=precision),
                         card, inference_precision=precision or "float32",
                         inference_precision_evidence=evidence)
    return precision or "float32"


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench`` to the ``python -m fracture`` subcommands."""
    parser = subparsers.add_parser(
        "bench", help="measure throughput, latency, cold start, memory and training speed"
    )
    _add_arguments(parser)
    parser.set_defaults(func=cmd_bench)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats and a 120-image val subset (under 3 minutes idle)")
    parser.add_argument("--json", help="write every figure and raw timing here")
    parser.add_argument("--markdown", help="write the table as Markdown here")
    parser.add_argument("--model", help="trained model folder (default: the active model if any)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="benchmark ImageNet ResNet-50 with a random head at this size "
                             "instead of a trained model (same speed)")
    parser.add_argument("--val-root", default=None,
                        help=f"dataset for the bfloat16 AUROC check (default {DEFAULT_VAL_ROOT})")
    parser.add_argument("--apply", action="store_true",
                        help="record the bfloat16 verdict in the trained model's config, so "
                             "predictions use bfloat16 by default only where it passed (full run)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    if args.model and args.image_size:
        raise BenchError(
            "--image-size builds an untrained model; it cannot be combined with --model"
        )
    if getattr(args, "apply", False) and (args.quick or args.image_size):
        raise BenchError("--apply needs a full run on a trained model: the bfloat16 check must "
                         "cover the whole val split")
    changes = {"model_dir": args.model, "image_size": args.image_size, "val_root": args.val_root}
    return BenchConfig.quick_config(**changes) if args.quick else BenchConfig.full(**changes)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table, optionally write JSON and Markdown."""
    from fracture.io.files import atomic_write_json, atomic_write_text

    try:
        config = config_from_args(args)
        result = run_bench(
            config, progress=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True)
        )
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    model = result["model"]
    print(f"Model: {model['name']} ({model['kind']}, {model['image_size']} px)"
          + ("  [--quick]" if config.quick else ""))
    print(format_machine(result["machine"]))
    print()
    print(format_table(result))
    seconds = result["section_seconds"]
    cores = result["machine"]["cores"] or 1
    print(f"\nbf16 recommended: {'yes' if result['bf16']['recommended'] else 'no'}; run took "
          f"{seconds['total']:.0f} s, {seconds.get('children_cpu_seconds', 0):.0f} CPU-s "
          f"(about {seconds.get('children_cpu_seconds', 0) / cores:.0f} s on an idle machine)")
    if args.json:
        atomic_write_json(args.json, result)
        print(f"JSON written to {args.json}", file=sys.stderr)
    if args.apply:
        if model["kind"] != "trained":
            print("error: --apply: no trained model was benchmarked", file=sys.stderr)
            return 2
        precision = apply_precision_verdict(model["directory"], result["bf16"])
        print(f"{model['directory']}: serves {precision} by default from now on", file=sys.stderr)
    if args.markdown:
        atomic_write_text(args.markdown, format_machine(result["machine"]) + "\n\n"
                          + format_table(result, markdown=True) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fracture.perf.bench``: as ``python -m fracture bench``, plus the child entry."""
    parser = argparse.ArgumentParser(prog="python -m fracture.perf.bench")
    _add_arguments(parser)
    parser.add_argument("--child", choices=["serving", "training"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.child:
        config = BenchConfig.from_json(json.loads(args.config))
        measure = measure_serving if args.child == "serving" else measure_training
        print(RESULT_MARKER + json.dumps(measure(config)), flush=True)
        return 0
    return cmd_bench(args)


if __name__ == "__main__":
    raise SystemExit(main())
