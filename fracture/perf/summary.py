"""Summarise a benchmark run: ratios, targets and verdicts, and the tables printed and written to BENCHMARKS.md."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

from fracture.perf.config import (
    BF16_MIN_SPEEDUP,
    HEATMAP_MIN_CORRELATION,
    HEATMAP_MIN_PEAK_AGREEMENT,
    ONNX_MAX_AUROC_DELTA,
    TARGETS,
    BenchConfig,
)
from fracture.perf.machine import flops_per_image, peak_gflops
from fracture.perf.measure import median
from fracture.perf.onnx_runtime import heatmap_kept

if TYPE_CHECKING:
    pass

__all__ = [
    "Figure",
    "summarise",
    "evaluate_targets",
    "format_table",
    "format_machine",
]


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


class Figure(NamedTuple):
    """One row of the bench table: what was measured, its value, and its target and verdict if any."""

    name: str
    value: str
    target: str = ""
    status: str = ""


def _unstable(figures: dict[str, Any], paired_key: str) -> str:
    """A warning when the paired ratio disagrees: the load changed during the run."""
    if figures.get("load_stable") is False:
        return f" [load changed during the run; paired repeats give {figures[paired_key]:.2f}x]"
    return ""


def _latency_cell(latency: dict[str, Any]) -> str:
    cpu = latency.get("prob_cam_cpu_p50_ms")
    return f"{latency['prob_cam_p50_ms']:.0f} / {latency['prob_cam_p95_ms']:.0f} ms" + (
        f" (CPU {cpu:.0f} ms)" if cpu is not None else ""
    )


def _pct(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.0f}%"


def _fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


def format_table(result: dict[str, Any], markdown: bool = False) -> str:
    """The figures as a table: figure, value, target, status."""
    figures = [
        *_speed_figures(result),
        *_startup_training_and_efficiency_figures(result),
        *_bf16_figures(result),
        *_onnx_rows(result["onnx"], result["throughput"]["batch_size"]),
        *_threading_figures(result),
    ]
    return _render(figures, markdown)


def _target_cells(result: dict[str, Any], figure: str) -> tuple[str, str]:
    """The target and status columns of ``figure`` (a name in :data:`TARGETS`)."""
    row = {row["figure"]: row for row in result["targets"]}[figure]
    unit = row["unit"]
    value = f"{row['target']:g}" if unit in ("", "x") else f"{row['target']:g} {unit}"
    return f"{row['op']} {value}{'x' if unit == 'x' else ''}", row["status"]


def _speed_figures(result: dict[str, Any]) -> list[Figure]:
    """Batch throughput against the naive baseline, and single-image latency."""
    t, lat = result["throughput"], result["latency"]
    size = t["image_size"]
    rows: list[Figure] = [
        Figure(
            f"Batch throughput, project predict ({size} px, batch {t['batch_size']})",
            f"{t['project_ips']:.2f} img/s",
            "",
            "",
        ),
        Figure(
            "Batch throughput, naive Keras model.predict per image",
            f"{t['naive_ips']:.2f} img/s",
            "",
            "",
        ),
        Figure(
            "Throughput ratio project / naive",
            f"{t['throughput_ratio']:.2f}x" + _unstable(t, "paired_ratio"),
            *_target_cells(result, "batch throughput, project / naive"),
        ),
        Figure(
            "  decode / inference / pipelined (s)",
            f"{t['pipeline']['decode_s']:.2f} / {t['pipeline']['inference_s']:.2f} / "
            f"{t['pipeline']['pipelined_s']:.2f}",
            "",
            f"{100 * t['pipeline']['decode_hidden_fraction']:.0f}% of decode hidden",
        ),
        Figure(
            f"Single image prob + Grad-CAM overlay, p50 / p95 ({lat['image_size']} px)",
            _latency_cell(lat),
            *_target_cells(result, f"prob + Grad-CAM p50 at {lat['image_size']} px"),
        ),
        Figure(
            f"Single image prob only, p50 / p95 ({lat['image_size']} px)",
            f"{lat['prob_p50_ms']:.0f} / {lat['prob_p95_ms']:.0f} ms",
            "",
            "",
        ),
    ]
    if result.get("latency_224"):
        l224 = result["latency_224"]
        rows.append(
            Figure(
                "Single image prob + Grad-CAM overlay, p50 / p95 (224 px)",
                _latency_cell(l224),
                *_target_cells(result, "prob + Grad-CAM p50 at 224 px"),
            )
        )
        if l224.get("bf16"):
            rows.append(
                Figure(
                    "  same in bfloat16 (224 px)",
                    _latency_cell(l224["bf16"]),
                    "<= 150 ms",
                    "met" if l224["bf16"]["prob_cam_p50_ms"] <= 150 else "missed",
                )
            )
    return rows


def _startup_training_and_efficiency_figures(result: dict[str, Any]) -> list[Figure]:
    """Cold start, peak memory, fine-tuning speed and the FLOP efficiency of the predict path."""
    cold, tr, mem, eff = (
        result["cold_start"] or {},
        result["training"],
        result["memory"],
        result["efficiency"],
    )
    rows: list[Figure] = [
        Figure(
            "Cold start to first prediction (fresh process)",
            _fmt(cold.get("total_s"), 1, " s"),
            *_target_cells(result, "cold start to first prediction"),
        ),
        Figure(
            "  interpreter / import / build / weights / warm-up / first predict",
            " / ".join(
                _fmt(cold.get(k), 2)
                for k in (
                    "interpreter_s",
                    "import_s",
                    "build_s",
                    "weights_s",
                    "warmup_s",
                    "first_predict_s",
                )
            )
            + " s",
            "",
            "",
        ),
        Figure(
            f"Serving peak RSS (batch + batch-1 predictors, {mem['serving_precision']})",
            f"{mem['serving_peak_rss_mib']:.0f} MiB",
            *_target_cells(result, "serving peak RSS"),
        ),
        Figure(
            f"Training peak RSS (bench steps, batch {tr['batch_size']})",
            f"{mem['training_peak_rss_mib']:.0f} MiB",
            "",
            "",
        ),
        Figure(
            f"Fine-tuning without cache ({tr['image_size']} px, from {tr['fine_tune_from']})",
            f"{tr['uncached_ips']:.2f} img/s",
            "",
            "",
        ),
        Figure("Fine-tuning with feature cache", f"{tr['cached_ips']:.1f} img/s", "", ""),
        Figure(
            "Feature-cache speed-up",
            f"{tr['cache_speedup']:.1f}x{_unstable(tr, 'paired_speedup')} "
            f"(FLOP bound at this freeze point {tr['flop_bound_speedup']:.1f}x)",
            *_target_cells(result, "fine-tuning speed-up from the feature cache"),
        ),
        Figure(
            "Predict path GFLOP/s / fp32 peak",
            f"{eff['predict_path_gflops']:.1f} / {_fmt(eff['peak_fp32_gflops'])} "
            f"({_pct(eff['predict_path_fraction_of_peak'])})",
            "",
            "",
        ),
        Figure(
            "Predict path GFLOP per CPU-second / per-core peak / GEMM per CPU-second",
            f"{_fmt(eff['gflop_per_cpu_second'])} / {_fmt(eff['per_core_peak_fp32_gflops'])} "
            f"({_pct(eff['fraction_of_per_core_peak'])}) / "
            f"{_fmt(eff['gemm_fp32_gflop_per_cpu_second'])} "
            f"({_pct(eff['fraction_of_gemm_per_cpu_second'])})",
            "",
            "load-independent",
        ),
        Figure(
            "Predict path GFLOP/s / measured fp32 GEMM GFLOP/s",
            f"{eff['predict_path_gflops']:.1f} / {eff['measured_gemm_fp32_gflops']:.1f} "
            f"({100 * eff['predict_path_fraction_of_gemm']:.0f}%; GEMM implies >= "
            f"{_fmt(eff['implied_min_ghz'], 2)} GHz)",
            "",
            "",
        ),
        Figure(
            "Network only GFLOP/s (no decode)",
            f"{eff['network_only_gflops']:.1f} ({_pct(eff['network_only_fraction_of_peak'])})",
            "",
            "",
        ),
    ]
    return rows


def _bf16_figures(result: dict[str, Any]) -> list[Figure]:
    """bfloat16 against float32: speed, latency, the AUROC check and the recommendation."""
    eff, bf = result["efficiency"], result["bf16"]
    rows: list[Figure] = []
    if bf["supported"] and bf.get("speedup"):
        rows += [
            Figure(
                "bfloat16 predict speed-up vs float32",
                f"{bf['speedup']:.2f}x{_unstable(bf, 'paired_speedup')} "
                f"({bf['bf16_ips']:.2f} img/s, {bf['bf16_ips'] * eff['gflop_per_image']:.1f} GFLOP/s "
                f"of {_fmt(eff['peak_bf16_gflops'])} bf16 peak)",
                "",
                "",
            ),
            Figure(
                "bfloat16 throughput ratio vs naive",
                f"{bf['throughput_ratio_vs_naive']:.2f}x",
                ">= 5x",
                "met" if bf["throughput_ratio_vs_naive"] >= 5 else "missed",
            ),
        ]
        if bf.get("latency"):
            rows.append(
                Figure(
                    f"bfloat16 prob + Grad-CAM p50 / p95 ({bf['latency']['image_size']} px)",
                    _latency_cell(bf["latency"]),
                    "<= 150 ms",
                    "met" if bf["latency"]["prob_cam_p50_ms"] <= 150 else "missed",
                )
            )
    if bf.get("check") in ("PASS", "FAIL"):
        subset = f"{bf['val_images']} val images" + (" (quick subset)" if result["quick"] else "")
        rows.append(
            Figure(
                f"bfloat16 AUROC vs float32 ({subset})",
                f"{bf['auroc_bf16']:.4f} vs {bf['auroc_fp32']:.4f} "
                f"(delta {bf['delta_auroc']:+.4f})",
                "|delta| <= 0.005",
                bf["check"],
            )
        )
        rows.append(
            Figure(
                "  labels / OOD flags changed by bfloat16",
                f"{bf.get('decisions_changed', 'n/a')} / {bf.get('ood_flags_changed', 'n/a')}"
                f" of {bf['val_images']}",
                "",
                "",
            )
        )
    else:
        rows.append(
            Figure(
                "bfloat16 AUROC vs float32", bf.get("reason") or "n/a", "|delta| <= 0.005", "n/a"
            )
        )
    rows.append(Figure("bfloat16 recommended", "yes" if bf["recommended"] else "no", "", ""))
    return rows


def _threading_figures(result: dict[str, Any]) -> list[Figure]:
    """One row per thread setting the sweep tried."""
    rows: list[Figure] = []
    for entry in result["threading"]["sweep"]:
        chosen = entry["inter_op"] == result["threading"]["default_inter_op"]
        rows.append(
            Figure(
                f"Threads intra {entry['intra_op']} / inter {entry['inter_op']}"
                + (" (default)" if chosen else ""),
                f"{entry['ips']:.2f} img/s, {entry['cpu_seconds_per_image']:.2f} CPU s/img",
                "",
                "",
            )
        )
    return rows


def _render(rows: Sequence[Figure], markdown: bool) -> str:
    """The figures as a Markdown table or as aligned plain-text columns."""
    header = ("Figure", "Value", "Target", "Status")
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|---|---|---|"]
        lines += [
            "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows
        ]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    return "\n".join(lines)


def _onnx_rows(onnx: dict[str, Any], batch_size: int) -> list[Figure]:
    """The ONNX Runtime section of the table (one line saying why, when it was skipped)."""
    if not onnx.get("available"):
        return [
            Figure("ONNX Runtime float32 / int8", onnx.get("reason") or "not measured", "", "n/a")
        ]
    served = onnx["served"]
    calibration = onnx.get("calibration") or {}
    rows = [
        Figure(
            "ONNX export / int8 quantisation",
            f"{_fmt(onnx['export_s'], 0)} s / {_fmt(onnx['quantise_s'], 0)} s; "
            f"int8 calibrated on {calibration.get('source', 'n/a')}",
            "",
            "",
        )
    ]
    val = onnx["val"]
    for name, v in onnx["variants"].items():
        latency = v["latency"]
        rows.append(
            Figure(
                f"ONNX Runtime {name}: prob + heat map p50 / p95 ({latency['image_size']} px)",
                f"{_latency_cell(latency)}, {v['latency_ratio_vs_served']:.2f}x {served}'s time",
                "",
                "",
            )
        )
        rows.append(
            Figure(
                f"  batch throughput (batch {batch_size}, decoding not overlapped)",
                f"{v['ips']:.2f} img/s, {v['speedup_vs_served']:.2f}x {served}, "
                f"{v['throughput_ratio_vs_naive']:.2f}x naive",
                ">= 5x naive",
                "met" if v["throughput_ratio_vs_naive"] >= 5 else "missed",
            )
        )
        quality = v.get("quality")
        if quality:
            delta_ok = abs(quality["delta_auroc"]) <= ONNX_MAX_AUROC_DELTA
            rows.append(
                Figure(
                    f"  val AUROC vs TensorFlow float32 ({val['val_images']} val images)",
                    f"{quality['auroc']:.4f} vs {val['auroc_reference']:.4f} "
                    f"(delta {quality['delta_auroc']:+.4f}); largest probability difference "
                    f"{quality['max_abs_probability_diff']:.3f}; labels changed "
                    f"{quality['decisions_changed']}",
                    f"|delta| <= {ONNX_MAX_AUROC_DELTA:g}",
                    "PASS" if delta_ok else "FAIL",
                )
            )
            heat = quality["heatmap"]
            median_r = heat["median_correlation"]
            rows.append(
                Figure(
                    "  heat map vs TensorFlow float32",
                    f"correlation median {_fmt(median_r, 3)} (5th percentile "
                    f"{_fmt(heat['p5_correlation'], 3)}); strongest cell within one cell in "
                    f"{_pct(heat['peak_cell_agreement'])}; largest difference "
                    f"{_pct(heat['max_relative_difference'])} of the map's peak",
                    f"median >= {HEATMAP_MIN_CORRELATION:g}, strongest cell kept in "
                    f">= {HEATMAP_MIN_PEAK_AGREEMENT:.0%}",
                    "n/a" if median_r is None else ("PASS" if heatmap_kept(heat) else "FAIL"),
                )
            )
        else:
            rows.append(Figure("  val AUROC and heat map", val.get("reason") or "n/a", "", "n/a"))
        cold = v["cold_start"]
        if cold.get("error"):
            rows.append(Figure("  process without TensorFlow", cold["error"][:120], "", "n/a"))
        else:
            rows.append(
                Figure(
                    "  process without TensorFlow: cold start / peak RSS",
                    f"{_fmt(cold.get('total_s'), 1)} s (import {_fmt(cold.get('import_s'), 2)} s, "
                    f"load {_fmt(cold.get('load_s'), 2)} s) / {_fmt(cold.get('peak_rss_mib'), 0)} MiB"
                    + (" [TensorFlow was imported]" if cold.get("tensorflow_imported") else ""),
                    "<= 5 s / <= 700 MiB",
                    "met"
                    if (cold.get("total_s") or 99) <= 5 and (cold.get("peak_rss_mib") or 1e9) <= 700
                    else "missed",
                )
            )
        wins = ", ".join(v["wins"]) or "nothing"
        rows.append(
            Figure(
                f"  ONNX Runtime {name} for the dashboard",
                ("adopt" if v["adopt"] else "do not adopt") + f" (wins on {wins})",
                "quality kept and a win",
                "",
            )
        )
    return rows


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
