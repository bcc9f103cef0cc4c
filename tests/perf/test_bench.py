"""The benchmark: every figure present, every ratio computed from its own measurements.

Absolute speeds are never asserted: they depend on the machine and its load.
The in-process test runs the real measuring functions on the 64 px fake
model; the end-to-end test with child processes is marked slow.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from fracture import errors
from fracture.cli import bench as bench_cli
from fracture.perf import bench
from fracture.perf import config as bench_config
from fracture.perf import machine as bench_machine
from fracture.perf import measure as bench_measure
from fracture.perf import report as bench_report
from fracture.perf import summary as bench_summary
from fracture.perf import workload as bench_workload
from fracture.perf.config import BenchConfig

from conftest import TINY_SIZE, write_png

# Every top-level figure of the JSON, and the fields each must carry.
EXPECTED_FIELDS = {
    "throughput": {
        "project_ips",
        "naive_ips",
        "throughput_ratio",
        "image_size",
        "batch_size",
        "images",
        "naive_images",
        "repeats",
        "pipeline",
    },
    "latency": {
        "prob_cam_p50_ms",
        "prob_cam_p95_ms",
        "prob_p50_ms",
        "prob_p95_ms",
        "image_size",
        "precision",
        "repeats",
    },
    "training": {
        "uncached_ips",
        "cached_ips",
        "cache_speedup",
        "batch_size",
        "fine_tune_from",
        "image_size",
        "feature_bytes_per_image_view",
        "flop_bound_speedup",
    },
    "memory": {"serving_peak_rss_mib", "serving_precision", "training_peak_rss_mib", "isolated"},
    "efficiency": {
        "gflop_per_image",
        "predict_path_gflops",
        "network_only_gflops",
        "peak_fp32_gflops",
        "peak_bf16_gflops",
        "predict_path_fraction_of_peak",
        "peak_formula",
        "peak_how",
    },
    "bf16": {"supported", "check", "speedup", "recommended"},
    "threading": {"default_inter_op", "sweep"},
    "machine": {
        "cpu_model",
        "cores",
        "mhz",
        "simd_flags",
        "ram_gib",
        "versions",
        "load_average_1m",
        "microarchitecture",
    },
}


def _tiny_config(tmp_path, weights, **changes) -> BenchConfig:
    base = BenchConfig.quick_config(
        image_size=TINY_SIZE,
        weights=str(weights),
        batch_size=2,
        images=3,
        naive_images=2,
        repeats=2,
        latency_repeats=2,
        latency_at_224=False,
        train_batch_size=2,
        train_steps=2,
        sweep_images=2,
        sweep_repeats=1,
        thread_settings=(),
        val_root=str(tmp_path / "none"),
        onnx=False,  # measured in its own test below
        calibration_images=4,
    )
    return dataclasses.replace(base, **changes)


def _assert_consistent(result: dict) -> None:
    """Ratios equal the quotients of the figures they come from; statuses agree with targets."""
    for section, fields in EXPECTED_FIELDS.items():
        assert fields <= set(result[section]), (section, fields - set(result[section]))
    t = result["throughput"]
    assert t["throughput_ratio"] == pytest.approx(t["project_ips"] / t["naive_ips"], rel=1e-9)
    tr = result["training"]
    assert tr["cache_speedup"] == pytest.approx(tr["cached_ips"] / tr["uncached_ips"], rel=1e-9)
    eff = result["efficiency"]
    assert eff["predict_path_gflops"] == pytest.approx(t["project_ips"] * eff["gflop_per_image"])
    assert eff["gflop_per_image"] == pytest.approx(2 * 4.1 * (t["image_size"] / 224) ** 2)
    assert eff["predict_path_fraction_of_gemm"] == pytest.approx(
        eff["predict_path_gflops"] / eff["measured_gemm_fp32_gflops"]
    )
    if eff["peak_fp32_gflops"]:
        assert eff["predict_path_fraction_of_peak"] == pytest.approx(
            eff["predict_path_gflops"] / eff["peak_fp32_gflops"]
        )
    bf = result["bf16"]
    if bf.get("speedup") is not None:
        assert bf["speedup"] == pytest.approx(bf["bf16_ips"] / bf["fp32_ips"], rel=1e-9)
        assert bf["fp32_ips"] == pytest.approx(t["project_ips"])
    if bf["check"] in ("PASS", "FAIL"):
        assert bf["delta_auroc"] == pytest.approx(bf["auroc_bf16"] - bf["auroc_fp32"])
        assert (bf["check"] == "PASS") == (abs(bf["delta_auroc"]) <= 0.005)
    speedup = bf.get("paired_speedup") if bf.get("load_stable") is False else bf["speedup"]
    assert bf["recommended"] == (bf["check"] == "PASS" and (speedup or 0) >= 1.05)

    rows = result["targets"]
    assert {row["id"] for row in rows} == set(bench_config.TARGETS)
    for row in rows:
        op, target, _ = bench_config.TARGETS[row["id"]]
        assert row["op"] == op and row["target"] == target
        if row["value"] is None:
            assert row["met"] is None and row["status"] == "n/a"
            continue
        expected = row["value"] >= target if op == ">=" else row["value"] <= target
        assert row["met"] is expected
        assert row["status"] == ("met" if expected else "missed")
    by_id = {row["id"]: row for row in rows}
    assert by_id["throughput_ratio"]["value"] == t["throughput_ratio"]
    assert by_id["cache_speedup"]["value"] == tr["cache_speedup"]
    assert by_id["serving_peak_rss_mb"]["value"] == result["memory"]["serving_peak_rss_mib"]
    json.dumps(result)  # the --json output must serialise
    table = bench_report.format_table(result)
    for row in rows:
        assert row["status"] in table
    assert bench_report.format_table(result, markdown=True).startswith("| Figure | Value |")


# --- the whole benchmark, in this process -----------------------------------


@pytest.mark.slow
def test_bench_in_process_reports_every_figure_consistently(tmp_path, fake_imagenet_weights):
    result = bench.run_bench(_tiny_config(tmp_path, fake_imagenet_weights), isolate=False)
    _assert_consistent(result)
    assert result["model"]["kind"] == "imagenet-random-head"
    assert result["model"]["image_size"] == TINY_SIZE
    assert result["memory"]["isolated"] is False
    assert result["cold_start"] is None and result["threading"]["sweep"] == []
    assert result["latency"]["precision"] == "float32"
    assert result["throughput"]["project_ips"] > 0 and result["throughput"]["naive_ips"] > 0
    assert "no trained model" in result["bf16"]["reason"]


# --- pure functions, on made-up measurements --------------------------------


def _raw():
    serving = {
        "model": {"kind": "trained", "image_size": 384, "name": "m", "directory": "x"},
        "threads": {"intra_op": 2, "inter_op": 1},
        "batch_size": 16,
        "images": 32,
        "naive_images": 8,
        "project_seconds": [4.0, 8.0, 5.0],
        "naive_seconds": [10.0, 9.0, 11.0],
        "project_cpu_seconds": [8.0, 9.0, 10.0],
        "pipeline": {"decode_seconds": [1.0, 2.0, 0.5], "inference_seconds": [4.5, 4.0, 6.0]},
        "latency": {
            "image_size": 384,
            "precision": "float32",
            "repeats": 3,
            "prob_cam_p50_ms": 300.0,
            "prob_cam_p95_ms": 350.0,
            "prob_p50_ms": 280.0,
            "prob_p95_ms": 320.0,
        },
        "latency_224": {
            "image_size": 224,
            "precision": "float32",
            "repeats": 3,
            "prob_cam_p50_ms": 120.0,
            "prob_cam_p95_ms": 130.0,
            "prob_p50_ms": 100.0,
            "prob_p95_ms": 110.0,
        },
        "serving_peak_rss_mib": 1200.0,
        "serving_precision": "bfloat16",
        "gemm": {
            "gemm_size": 2048.0,
            "fp32_gflops": 150.0,
            "bf16_gflops": 300.0,
            "fp32_gflop_per_cpu_second": 80.0,
            "bf16_gflop_per_cpu_second": 160.0,
        },
        "bf16": {
            "supported": True,
            "seconds": [2.5, 2.5, 3.0],
            "latency": {
                "image_size": 384,
                "precision": "bfloat16",
                "repeats": 3,
                "prob_cam_p50_ms": 200.0,
                "prob_cam_p95_ms": 220.0,
                "prob_p50_ms": 190.0,
                "prob_p95_ms": 210.0,
            },
            "auroc": {
                "check": "PASS",
                "reason": None,
                "val_images": 120,
                "auroc_fp32": 0.9,
                "auroc_bf16": 0.897,
                "delta_auroc": -0.003,
            },
        },
    }
    cold = [
        {
            "threads": {"intra_op": 2, "inter_op": inter},
            "interpreter_s": 0.05,
            "import_s": 4.0,
            "build_s": 2.0,
            "weights_s": 1.0,
            "warmup_s": 3.0,
            "first_predict_s": 0.5,
            "total_s": 10.55,
            "sweep_images": 8,
            "sweep_seconds": [4.0, 4.4],
            "sweep_cpu_seconds": [8.0, 8.0],
        }
        for inter in (1, 2)
    ]
    training = {
        "image_size": 384,
        "batch_size": 16,
        "fine_tune_from": "conv5_block1_out",
        "steps": 3,
        "uncached_seconds": [8.0, 9.0, 10.0],
        "cached_seconds": [0.5, 1.0, 0.8],
        "feature_bytes_per_image_view": 12 * 12 * 2048 * 2,
        "training_peak_rss_mib": 3000.0,
        "flop_bound_speedup": 3.9,
        "forward_gmacs_per_image": 11.4,
        "tail_forward_gmacs_per_image": 1.3,
    }
    machine = {
        "cpu_model": "AMD EPYC",
        "microarchitecture": "AMD Zen 4",
        "cores": 2,
        "mhz": 2600.0,
        "simd_flags": ["avx2", "avx512_bf16", "avx512f", "fma"],
        "mhz_source": "test",
        "ram_gib": 24.0,
        "versions": {"keras": "3", "onednn": "on"},
        "load_average_1m": 0.1,
    }
    return machine, serving, cold, training


def test_summary_ratios_are_the_quotients_of_the_medians():
    machine, serving, cold, training = _raw()
    result = bench_summary.summarise(
        BenchConfig.quick_config(), machine, serving, cold, training, {"total": 1.0}
    )
    _assert_consistent(result)
    t = result["throughput"]
    assert t["project_ips"] == pytest.approx(32 / 5.0)  # median of 4, 8, 5
    assert t["naive_ips"] == pytest.approx(8 / 10.0)
    assert t["throughput_ratio"] == pytest.approx(8.0)
    # Cross-check from back-to-back pairs: (32/4)/(8/10), (32/8)/(8/9), (32/5)/(8/11).
    assert t["paired_ratio"] == pytest.approx(sorted([10.0, 4.5, 8.8])[1])
    assert t["load_stable"] is True  # 8.8 is within 15 % of 8.0
    assert result["raw"]["project_seconds"] == [4.0, 8.0, 5.0]
    assert t["pipeline"]["decode_hidden_fraction"] == pytest.approx((1.0 + 4.5 - 5.0) / 1.0)
    assert result["training"]["cache_speedup"] == pytest.approx((16 / 0.8) / (16 / 9.0))
    eff = result["efficiency"]
    assert eff["cpu_seconds_per_image"] == pytest.approx(9.0 / 32)
    assert eff["fraction_of_gemm_per_cpu_second"] == pytest.approx(
        eff["gflop_per_image"] / (9.0 / 32) / 80.0
    )
    assert eff["fraction_of_per_core_peak"] == pytest.approx(
        eff["gflop_per_image"] / (9.0 / 32) / (eff["peak_fp32_gflops"] / 2)
    )
    assert result["bf16"]["speedup"] == pytest.approx((32 / 2.5) / (32 / 5.0))
    assert result["bf16"]["recommended"] is True
    assert result["cold_start"]["total_s"] == pytest.approx(10.55)
    assert result["cold_start"]["threads"]["inter_op"] == 2  # the default setting's run (2 cores)
    assert [s["inter_op"] for s in result["threading"]["sweep"]] == [1, 2]
    assert result["threading"]["sweep"][0]["ips"] == pytest.approx(8 / 4.2)
    assert result["threading"]["default_inter_op"] == 2
    status = {(row["id"], row["figure"]): row["status"] for row in result["targets"]}
    assert status[("throughput_ratio", "batch throughput, project / naive")] == "met"
    assert status[("latency_prob_cam_p50_ms", "prob + Grad-CAM p50 at 384 px")] == "missed"
    assert status[("latency_prob_cam_p50_ms", "prob + Grad-CAM p50 at 224 px")] == "met"
    assert status[("cold_start_s", "cold start to first prediction")] == "met"
    assert status[("serving_peak_rss_mb", "serving peak RSS")] == "met"
    assert status[("bf16_abs_delta_auroc", "bfloat16 |delta AUROC| vs float32")] == "met"


def test_a_load_change_during_the_run_is_flagged():
    machine, serving, cold, training = _raw()
    # The load vanished halfway: bf16 ran slow in the first repeats, fast later.
    serving["project_seconds"] = [8.0, 8.0, 2.0, 2.0, 2.0]
    serving["bf16"]["seconds"] = [6.0, 6.0, 6.0, 1.3, 1.3]
    result = bench_summary.summarise(
        BenchConfig.full(), machine, serving, cold, training, {"total": 1.0}
    )
    assert result["bf16"]["speedup"] == pytest.approx(2.0 / 6.0)
    assert result["bf16"]["load_stable"] is False
    assert result["bf16"]["paired_speedup"] == pytest.approx((32 / 6.0) / (32 / 8.0))
    assert result["bf16"]["recommended"] is True  # judged on the pairs, 1.33x
    assert "load changed during the run" in bench_report.format_table(result)


def test_failed_bf16_check_is_not_recommended_and_missing_figures_are_na():
    failing = {
        "check": "FAIL",
        "reason": None,
        "val_images": 50,
        "auroc_fp32": 0.9,
        "auroc_bf16": 0.88,
        "delta_auroc": -0.02,
    }
    machine, serving, cold, training = _raw()
    serving["bf16"]["auroc"] = failing
    result = bench_summary.summarise(
        BenchConfig.full(), machine, serving, [], training, {"total": 1.0}
    )
    _assert_consistent(result)
    assert result["bf16"]["recommended"] is False
    by_id = {row["id"]: row for row in result["targets"]}
    assert by_id["bf16_abs_delta_auroc"]["status"] == "missed"
    assert by_id["cold_start_s"]["status"] == "n/a"  # no cold start was run


def test_peak_formula_follows_the_cpu_flags():
    zen4 = {
        "cores": 2,
        "mhz": 2600.0,
        "microarchitecture": "AMD Zen 4",
        "simd_flags": ["avx2", "avx512_bf16", "avx512f", "fma"],
    }
    peak = bench_machine.peak_gflops(zen4)
    assert peak["fp32"] == pytest.approx(2 * 2.6 * 2 * 8 * 2, abs=0.1)
    assert peak["bf16"] == pytest.approx(2 * peak["fp32"], abs=0.1)
    assert "2 cores x 2.60 GHz x 2 FMA units x 8 lanes x 2" == peak["formula"]
    intel = {**zen4, "microarchitecture": "Intel AVX-512", "simd_flags": ["avx512f", "fma", "avx2"]}
    assert bench_machine.peak_gflops(intel)["fp32"] == pytest.approx(2 * 2.6 * 2 * 16 * 2, abs=0.1)
    assert bench_machine.peak_gflops(intel)["bf16"] is None
    amx = {**intel, "simd_flags": ["avx512f", "amx_bf16", "amx_tile"]}
    assert bench_machine.peak_gflops(amx)["bf16"] == pytest.approx(2 * 2.6 * 1024, abs=0.1)


def test_machine_description_and_generated_radiographs():
    machine = bench_machine.describe_machine()
    assert machine["cores"] >= 1 and machine["versions"]
    assert bench_report.format_machine(machine)
    jpegs = bench_workload.make_radiograph_jpegs(2)
    assert len(jpegs) == 2 and jpegs[0] != jpegs[1]
    image = Image.open(io.BytesIO(jpegs[0]))
    assert image.format == "JPEG" and image.size == (820, 1024)
    assert 30_000 < len(jpegs[0]) < 400_000  # about a FracAtlas radiograph's file size


def test_cli_parser_and_quick_config():
    parser = argparse.ArgumentParser()
    bench_cli.add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--quick", "--json", "out.json", "--image-size", "384"])
    assert args.func is bench_cli.cmd_bench
    config = bench_cli.config_from_args(args)
    assert config.quick and config.image_size == 384 and config.val_images == 120
    assert not bench_cli.config_from_args(parser.parse_args(["bench"])).quick
    with pytest.raises(errors.BenchError):
        bench_cli.config_from_args(
            parser.parse_args(["bench", "--model", "m", "--image-size", "224"])
        )
    with pytest.raises(errors.BenchError, match="full run"):
        bench_cli.config_from_args(parser.parse_args(["bench", "--quick", "--apply"]))
    assert BenchConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


# --- the bfloat16 path and thread settings -----------------------------------


def test_predictor_precision_comes_from_the_caller_then_the_model(monkeypatch):
    import fracture.inference.predictor as predict

    monkeypatch.setattr(predict, "bfloat16_supported", lambda: True)
    assert predict._resolve_precision(None, None) == "float32"
    assert predict._resolve_precision("bfloat16", None) == "bfloat16"
    assert predict._resolve_precision(None, "bfloat16") == "bfloat16"
    assert predict._resolve_precision("float32", "bfloat16") == "float32"
    with pytest.raises(ValueError):
        predict._resolve_precision("int8", None)
    monkeypatch.setattr(predict, "bfloat16_supported", lambda: False)
    assert predict._resolve_precision(None, "bfloat16") == "float32"
    with pytest.warns(RuntimeWarning, match="native bfloat16"):
        assert predict._resolve_precision("bfloat16", None) == "float32"


def test_configure_threads_is_idempotent_after_tensorflow_started():
    import tensorflow as tf

    from fracture.inference.engine import configure_threads

    tf.constant(1.0) + 1  # TensorFlow is running: the pools can no longer change
    first = configure_threads()
    assert configure_threads(7, 7) == first
    assert all(isinstance(n, int) and n >= 0 for n in first)


def test_bfloat16_tracks_float32_and_the_auroc_check_compares_them(tmp_path, tiny_loaded):
    from fracture.inference.predictor import Predictor

    for index in range(3):
        write_png(tmp_path / "data" / "val" / "fractured" / f"f{index}.png", seed=index)
        write_png(tmp_path / "data" / "val" / "normal" / f"n{index}.png", seed=10 + index)
        write_png(tmp_path / "data" / "train" / "normal" / f"t{index}.png", seed=20 + index)
        write_png(tmp_path / "data" / "train" / "fractured" / f"u{index}.png", seed=30 + index)
    loaded = tiny_loaded
    fp32 = Predictor(loaded, batch_size=2, precision="float32", warmup=False)
    bf16 = Predictor(loaded, batch_size=2, precision="bfloat16", warmup=False)
    assert bf16.engine.precision == "bfloat16" and fp32.engine.precision == "float32"

    config = BenchConfig.full(val_root=str(tmp_path / "data"), val_images=4)
    check = bench_measure._auroc_check(fp32, bf16, config)
    assert check["val_images"] == 4 and check["val_split_images"] == 6 and check["val_subset"]
    assert check["check"] == ("PASS" if abs(check["delta_auroc"]) <= 0.005 else "FAIL")
    assert math.isclose(check["delta_auroc"], check["auroc_bf16"] - check["auroc_fp32"])
    missing = bench_measure._auroc_check(
        fp32, bf16, BenchConfig.full(val_root=str(tmp_path / "nowhere"))
    )
    assert missing["check"] == "n/a" and "no validation data" in missing["reason"]

    # The bfloat16 engine, heat maps included, returns float32 close to float32's.
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, TINY_SIZE, TINY_SIZE, 3)).astype("float32")
    a, b = fp32.engine.run(images, with_cam=True), bf16.engine.run(images, with_cam=True)
    assert b.logits.dtype == np.float32 and b.cams.dtype == np.float32
    # Heat maps are logit evidence (relu(w . A)), never negative, close in both precisions.
    assert b.cams.shape == a.cams.shape and 0 <= b.cams.min()
    np.testing.assert_allclose(b.cams, a.cams, rtol=0.1, atol=0.05 * np.abs(a.cams).max())
    # bfloat16 keeps 8 mantissa bits: close, not equal.
    np.testing.assert_allclose(b.pooled, a.pooled, rtol=0.1, atol=0.05 * np.abs(a.pooled).max())
    # The copy holds bfloat16 kernels (BatchNorm folded into them) and a float32
    # input normalisation and head; the served model itself is untouched.
    graph = bf16.engine._graph
    assert graph.get_layer("conv1_conv").kernel.dtype == "bfloat16"
    assert not graph.get_layer("conv1_bn").weights  # folded into conv1_conv
    assert graph.get_layer("logit").kernel.dtype == "float32"
    assert loaded.model.get_layer("conv1_conv").dtype_policy.name == "float32"
    with pytest.raises(ValueError, match="precision"):
        Predictor(loaded, batch_size=2, precision="float16", warmup=False)


# --- ONNX Runtime float32 and int8 -------------------------------------------


def _onnx_raw(latency_ms: float, seconds: list[float], rss: float, delta: float, corr: float):
    variant = {
        "latency": {
            "image_size": 384,
            "precision": "onnx-x",
            "repeats": 3,
            "prob_cam_p50_ms": latency_ms,
            "prob_cam_p95_ms": latency_ms + 10,
            "prob_p50_ms": latency_ms - 5,
            "prob_p95_ms": latency_ms,
        },
        "seconds": seconds,
        "cold_start": {"total_s": 1.0, "import_s": 0.4, "load_s": 0.3, "peak_rss_mib": rss},
    }
    quality = {
        "auroc": 0.9 + delta,
        "delta_auroc": delta,
        "max_abs_probability_diff": 0.01,
        "decisions_changed": 1,
        "heatmap": {
            "images": 120,
            "median_correlation": corr,
            "p5_correlation": corr - 0.05,
            "max_relative_difference": 0.2,
            "peak_cell_agreement": 0.97,
        },
        "check": "PASS" if abs(delta) <= 0.005 and corr >= 0.95 else "FAIL",
    }
    return variant, quality


def test_onnx_summary_follows_the_adoption_rule():
    """Adopt only with AUROC and heat map kept AND a win on latency, throughput or memory."""
    machine, serving, cold, training = _raw()
    # Served: bfloat16 at 200 ms p50 and 32 / 2.5 = 12.8 img/s, serving RSS 1200 MiB.
    fp32, fp32_quality = _onnx_raw(250.0, [4.0, 4.0, 4.0], 1500.0, 0.0, 0.999)  # wins nothing
    int8, int8_quality = _onnx_raw(150.0, [2.0, 2.0, 2.0], 300.0, -0.002, 0.97)  # wins all three
    serving["onnx"] = {
        "available": True,
        "reason": None,
        "export_s": 10.0,
        "quantise_s": 20.0,
        "calibration": {"images": 64, "source": "64 training radiographs", "train_split": True},
        "variants": {"float32": fp32, "int8": int8},
        "val": {
            "check": "done",
            "reason": None,
            "val_images": 120,
            "auroc_reference": 0.9,
            "variants": {"float32": fp32_quality, "int8": int8_quality},
        },
    }
    result = bench_summary.summarise(
        BenchConfig.quick_config(), machine, serving, cold, training, {"total": 1.0}
    )
    onnx = result["onnx"]
    assert onnx["served"] == "TensorFlow bfloat16"
    assert onnx["served_ips"] == pytest.approx(32 / 2.5)
    a, b = onnx["variants"]["float32"], onnx["variants"]["int8"]
    assert a["ips"] == pytest.approx(8.0) and b["ips"] == pytest.approx(16.0)
    assert b["speedup_vs_served"] == pytest.approx(16.0 / 12.8)
    assert b["throughput_ratio_vs_naive"] == pytest.approx(16.0 / 0.8)
    assert a["latency_ratio_vs_served"] == pytest.approx(250 / 200)
    assert a["wins"] == [] and a["adopt"] is False
    assert b["wins"] == ["latency", "throughput", "memory"] and b["adopt"] is True
    table = bench_report.format_table(result)
    assert "ONNX Runtime int8: prob + heat map" in table and "adopt (wins on latency" in table
    assert "do not adopt (wins on nothing)" in table
    json.dumps(result)

    # The same int8 speed, but the heat map no longer follows float32: not adopted.
    int8_quality["heatmap"]["median_correlation"] = 0.80
    int8_quality["check"] = "FAIL"
    result = bench_summary.summarise(
        BenchConfig.quick_config(), machine, serving, cold, training, {"total": 1.0}
    )
    assert result["onnx"]["variants"]["int8"]["adopt"] is False


def test_heat_map_agreement_sees_a_moved_peak():
    from fracture.perf.onnx_runtime import heatmap_agreement, heatmap_kept

    rng = np.random.default_rng(0)
    maps = rng.uniform(0, 1, (20, 8, 8))
    for index, grid in enumerate(maps):
        grid[index % 8, 2] = 5.0  # one clear strongest cell per map
    same = heatmap_agreement(maps, maps * 1.01)
    assert same["images"] == 20 and same["median_correlation"] == pytest.approx(1.0)
    assert same["peak_cell_agreement"] == 1.0 and heatmap_kept(same)
    assert same["max_relative_difference"] == pytest.approx(0.01)
    moved = maps.copy()
    moved[:4, :, 2] = maps[:4, :, 7]  # in 4 of 20 maps the peak jumps 5 cells away
    moved[:4, :, 7] = maps[:4, :, 2]
    shifted = heatmap_agreement(maps, moved)
    assert shifted["peak_cell_agreement"] == pytest.approx(16 / 20)
    assert not heatmap_kept(shifted)  # 80 % < 95 %, whatever the median correlation
    empty = heatmap_agreement(np.zeros((2, 4, 4)), np.ones((2, 4, 4)))
    assert empty["images"] == 0 and empty["median_correlation"] is None and not heatmap_kept(empty)


def test_onnx_section_is_skipped_with_a_clear_line(tmp_path, monkeypatch):
    from fracture.perf import onnx_runtime

    monkeypatch.setattr(
        onnx_runtime, "onnx_unavailable", lambda: "skipped: onnxruntime not installed (pip ...)"
    )
    section, setup = bench_measure._prepare_onnx_section(BenchConfig.full(), None, tmp_path, 2)
    assert setup is None and section == {
        "available": False,
        "reason": "skipped: onnxruntime not installed (pip ...)",
    }
    machine, serving, cold, training = _raw()
    serving["onnx"] = section
    result = bench_summary.summarise(
        BenchConfig.full(), machine, serving, cold, training, {"total": 1.0}
    )
    _assert_consistent(result)
    assert result["onnx"] == section
    assert "skipped: onnxruntime not installed" in bench_report.format_table(result)
    # An old result without the section (or a run with it turned off) reads the same way.
    del serving["onnx"]
    summary = bench_summary.summarise(
        BenchConfig.full(), machine, serving, cold, training, {"total": 1.0}
    )
    assert summary["onnx"]["available"] is False


@pytest.mark.slow
def test_onnx_runtime_float32_and_int8_in_one_bench_run(
    tmp_path, tiny_model_dir, fake_imagenet_weights
):
    """The section on a trained (tiny) model: speed, val check, heat maps, TensorFlow-free start."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    for index in range(4):
        write_png(tmp_path / "data" / "val" / "fractured" / f"f{index}.png", seed=index)
        write_png(tmp_path / "data" / "val" / "normal" / f"n{index}.png", seed=10 + index)
        write_png(tmp_path / "data" / "train" / "normal" / f"t{index}.png", seed=20 + index)
        write_png(tmp_path / "data" / "train" / "fractured" / f"u{index}.png", seed=30 + index)
    config = _tiny_config(
        tmp_path,
        fake_imagenet_weights,
        image_size=None,
        model_dir=str(tiny_model_dir),
        val_root=str(tmp_path / "data"),
        val_images=None,
        onnx=True,
    )
    result = bench.run_bench(config, isolate=False)
    _assert_consistent(result)
    onnx = result["onnx"]
    assert onnx["available"], onnx["reason"]
    assert onnx["calibration"]["train_split"] and onnx["calibration"]["images"] == 4
    assert onnx["val"]["val_images"] == 8
    assert set(onnx["variants"]) == {"float32", "int8"}
    for name, variant in onnx["variants"].items():
        assert variant["ips"] > 0 and variant["latency"]["prob_cam_p50_ms"] > 0
        assert variant["latency"]["precision"] == f"onnx-{name}"
        quality = variant["quality"]
        assert quality["delta_auroc"] == pytest.approx(
            quality["auroc"] - onnx["val"]["auroc_reference"]
        )
        assert 0 <= quality["heatmap"]["peak_cell_agreement"] <= 1
        cold = variant["cold_start"]
        assert cold["total_s"] >= cold["import_s"] > 0 and cold["peak_rss_mib"] > 0
        # The point of the exercise: serving with ONNX Runtime never loads TensorFlow.
        assert cold["tensorflow_imported"] is False
        assert variant["adopt"] == bool(quality["check"] == "PASS" and variant["wins"])
    # float32 ONNX is the same network as TensorFlow float32: the same answers and maps.
    fp32 = onnx["variants"]["float32"]["quality"]
    assert fp32["max_abs_probability_diff"] < 1e-3
    assert fp32["heatmap"]["median_correlation"] > 0.999
    table = bench_report.format_table(result)
    assert "ONNX Runtime int8: prob + heat map" in table
    assert "process without TensorFlow" in table


