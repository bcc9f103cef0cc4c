"""Calibration: Platt scaling and operating points fitted on the validation split.

The maths is :func:`fracture.evaluation.operating_points.calibrate`, the one
calibration that training uses too; this module applies it to a saved model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from fracture.data.layouts import load_dataset
from fracture.evaluation.evaluate import score_records
from fracture.evaluation.metrics import evaluation_report
from fracture.evaluation.operating_points import calibrate
from fracture.inference.predictor import Predictor, load_predictor
from fracture.model.card import headline
from fracture.model.folder import ModelFolder

__all__ = ["calibrate_model"]


def calibrate_model(
    model_dir: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    *,
    predictor: Predictor | None = None,
) -> dict[str, Any]:
    """Refit a saved model's calibration and operating points on the val split.

    Fits Platt scaling (which also removes the class-weighting bias) and both
    thresholds on val, and rewrites ``config.json``, ``evaluation.json`` and the
    card (checksums included) atomically. Returns the new evaluation report.
    """
    folder = ModelFolder(model_dir)
    config, card = folder.read()
    if config.is_multiclass:
        # Platt scaling is for one fracture logit; a K-class model's temperature is
        # fitted by training (fracture.evaluation.operating_points.calibrate_classes).
        raise ValueError(
            f"{model_dir} is a model of {config.num_outputs} classes; recalibrating one is not "
            "supported yet (its calibration is fitted when it is trained)"
        )
    predictor = predictor or load_predictor(model_dir)
    dataset = load_dataset(data_root)
    records = dataset.split("val")
    logits, labels, _, kept = score_records(predictor, records, with_cam=False)
    # Undo whatever shift the folder had: Platt scaling fits its own.
    raw_logits = logits + config.prior_shift
    calibration = calibrate(raw_logits, labels)
    prior_shift, temperature = calibration.shift, calibration.temperature
    thresholds = calibration.thresholds
    config = dataclasses.replace(
        config, prior_shift=prior_shift, temperature=temperature, thresholds=thresholds
    )
    kept_records = [records[i] for i in kept]
    report = evaluation_report(
        labels,
        raw_logits - prior_shift,
        temperature,
        thresholds,
        regions=[r.region for r in kept_records],
        hardware=[r.hardware for r in kept_records],
    )
    report["calibration_fit"] = calibration.summary()
    folder.write_evaluation(report)
    folder.rewrite_config(
        config,
        card,
        prior_shift=prior_shift,
        temperature=temperature,
        thresholds=thresholds,
        val_metrics=headline(report),
        calibration=calibration.summary(),
    )
    json.dumps(report)  # fail here, not in the dashboard, if anything is not JSON
    return report
