"""Summarise a benchmark run: every ratio, target and verdict, from the measurements given.

:func:`summarise` turns the raw seconds, memory and machine facts that
:mod:`fracture.perf.bench` measured into the result JSON (one part per section of
the report), and :func:`evaluate_targets` judges it against
:data:`fracture.perf.config.TARGETS`. :mod:`fracture.perf.report` prints it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from fracture.perf.config import (
    BF16_MIN_SPEEDUP,
    TARGETS,
    BenchConfig,
)
from fracture.perf.machine import flops_per_image, peak_gflops
from fracture.perf.measure import median

__all__ = ["summarise", "evaluate_targets"]


def summarise(
    config: BenchConfig,
    machine: dict[str, Any],
    serving: dict[str, Any],
    cold: list[dict[str, Any]],
    training: dict[str, Any],
    timings: dict[str, float],
    *,
    isolated: bool = True,
) -> dict[str, Any]:
    """Turn raw measurements into figures: every ratio here comes from the measurements given.

    One part per section of the report: serving throughput, bfloat16, compute
    efficiency, cold start and the thread sweep, training; then the targets,
    judged on the whole result.
    """
    throughput = _throughput(serving)
    project_ips, naive_ips = throughput["project_ips"], throughput["naive_ips"]
    bf16 = _bf16_summary(serving, project_ips, naive_ips)
    threading = _threading_summary(cold, machine)
    train = _training_summary(training)
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
        "cold_start": _cold_start(cold, threading["default_inter_op"]),
        "training": train,
        "memory": {
            "serving_peak_rss_mib": serving["serving_peak_rss_mib"],
            "serving_precision": serving.get("serving_precision", "float32"),
            "training_peak_rss_mib": training["training_peak_rss_mib"],
            "isolated": isolated,
        },
        "efficiency": _efficiency(machine, serving, project_ips, bf16),
        "bf16": bf16,
        "onnx": _onnx_summary(serving, bf16, project_ips, naive_ips),
        "threading": threading,
        "section_seconds": timings,
        "section_laps": {"serving": serving.get("laps"), "training": training.get("laps")},
        "raw": _raw_timings(serving, training),
    }
    throughput["load_stable"] = _agrees(throughput["throughput_ratio"], throughput["paired_ratio"])
    train["load_stable"] = _agrees(train["cache_speedup"], train["paired_speedup"])
    result["targets"] = evaluate_targets(result)
    return result


def _throughput(serving: dict[str, Any]) -> dict[str, Any]:
    """The predict path against the naive loop, and how much decoding the pipeline hides."""
    project_ips = serving["images"] / median(serving["project_seconds"])
    naive_ips = serving["naive_images"] / median(serving["naive_seconds"])
    pipeline = serving["pipeline"]
    pipelined_s = median(serving["project_seconds"])
    decode_s = median(pipeline["decode_seconds"])
    network_s = median(pipeline["inference_seconds"])
    sequential = decode_s + network_s
    return {
        "image_size": serving["model"]["image_size"],
        "batch_size": serving["batch_size"],
        "images": serving["images"],
        "naive_images": serving["naive_images"],
        "repeats": len(serving["project_seconds"]),
        "project_ips": project_ips,
        "naive_ips": naive_ips,
        "throughput_ratio": project_ips / naive_ips,
        "paired_ratio": _paired_ratio(
            serving["project_seconds"],
            serving["images"],
            serving["naive_seconds"],
            serving["naive_images"],
        ),
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


def _bf16_summary(serving: dict[str, Any], project_ips: float, naive_ips: float) -> dict[str, Any]:
    """bfloat16 against float32: speed-up, its AUROC check, and whether to serve it."""
    bf16_raw = serving["bf16"]
    bf16: dict[str, Any] = {"supported": bf16_raw["supported"], **bf16_raw["auroc"]}
    if bf16_raw.get("seconds"):
        bf16_ips = serving["images"] / median(bf16_raw["seconds"])
        bf16["fp32_ips"] = project_ips
        bf16["bf16_ips"] = bf16_ips
        bf16["speedup"] = bf16_ips / project_ips
        bf16["paired_speedup"] = _paired_ratio(
            bf16_raw["seconds"], serving["images"], serving["project_seconds"], serving["images"]
        )
        bf16["load_stable"] = _agrees(bf16["speedup"], bf16["paired_speedup"])
        bf16["throughput_ratio_vs_naive"] = bf16_ips / naive_ips
        bf16["latency"] = bf16_raw.get("latency")
    else:
        bf16["speedup"] = None
    # When the load changed mid-run the back-to-back pairs are the fairer speed-up.
    speedup = bf16.get("paired_speedup") if bf16.get("load_stable") is False else bf16["speedup"]
    bf16["recommended"] = bool(bf16.get("check") == "PASS" and (speedup or 0) >= BF16_MIN_SPEEDUP)
    return bf16


def _efficiency(
    machine: dict[str, Any], serving: dict[str, Any], project_ips: float, bf16: dict[str, Any]
) -> dict[str, Any]:
    """The work done per second and per CPU-second, against the CPU's peak and a measured GEMM."""
    peak = peak_gflops(machine)
    gflop = flops_per_image(serving["model"]["image_size"]) / 1e9
    inference_ips = serving["images"] / median(serving["pipeline"]["inference_seconds"])
    # Work per CPU-second does not depend on how much of the CPU other jobs took:
    # it compares the kernels with one core's peak even on a busy machine.
    cpu_per_image = median(serving["project_cpu_seconds"]) / serving["images"]
    per_core_peak = peak["fp32"] / machine["cores"] if peak["fp32"] else None
    gemm = serving["gemm"]
    return {
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
        if per_core_peak and cpu_per_image > 0
        else None,
        "gemm_fp32_gflop_per_cpu_second": gemm["fp32_gflop_per_cpu_second"],
        # Load-independent efficiency: the predict path's work per CPU-second
        # against the best a large matrix product does per CPU-second.
        "fraction_of_gemm_per_cpu_second": _ratio(
            gflop / cpu_per_image, gemm["fp32_gflop_per_cpu_second"]
        ),
        "measured_gemm_fp32_gflops": gemm["fp32_gflops"],
        "measured_gemm_bf16_gflops": gemm["bf16_gflops"],
        "predict_path_fraction_of_gemm": project_ips * gflop / gemm["fp32_gflops"],
        # The clock the GEMM needs at least, had it reached 100 % of the formula's peak.
        "implied_min_ghz": (gemm["fp32_gflops"] / peak["fp32"] * machine["mhz"] / 1000)
        if peak["fp32"] and machine.get("mhz")
        else None,
        "peak_formula": peak["formula"],
        "peak_how": peak["how"],
        "bf16_peak_how": peak.get("bf16_how"),
        "clock_source": machine.get("mhz_source"),
    }


