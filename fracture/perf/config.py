"""Configurable parameters of the benchmark (the reason for each default beside it) and :class:`BenchConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

__all__ = [
    "RADIOGRAPH_SHAPE",
    "JPEG_QUALITY",
    "RESNET50_GMACS_AT_224",
    "BF16_MAX_AUROC_DELTA",
    "BF16_MIN_SPEEDUP",
    "ONNX_MAX_AUROC_DELTA",
    "HEATMAP_MIN_CORRELATION",
    "HEATMAP_MIN_PEAK_AGREEMENT",
    "DEFAULT_VAL_ROOT",
    "RESULT_MARKER",
    "CHILD_TIMEOUT_S",
    "PROJECT_ROOT",
    "BenchConfig",
]


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


# ONNX Runtime replaces the served TensorFlow path only if it keeps val AUROC
# within this of TensorFlow float32 (the bound the issue sets, as for bfloat16) ...
ONNX_MAX_AUROC_DELTA = 0.005


# ... and the heat map: the median per-image Pearson correlation of its grid
# with TensorFlow float32's (at 0.95 the map explains about 90 % of the float32
# map's variance, so the same regions light up) ...
HEATMAP_MIN_CORRELATION = 0.95
# ... and the strongest cell, where the page draws its box, within one cell of
# float32's in this share of images. A median correlation alone hid, in the first
# full run, an int8 model whose box moved in 16 % of the val images.
HEATMAP_MIN_PEAK_AGREEMENT = 0.95


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
    onnx: bool = (
        True  # ONNX Runtime float32 and int8 beside TensorFlow (skipped when not installed)
    )
    # TRAIN radiographs whose activations calibrate the int8 ranges; min-max ranges
    # settle within a few dozen images, and each costs a forward pass holding every tensor.
    calibration_images: int = 64

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
            quick=True,
            images=16,
            naive_images=6,
            repeats=3,
            latency_repeats=8,
            train_batch_size=8,
            train_steps=2,
            val_images=120,
            sweep_images=8,
            sweep_repeats=1,
            cold_start_repeats=1,
            calibration_images=32,
            latency_at_224=True,
        )
        return dataclasses.replace(quick, **changes)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "BenchConfig":
        data = dict(data)
        data["thread_settings"] = tuple(tuple(pair) for pair in data.get("thread_settings", ()))
        return cls(**data)