# --- end to end, with child processes ----------------------------------------


@pytest.mark.slow
def test_bench_with_child_processes(tmp_path, fake_imagenet_weights):
    config = _tiny_config(tmp_path, fake_imagenet_weights, thread_settings=((0, 1), (0, 2)))
    result = bench.run_bench(config, isolate=True)
    _assert_consistent(result)
    cold = result["cold_start"]
    for key in ("import_s", "build_s", "weights_s", "warmup_s", "first_predict_s"):
        assert cold[key] > 0
    assert cold["total_s"] >= cold["import_s"] + cold["build_s"]
    assert cold["threads"]["inter_op"] == result["threading"]["default_inter_op"]
    assert sorted(s["inter_op"] for s in result["threading"]["sweep"]) == [1, 2]
    assert result["memory"]["isolated"] is True


def test_applying_the_bfloat16_verdict_sets_the_served_precision(
    tmp_path, tiny_model_dir, use_fake_weights, monkeypatch
):
    import shutil

    import fracture.inference.predictor as predict
    from fracture.model.folder import read_config

    monkeypatch.setattr(predict, "bfloat16_supported", lambda: True)
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    verdict = {
        "recommended": True,
        "check": "PASS",
        "auroc_fp32": 0.9,
        "auroc_bf16": 0.9,
        "delta_auroc": 0.0,
        "val_images": 10,
        "speedup": 1.6,
    }
    assert bench.apply_precision_verdict(model_dir, verdict) == "bfloat16"
    config, card = read_config(model_dir)  # checksums still verify
    assert config.inference_precision == "bfloat16"
    assert card["inference_precision_evidence"]["speedup"] == 1.6
    assert predict.load_predictor(model_dir, warmup=False).precision == "bfloat16"
    from fracture.config import get_settings

    forced = get_settings().replace(inference_precision="float32")  # the operator's override
    assert predict.load_predictor(model_dir, settings=forced, warmup=False).precision == "float32"

    failed = {**verdict, "recommended": False, "check": "FAIL", "delta_auroc": -0.02}
    assert bench.apply_precision_verdict(model_dir, failed) == "float32"
    assert read_config(model_dir)[0].inference_precision is None
    assert predict.load_predictor(model_dir, warmup=False).precision == "float32"
