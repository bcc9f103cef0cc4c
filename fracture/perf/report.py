"""The benchmark's tables, printed and written to BENCHMARKS.md, from a summarised result.

Each table is built from a list of :class:`Figure` records, one per row, which
the section functions compute from :func:`fracture.perf.summary.summarise`'s result.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

from fracture.perf.config import (
    HEATMAP_MIN_CORRELATION,
    HEATMAP_MIN_PEAK_AGREEMENT,
    ONNX_MAX_AUROC_DELTA,
)
from fracture.perf.onnx_runtime import heatmap_kept

__all__ = ["Figure", "format_table", "format_machine"]


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
