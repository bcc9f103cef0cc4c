"""Calibration: Platt scaling and operating points fitted on the validation split.

The maths is :func:`fracture.evaluation.operating_points.calibrate`.
:func:`calibrate_binary` applies it to a binary model's val logits and writes the
report that goes with it; training, the box-supervision recipe in ``tools/`` and
:func:`calibrate_model` (refit a saved model) all go through it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fracture.data.layouts import load_dataset
from fracture.data.records import Record
from fracture.evaluation.evaluate import score_records
from fracture.evaluation.metrics import evaluation_report
from fracture.evaluation.operating_points import Calibration, calibrate
from fracture.inference.predictor import Predictor, load_predictor
from fracture.model.card import headline
from fracture.model.folder import ModelConfig, ModelFolder
from fracture.model.reports import EvaluationReport

__all__ = ["calibrate_model", "calibrate_binary", "Calibrated"]


@dataclass(frozen=True)
class Calibrated:
    """A binary model's calibration fitted on val, the config that applies it, and the val report."""

    config: ModelConfig
    calibration: Calibration
    report: EvaluationReport


def calibrate_binary(
    config: ModelConfig,
    raw_logits: np.ndarray,
    labels: np.ndarray,
    records: Sequence[Record],
    *,
    peaks: np.ndarray | None = None,
    seed: int = 0,
) -> Calibrated:
    """Platt scaling and both operating points on val, and the report of the calibrated model.

    ``raw_logits`` are the classifier's logits (before any prior shift) for
    ``records``, whose regions and hardware flags give the report's subgroups.
    ``peaks`` are the localisation head's peak centre logits, for a model with one:
    their weight in the logit is fitted too, where it helps (:func:`calibrate`).
    """
    calibration = calibrate(raw_logits, labels, peaks=peaks, seed=seed)
    config = dataclasses.replace(
        config,
        prior_shift=calibration.shift,
        temperature=calibration.temperature,
        thresholds=calibration.thresholds,
        localiser_weight=calibration.localiser_weight,
    )
    fused = raw_logits if peaks is None else raw_logits + calibration.localiser_weight * peaks
    report = evaluation_report(
        labels,
        fused - calibration.shift,
        calibration.temperature,
        calibration.thresholds,
        regions=[r.region for r in records],
        hardware=[r.hardware for r in records],
        seed=seed,
    )
    report["calibration_fit"] = calibration.summary()
    return Calibrated(config, calibration, report)


def calibrate_model(
    model_dir: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    *,
    predictor: Predictor | None = None,
) -> EvaluationReport:
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
    scores = score_records(predictor, records, with_cam=False)
    # Undo whatever shift and localiser weight the folder had: the calibration fits its own.
    raw = scores.logits + config.prior_shift
    if scores.peaks is not None:
        raw = raw - config.localiser_weight * scores.peaks
    fitted = calibrate_binary(
        config, raw, scores.labels, [records[i] for i in scores.kept], peaks=scores.peaks
    )
    config, calibration, report = fitted.config, fitted.calibration, fitted.report
    folder.write_evaluation(report)
    folder.rewrite_config(
        config,
        card,
        prior_shift=config.prior_shift,
        temperature=config.temperature,
        thresholds=config.thresholds,
        localiser_weight=config.localiser_weight,
        val_metrics=headline(report),
        calibration=calibration.summary(),
    )
    json.dumps(report)  # fail here, not in the dashboard, if anything is not JSON
    return report
