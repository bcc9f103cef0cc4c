"""Evaluate a saved model on a dataset split.

Runs the same :class:`~fracture.inference.predictor.Predictor` that serves users, so the
numbers describe what users get, then hands the scores to
:mod:`fracture.evaluation.metrics` (scikit-learn underneath).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fracture.data.layouts import load_dataset
from fracture.evaluation.localisation import image_localisation, summarise_localisation
from fracture.evaluation.metrics import evaluation_report
from fracture.inference.predictor import Predictor, load_predictor

__all__ = ["evaluate_model", "score_records"]


def score_records(
    predictor: Predictor,
    records: list,
    *,
    with_cam: bool,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any] | None], list[int]]:
    """Logits, labels, localisation figures and indices of the readable records.

    The localisation figures (:func:`fracture.evaluation.localisation.image_localisation`)
    exist for fractured records with boxes when ``with_cam``; they are computed as
    each image is scored, so no full-size heat map is kept.
    """
    logits, labels, localisation, kept = [], [], [], []
    paths = [r.path for r in records]
    for index, result in enumerate(predictor.iter_predict(paths, with_cam=with_cam)):
        if result.ok:
            record = records[index]
            logits.append(result.logit)
            labels.append(record.label)
            heat = result.evidence_image() if with_cam else None
            boxed = record.label == 1 and bool(record.boxes)
            localisation.append(
                image_localisation(heat, record.boxes, result.box)
                if heat is not None and boxed
                else None
            )
            kept.append(index)
        if on_progress:
            on_progress(index + 1, len(records))
    return np.array(logits, float), np.array(labels, int), localisation, kept


def evaluate_model(
    data_root: str | os.PathLike[str],
    *,
    model_dir: str | os.PathLike[str] | None = None,
    split: str = "val",
    pointing_game: bool = True,
    predictor: Predictor | None = None,
    n_bootstrap: int = 1000,
) -> dict[str, Any]:
    """The full evaluation report of a model on ``split`` of ``data_root``."""
    predictor = predictor or load_predictor(model_dir)
    dataset = load_dataset(data_root)
    records = dataset.split(split)
    if not records:
        raise ValueError(f"{data_root} has no {split!r} split (splits: {dataset.summary()})")
    logits, labels, localisation, kept = score_records(predictor, records, with_cam=pointing_game)
    kept_records = [records[i] for i in kept]
    config = predictor.config
    report = evaluation_report(
        labels,
        logits,
        config.temperature,
        config.thresholds,
        regions=[r.region for r in kept_records],
        hardware=[r.hardware for r in kept_records],
        n_bootstrap=n_bootstrap,
    )
    if pointing_game:
        figures = summarise_localisation([item for item in localisation if item is not None])
        report["localisation"] = figures
        # Kept under its old key and shape for readers of earlier reports.
        game = figures["pointing_game"]
        report["pointing_game"] = {"hits": game["hits"], "n": game["n"], "score": game["rate"]}
    report["model"] = {
        "name": config.name,
        "version": config.version,
        "directory": str(predictor.loaded.directory),
    }
    report["data"] = {
        "root": str(Path(data_root)),
        "split": split,
        "unreadable": len(records) - len(kept),
    }
    return report
