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
from fracture.evaluation.metrics import evaluation_report, pointing_game
from fracture.inference.predictor import Predictor, load_predictor

__all__ = ["evaluate_model", "score_records"]


def score_records(
    predictor: Predictor,
    records: list,
    *,
    with_cam: bool,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray | None], list[int]]:
    """Logits, labels, heat maps (original resolution) and indices of the readable records."""
    logits, labels, cams, kept = [], [], [], []
    paths = [r.path for r in records]
    for index, result in enumerate(predictor.iter_predict(paths, with_cam=with_cam)):
        if result.ok:
            logits.append(result.logit)
            labels.append(records[index].label)
            cams.append(result.heatmap)
            kept.append(index)
        if on_progress:
            on_progress(index + 1, len(records))
    return np.array(logits, float), np.array(labels, int), cams, kept


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
    logits, labels, cams, kept = score_records(predictor, records, with_cam=pointing_game)
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
        boxed = [(cam, r.boxes) for cam, r in zip(cams, kept_records) if r.label == 1 and r.boxes]
        report["pointing_game"] = _pointing_game(boxed)
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


def _pointing_game(boxed: list) -> dict[str, Any]:
    if not boxed:
        return {"hits": 0, "n": 0, "score": None}
    return pointing_game([cam for cam, _ in boxed], [boxes for _, boxes in boxed])
