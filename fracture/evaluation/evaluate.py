"""Evaluate a saved model on a dataset split.

Runs the same :class:`~fracture.inference.predictor.Predictor` that serves users, so the
numbers describe what users get, then hands the scores to
:mod:`fracture.evaluation.metrics` (scikit-learn underneath). A K-class model is also
measured class by class (:mod:`fracture.evaluation.multiclass`), and a MURA-layout dataset
study by study (:mod:`fracture.evaluation.studies`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fracture.data.layouts import load_dataset, mura_study
from fracture.evaluation.detection import average_precision
from fracture.evaluation.localisation import (
    image_localisation,
    localiser_item,
    summarise_localisation,
    summarise_localiser,
)
from fracture.evaluation.metrics import evaluation_report, format_report, probability_report
from fracture.evaluation.multiclass import format_multiclass, multiclass_report
from fracture.evaluation.studies import format_study_level, study_level_report
from fracture.inference.gradcam import strongest_region
from fracture.inference.localisation import MIN_CANDIDATE_SCORE, Box
from fracture.inference.predictor import Predictor, load_predictor
from fracture.model.folder import ModelConfig
from fracture.model.reports import EvaluationReport

__all__ = [
    "evaluate_model",
    "score_records",
    "class_evaluation",
    "format_evaluation",
    "Scores",
]


@dataclass
class Scores:
    """What the predictor gave for the readable records of one split.

    ``logits`` are the binary model's prior-corrected logits (empty for a K-class
    model), ``probabilities`` the fracture probabilities (None where a K-class model
    has no normal class), ``class_probabilities`` a K-class model's (N, K) matrix.
    """

    labels: np.ndarray
    kept: list[int]
    logits: np.ndarray
    probabilities: list[float | None]
    class_probabilities: np.ndarray | None = None
    localisation: list[dict[str, Any] | None] = field(default_factory=list)
    # The localisation head's per-image items (evaluation.localisation.localiser_item),
    # for a model that has one; and the Grad-CAM strongest-region box of each fractured
    # image with boxes, scored by the probability, for the Grad-CAM map's AP50.
    localiser: list[dict[str, Any]] = field(default_factory=list)
    gradcam_boxes: list[tuple[list[Box], list[Any]]] = field(default_factory=list)
    # The localisation head's peak centre logit per kept image (binary models with a
    # head): what ModelConfig.localiser_weight weighs; None without a head.
    peaks: np.ndarray | None = None


def _score(
    predictor: Predictor,
    records: Sequence,
    *,
    with_cam: bool,
    on_progress: Callable[[int, int], None] | None = None,
) -> Scores:
    logits, labels, probabilities, classes, localisation, kept = [], [], [], [], [], []
    peaks: list[float | None] = []
    localiser: list[dict[str, Any]] = []
    gradcam_boxes: list[tuple[list[Box], list[Any]]] = []
    paths = [r.path for r in records]
    for index, result in enumerate(predictor.iter_predict(paths, with_cam=with_cam)):
        if result.ok:
            record = records[index]
            labels.append(record.label)
            probabilities.append(result.probability)
            if result.class_probabilities is not None:
                classes.append(list(result.class_probabilities.values()))
            else:
                logits.append(result.logit)
                peaks.append(result.location_peak)
            heat = result.evidence_image() if with_cam else None
            # Boxes mark fractures of the binary datasets (FracAtlas); a K-class
            # label 1 is some other class.
            boxed = result.class_probabilities is None and record.label == 1 and bool(record.boxes)
            # With a localisation head, result.box is the head's; Grad-CAM's own box is
            # its strongest region, as a model without the head draws it.
            gradcam_box = (
                strongest_region(result.heatmap) if boxed and result.heatmap is not None else None
            )
            if result.location_outputs is None:
                gradcam_box = result.box if boxed else None
            localisation.append(
                image_localisation(heat, record.boxes, gradcam_box)
                if heat is not None and boxed
                else None
            )
            if boxed and heat is not None:
                detections = (
                    []
                    if gradcam_box is None
                    else [Box(*gradcam_box, score=result.probability or 0.0)]
                )
                gradcam_boxes.append((detections, list(record.boxes)))
            if result.location_outputs is not None and with_cam:
                localiser.append(
                    localiser_item(
                        record.label,
                        result.probability,
                        record.boxes if boxed else (),
                        result.location_candidates(MIN_CANDIDATE_SCORE),
                        len(result.location_boxes),
                        result.location_image() if boxed else None,
                        result.box,
                    )
                )
            kept.append(index)
        if on_progress:
            on_progress(index + 1, len(records))
    return Scores(
        labels=np.array(labels, int),
        kept=kept,
        logits=np.array(logits, float),
        probabilities=probabilities,
        class_probabilities=np.array(classes, float) if classes else None,
        localisation=localisation,
        localiser=localiser,
        gradcam_boxes=gradcam_boxes,
        peaks=np.array(peaks, float) if peaks and None not in peaks else None,
    )


def score_records(
    predictor: Predictor,
    records: list,
    *,
    with_cam: bool,
    on_progress: Callable[[int, int], None] | None = None,
) -> Scores:
    """What the predictor gives for ``records``: logits, labels, peaks and the readable ones.

    The localisation figures (:func:`fracture.evaluation.localisation.image_localisation`)
    exist for fractured records with boxes when ``with_cam``; they are computed as
    each image is scored, so no full-size heat map is kept.
    """
    return _score(predictor, records, with_cam=with_cam, on_progress=on_progress)


def class_evaluation(
    labels: np.ndarray,
    probabilities: np.ndarray,
    config: ModelConfig,
    *,
    regions: Sequence[str | None] | None = None,
    hardware: Sequence[bool | None] | None = None,
    n_bootstrap: int = 1000,
) -> EvaluationReport:
    """The evaluation report of a K-class model: per class, and for any fracture.

    ``labels`` index ``config.class_names``; ``probabilities`` are the calibrated
    (N, K) softmax outputs. ``multiclass`` holds :func:`multiclass_report`. Where the
    model has a normal class, the top level is the binary report of any fracture
    (1 - P(normal) against "not normal") at the model's operating points, the figures
    triage and the CSV rest on, so every binary plot applies; without one there is
    no "fracture or not" to report and the top level has the class figures only.
    """
    report: EvaluationReport = {}
    normal = config.normal_index
    any_fracture = config.any_fracture(probabilities)
    if normal is not None and any_fracture is not None and config.thresholds:
        report = probability_report(
            (labels != normal).astype(int),
            np.clip(any_fracture, 0.0, 1.0),  # 1 - P(normal) may round a hair past 1
            config.thresholds,
            temperature=config.temperature,
            regions=regions,
            hardware=hardware,
            operating_point=config.operating_point,
            n_bootstrap=n_bootstrap,
        )
    report["temperature"] = config.temperature
    report["multiclass"] = multiclass_report(labels, probabilities, config.class_names)
    return report


def _class_labels(records: Sequence, config: ModelConfig) -> np.ndarray:
    """Each record's class as an index into the model's classes (matched by name)."""
    names = config.class_names
    missing = sorted({str(r.class_name) for r in records if r.class_name not in names})
    if missing:
        raise ValueError(
            f"The data hold classes the model does not know: {', '.join(missing)} "
            f"(the model's classes: {', '.join(names)})"
        )
    return np.array([names.index(r.class_name) for r in records], int)


def evaluate_model(
    data_root: str | os.PathLike[str],
    *,
    model_dir: str | os.PathLike[str] | None = None,
    split: str = "val",
    pointing_game: bool = True,
    predictor: Predictor | None = None,
    n_bootstrap: int = 1000,
) -> EvaluationReport:
    """The full evaluation report of a model on ``split`` of ``data_root``."""
    predictor = predictor or load_predictor(model_dir)
    dataset = load_dataset(data_root)
    records = dataset.split(split)
    if not records:
        raise ValueError(f"{data_root} has no {split!r} split (splits: {dataset.summary()})")
    config = predictor.config
    if config.is_multiclass and dataset.classes is None:
        raise ValueError(
            f"{data_root} is a fracture/normal dataset, but the model tells apart "
            f"{', '.join(config.class_names)}; evaluate it on data with those class folders"
        )
    if not config.is_multiclass and dataset.classes is not None:
        raise ValueError(
            f"{data_root} has the classes {', '.join(dataset.classes)}, but the model only "
            "tells fracture from normal"
        )
    scores = _score(predictor, records, with_cam=pointing_game and not config.is_multiclass)
    kept_records = [records[i] for i in scores.kept]
    regions = [r.region for r in kept_records]
    hardware = [r.hardware for r in kept_records]
    if scores.class_probabilities is not None:
        report = class_evaluation(
            _class_labels(kept_records, config),
            scores.class_probabilities,
            config,
            regions=regions,
            hardware=hardware,
            n_bootstrap=n_bootstrap,
        )
    else:
        report = evaluation_report(
            scores.labels,
            scores.logits,
            config.temperature,
            config.thresholds,
            regions=regions,
            hardware=hardware,
            n_bootstrap=n_bootstrap,
        )
    if pointing_game and not config.is_multiclass:
        figures = summarise_localisation([item for item in scores.localisation if item is not None])
        report["localisation"] = figures
        # Kept under its old key and shape for readers of earlier reports.
        game = figures["pointing_game"]
        report["pointing_game"] = {"hits": game["hits"], "n": game["n"], "score": game["rate"]}
        if scores.gradcam_boxes:
            detections, truth = zip(*scores.gradcam_boxes)
            figures["ap50"] = average_precision(list(detections), list(truth))
        if scores.localiser and predictor.localiser is not None:
            report["localiser"] = summarise_localiser(
                scores.localiser,
                config.thresholds,
                box_threshold=predictor.localiser.box_threshold,
                n_bootstrap=n_bootstrap,
            )
    if dataset.layout == "mura":
        report["study_level"] = _study_level(
            scores.labels, np.array(scores.probabilities, float), kept_records, config
        )
    report["model"] = {
        "name": config.name,
        "version": config.version,
        "directory": str(predictor.loaded.directory),
    }
    report["data"] = {
        "root": str(Path(data_root)),
        "split": split,
        "unreadable": len(records) - len(scores.kept),
    }
    return report


def _study_level(
    labels: np.ndarray, probabilities: np.ndarray, records: list, config: ModelConfig
) -> dict[str, Any]:
    """MURA's study-level figures: the maximum rule in full, the paper's mean rule in brief."""
    studies = [mura_study(record.path) for record in records]
    common: dict[str, Any] = {
        "thresholds": config.thresholds,
        "operating_point": config.operating_point,
        "regions": [record.region for record in records],
    }
    report = study_level_report(labels, probabilities, studies, aggregate="max", **common)
    mean = study_level_report(
        labels, probabilities, studies, aggregate="mean", n_bootstrap=0, **common
    )
    report["mean_rule"] = {"auroc": mean["auroc"], "kappa": mean["kappa"]}
    return report


def format_evaluation(report: EvaluationReport) -> str:
    """The terminal summary of :func:`evaluate_model`: image, class and study figures."""
    parts = []
    if "auroc" in report:
        parts.append(format_report(report))
    if report.get("multiclass"):
        parts.append(format_multiclass(report["multiclass"]))
    if report.get("study_level"):
        parts.append(format_study_level(report["study_level"]))
    return "\n\n".join(parts)