def _threading_summary(cold: list[dict[str, Any]], machine: dict[str, Any]) -> dict[str, Any]:
    """The thread sweep of the cold-start children, and the project's default inter-op count."""
    from fracture.inference.engine import MAX_INTER_OP_THREADS

    sweep = [
        {
            "intra_op": run["threads"]["intra_op"],
            "inter_op": run["threads"]["inter_op"],
            "ips": run["sweep_images"] / median(run["sweep_seconds"]),
            "cpu_seconds_per_image": median(run["sweep_cpu_seconds"]) / run["sweep_images"],
        }
        for run in cold
    ]
    # The project's default: configure_threads() with no overrides, on this machine's CPUs.
    default_inter = min(MAX_INTER_OP_THREADS, machine.get("cores") or 1)
    return {"default_inter_op": default_inter, "sweep": sweep}


_COLD_START_STEPS = (
    "interpreter_s",
    "import_s",
    "build_s",
    "weights_s",
    "warmup_s",
    "first_predict_s",
    "total_s",
)


def _cold_start(cold: list[dict[str, Any]], default_inter: int) -> dict[str, Any] | None:
    """Median time of each start-up step, over the runs with the default threads (else all)."""
    chosen = [r for r in cold if r["threads"]["inter_op"] == default_inter] or cold
    if not chosen:
        return None
    cold_start: dict[str, Any] = {
        key: median([r[key] for r in chosen]) for key in _COLD_START_STEPS
    }
    cold_start["runs"] = len(chosen)
    cold_start["threads"] = chosen[0]["threads"]
    return cold_start


def _training_summary(training: dict[str, Any]) -> dict[str, Any]:
    """Training steps per second with and without the feature cache, and the FLOP bound."""
    uncached_ips = training["batch_size"] / median(training["uncached_seconds"])
    cached_ips = training["batch_size"] / median(training["cached_seconds"])
    return {
        "image_size": training["image_size"],
        "batch_size": training["batch_size"],
        "fine_tune_from": training["fine_tune_from"],
        "steps": training["steps"],
        "uncached_ips": uncached_ips,
        "cached_ips": cached_ips,
        "cache_speedup": cached_ips / uncached_ips,
        "paired_speedup": _paired_ratio(
            training["cached_seconds"],
            training["batch_size"],
            training["uncached_seconds"],
            training["batch_size"],
        ),
        "flop_bound_speedup": training["flop_bound_speedup"],
        "forward_gmacs_per_image": training["forward_gmacs_per_image"],
        "tail_forward_gmacs_per_image": training["tail_forward_gmacs_per_image"],
        "feature_bytes_per_image_view": training["feature_bytes_per_image_view"],
    }


