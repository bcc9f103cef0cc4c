"""Calibration: temperature scaling and operating points fitted on the validation split.

The maths (Guo et al. 2017 temperature scaling, threshold choice) is in
:mod:`fracture.evaluation.metrics`; this module applies it to a saved model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from fracture.data.layouts import load_dataset
from fracture.evaluation.evaluate import score_records
from fracture.evaluation.metrics import (
    calibrated_probability,
    choose_thresholds,
    evaluation_report,
    fit_temperature,
)
from fracture.inference.predictor import Predictor, load_predictor
from fracture.model.card import headline
from fracture.model.folder import ModelFolder

__all__ = ["fit_calibration", "calibrate_model"]


def fit_calibration(logits: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, float]]:
    """The temperature (Guo et al. 2017) and both operating thresholds, fitted on val.

    ``logits`` are prior-corrected (the class-weighting shift removed). Training
    and :func:`calibrate_model` both calibrate through here.
    """
    temperature = fit_temperature(logits, labels)
    chosen = choose_thresholds(calibrated_probability(logits, temperature), labels)
    thresholds = {k: float(chosen[k]) for k in ("high_sensitivity", "high_specificity")}
    return temperature, thresholds


def calibrate_model(
    model_dir: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    *,
    predictor: Predictor | None = None,
) -> dict[str, Any]:
    """Refit a saved model's calibration and operating points on the val split.

    Removes the class-weighting prior shift (computed from the training counts
    in the model card), fits the temperature and both thresholds on val, and
    rewrites ``config.json``, ``evaluation.json`` and the card (checksums
    included) atomically. Returns the new evaluation report.
    """
    folder = ModelFolder(model_dir)
    config, card = folder.read()
    counts = card["training_data"]["counts"]["train"]
    prior_shift = float(np.log(counts["normal"] / counts["fractured"]))
    predictor = predictor or load_predictor(model_dir)
    dataset = load_dataset(data_root)
    records = dataset.split("val")
    logits, labels, _, kept = score_records(predictor, records, with_cam=False)
    # Undo whatever shift the folder had, then apply the one implied by the training counts.
    logits = logits + config.prior_shift - prior_shift
    temperature, thresholds = fit_calibration(logits, labels)
    config = dataclasses.replace(
        config, prior_shift=prior_shift, temperature=temperature, thresholds=thresholds
    )
    kept_records = [records[i] for i in kept]
    report = evaluation_report(
        labels,
        logits,
        temperature,
        thresholds,
        regions=[r.region for r in kept_records],
        hardware=[r.hardware for r in kept_records],
    )
    folder.write_evaluation(report)
    folder.rewrite_config(
        config,
        card,
        prior_shift=prior_shift,
        temperature=temperature,
        thresholds=thresholds,
        val_metrics=headline(report),
    )
    json.dumps(report)  # fail here, not in the dashboard, if anything is not JSON
    return report
