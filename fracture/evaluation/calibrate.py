"""Calibration: temperature scaling and operating points fitted on the validation split.

The maths (Guo et al. 2017 temperature scaling, threshold choice) is in
:mod:`fracture.evaluation.metrics`; this module applies it to a saved model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from fracture.data.layouts import load_dataset
from fracture.evaluation.evaluate import score_records
from fracture.evaluation.metrics import evaluation_report
from fracture.inference.predictor import Predictor, load_predictor

__all__ = ["calibrate_model"]


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
    import dataclasses
    import json

    from fracture.evaluation.metrics import (
        calibrated_probability,
        choose_thresholds,
        fit_temperature,
    )
    from fracture.io.files import atomic_write_json
    from fracture.model.card import _headline, rewrite_model_config
    from fracture.model.folder import read_config

    model_dir = Path(model_dir)
    config, card = read_config(model_dir)
    counts = card["training_data"]["counts"]["train"]
    prior_shift = float(np.log(counts["normal"] / counts["fractured"]))
    predictor = predictor or load_predictor(model_dir)
    dataset = load_dataset(data_root)
    records = dataset.split("val")
    logits, labels, _, kept = score_records(predictor, records, with_cam=False)
    # Undo whatever shift the folder had, then apply the one implied by the training counts.
    logits = logits + config.prior_shift - prior_shift
    temperature = fit_temperature(logits, labels)
    chosen = choose_thresholds(calibrated_probability(logits, temperature), labels)
    thresholds = {k: float(chosen[k]) for k in ("high_sensitivity", "high_specificity")}
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
    atomic_write_json(model_dir / "evaluation.json", report)
    rewrite_model_config(
        model_dir,
        config,
        card,
        prior_shift=prior_shift,
        temperature=temperature,
        thresholds=thresholds,
        val_metrics=_headline(report),
    )
    json.dumps(report)  # fail here, not in the dashboard, if anything is not JSON
    return report