def _raw_timings(serving: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    """Every repeat's seconds as measured, for anyone who wants other statistics."""
    pipeline = serving["pipeline"]
    return {
        "project_seconds": serving["project_seconds"],
        "project_cpu_seconds": serving["project_cpu_seconds"],
        "naive_seconds": serving["naive_seconds"],
        "bf16_seconds": serving["bf16"].get("seconds"),
        "network_seconds": pipeline["inference_seconds"],
        "decode_seconds": pipeline["decode_seconds"],
        "uncached_step_seconds": training["uncached_seconds"],
        "cached_step_seconds": training["cached_seconds"],
    }


def _onnx_summary(
    serving: dict[str, Any], bf16: dict[str, Any], fp32_ips: float, naive_ips: float
) -> dict[str, Any]:
    """ONNX Runtime float32 and int8 against the TensorFlow path the dashboard serves.

    A variant is worth adopting for the dashboard only if it keeps the val
    AUROC within ONNX_MAX_AUROC_DELTA of TensorFlow float32 and the heat map
    (median correlation >= HEATMAP_MIN_CORRELATION, strongest cell kept in
    HEATMAP_MIN_PEAK_AGREEMENT of the images), and wins on latency,
    throughput or memory. Memory means a serving process that never imports
    TensorFlow; the dashboard itself imports TensorFlow for other pages.
    """
    raw = serving.get("onnx") or {"available": False, "reason": "not measured"}
    if not raw.get("available"):
        return {"available": False, "reason": raw.get("reason")}
    served = serving.get("serving_precision", "float32")
    on_bf16 = served == "bfloat16" and bf16.get("bf16_ips")
    served_ips = bf16["bf16_ips"] if on_bf16 else fp32_ips
    served_latency = bf16["latency"] if on_bf16 and bf16.get("latency") else serving["latency"]
    served_rss = serving["serving_peak_rss_mib"]
    val = raw.get("val") or {"check": "n/a", "reason": "not measured"}
    variants = {}
    for name, figures in raw.get("variants", {}).items():
        ips = serving["images"] / median(figures["seconds"])
        latency = figures["latency"]
        cold = figures.get("cold_start") or {}
        quality = (val.get("variants") or {}).get(name)
        wins = []
        if latency["prob_cam_p50_ms"] < served_latency["prob_cam_p50_ms"]:
            wins.append("latency")
        if ips > served_ips:
            wins.append("throughput")
        if cold.get("peak_rss_mib") and cold["peak_rss_mib"] < served_rss:
            wins.append("memory")
        variants[name] = {
            "ips": ips,
            "speedup_vs_served": ips / served_ips,
            "throughput_ratio_vs_naive": ips / naive_ips,
            "latency": latency,
            "latency_ratio_vs_served": latency["prob_cam_p50_ms"]
            / served_latency["prob_cam_p50_ms"],
            "cold_start": cold,
            "quality": quality,
            "wins": wins,
            "adopt": bool(quality and quality["check"] == "PASS" and wins),
        }
    return {
        "available": True,
        "reason": None,
        "served": f"TensorFlow {served}",
        "served_ips": served_ips,
        "served_latency_p50_ms": served_latency["prob_cam_p50_ms"],
        "served_peak_rss_mib": served_rss,
        "export_s": raw.get("export_s"),
        "quantise_s": raw.get("quantise_s"),
        "calibration": raw.get("calibration"),
        "val": {key: value for key, value in val.items() if key != "variants"},
        "variants": variants,
    }


def _paired_ratio(
    first_s: Sequence[float], first_n: int, second_s: Sequence[float], second_n: int
) -> float | None:
    """Median over repeats of (first img/s) / (second img/s), each pair timed back to back.

    A cross-check of the ratio of medians: if the background load changed
    during the run, the medians may come from different load, the pairs do not.
    """
    pairs = [(first_n / a) / (second_n / b) for a, b in zip(first_s, second_s) if a > 0 and b > 0]
    return median(pairs) if pairs else None


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
        (
            "throughput_ratio",
            "batch throughput, project / naive",
            result["throughput"]["throughput_ratio"],
        ),
        (
            "latency_prob_cam_p50_ms",
            f"prob + Grad-CAM p50 at {result['latency']['image_size']} px",
            result["latency"]["prob_cam_p50_ms"],
        ),
    ]
    if result.get("latency_224"):
        values.append(
            (
                "latency_prob_cam_p50_ms",
                "prob + Grad-CAM p50 at 224 px",
                result["latency_224"]["prob_cam_p50_ms"],
            )
        )
    values += [
        ("cold_start_s", "cold start to first prediction", cold.get("total_s")),
        ("serving_peak_rss_mb", "serving peak RSS", result["memory"]["serving_peak_rss_mib"]),
        (
            "cache_speedup",
            "fine-tuning speed-up from the feature cache",
            result["training"]["cache_speedup"],
        ),
        (
            "bf16_abs_delta_auroc",
            "bfloat16 |delta AUROC| vs float32",
            None if bf16.get("delta_auroc") is None else abs(bf16["delta_auroc"]),
        ),
    ]
    rows = []
    for key, figure, value in values:
        op, target, unit = TARGETS[key]
        met = _check(op, value, target)
        rows.append(
            {
                "id": key,
                "figure": figure,
                "value": value,
                "op": op,
                "target": target,
                "unit": unit,
                "met": met,
                "status": "n/a" if met is None else ("met" if met else "missed"),
            }
        )
    return rows
