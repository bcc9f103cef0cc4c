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
* **ONNX Runtime** float32 and int8 (static quantisation calibrated on train
  images) against the TensorFlow path the dashboard serves: latency, batch
  throughput, val AUROC and heat maps against TensorFlow float32, and the cold
  start and memory of a process that serves without TensorFlow
  (:mod:`fracture.perf.onnx_runtime`); skipped with the reason when
  onnxruntime or tf2onnx is not installed.

Serving, training and each cold start run in child processes, so every peak
RSS belongs to one job and every cold start is really cold (the parent never
imports TensorFlow). Absolute speeds depend on what else the machine runs:
the load at the start is recorded, and only ratios measured in one run
should be compared.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any, Callable

from fracture.perf.children import run_child
from fracture.perf.config import BenchConfig
from fracture.perf.machine import describe_machine
from fracture.perf.measure import COLD_START_SCRIPT, measure_serving, measure_training
from fracture.perf.summary import summarise

if TYPE_CHECKING:
    pass

__all__ = ["run_bench", "apply_precision_verdict"]


def _section_in_child(section: str, config: BenchConfig) -> dict[str, Any]:
    result, _ = run_child(
        ["-m", "fracture.cli.bench", "--child", section, "--config", json.dumps(config.to_json())],
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
            result, spawned = run_child(
                ["-c", COLD_START_SCRIPT, json.dumps(config.to_json())], "cold start", env
            )
            result["interpreter_s"] = max(0.0, result.pop("wall_start") - spawned)
            result["total_s"] = result["interpreter_s"] + result["to_first_prediction_s"]
            result["requested"] = {"intra_op": intra, "inter_op": inter}
            runs.append(result)
    return runs


# ---------------------------------------------------------------------------
# Orchestration and summary


def run_bench(
    config: BenchConfig, *, isolate: bool = True, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run every measurement and return the summary (see :func:`summarise`).

    ``isolate`` runs serving and training in child processes (true peak RSS
    per job); ``False`` runs them here, for tests. Cold starts always run in
    fresh processes: that is what they measure.
    """
    say = progress or (lambda message: None)
    machine = describe_machine()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    say("serving: batch throughput vs naive, latency, bfloat16, ONNX Runtime float32 and int8")
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


# ---------------------------------------------------------------------------
# Command line


def apply_precision_verdict(model_dir: str | os.PathLike[str], bf16: dict[str, Any]) -> str:
    """Record the benchmark's bfloat16 verdict in a model folder; returns the precision now served.

    bfloat16 becomes the model's default only when the run recommended it
    (within 0.005 AUROC of float32 on val, and faster); otherwise float32.
    The evidence goes into the model card beside it.
    """
    import dataclasses

    from fracture.model.folder import ModelFolder

    folder = ModelFolder(model_dir)
    config, card = folder.read()
    precision = "bfloat16" if bf16.get("recommended") else None
    evidence = {
        key: bf16.get(key)
        for key in (
            "check",
            "auroc_fp32",
            "auroc_bf16",
            "delta_auroc",
            "val_images",
            "decisions_changed",
            "ood_flags_changed",
            "speedup",
        )
    }
    folder.rewrite_config(
        dataclasses.replace(config, inference_precision=precision),
        card,
        inference_precision=precision or "float32",
        inference_precision_evidence=evidence,
    )
    return precision or "float32"
