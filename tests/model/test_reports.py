"""The typed shapes of evaluation.json and the model card name every key their writers set.

mypy checks readers against :mod:`fracture.model.reports`; these tests keep the
shapes honest from the other side: a writer that gains a key the TypedDict lacks
fails here, rather than leaving that key unchecked in every reader.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fracture.evaluation.evaluate import class_evaluation
from fracture.evaluation.localisation import pointing_game
from fracture.evaluation.metrics import evaluation_report
from fracture.model.card import build_card
from fracture.model.config import ModelConfig
from fracture.model.reports import EvaluationReport, ModelCard

REPORT_KEYS = EvaluationReport.__required_keys__ | EvaluationReport.__optional_keys__
CARD_KEYS = ModelCard.__required_keys__ | ModelCard.__optional_keys__
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "default"


def _unknown(document: dict, known: frozenset[str]) -> list[str]:
    return sorted(set(document) - known)


def test_every_key_is_optional_so_older_documents_still_type_check():
    assert not EvaluationReport.__required_keys__
    assert not ModelCard.__required_keys__


def test_the_binary_report_sets_only_typed_keys():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 120)
    logits = rng.normal(labels * 1.5, 1.0)
    cams = [rng.random((8, 8)) for _ in labels]
    boxes = [[(0.2, 0.2, 0.6, 0.6)] if label else [] for label in labels]
    report = evaluation_report(
        labels,
        logits,
        1.3,
        {"high_sensitivity": 0.3, "high_specificity": 0.7},
        regions=rng.choice(["hand", "leg", None], labels.size).tolist(),
        hardware=rng.choice([True, False], labels.size).tolist(),
        pointing=pointing_game(cams, boxes),
        n_bootstrap=20,
    )
    # The optional parts were all asked for, so the check covers them.
    assert {"subgroups", "pointing_game", "ece_uncalibrated", "roc", "pr"} <= set(report)
    assert _unknown(dict(report), REPORT_KEYS) == []


def test_the_class_report_sets_only_typed_keys():
    rng = np.random.default_rng(1)
    config = ModelConfig(
        classes=["simple", "comminuted", "normal"],
        thresholds={"high_sensitivity": 0.4, "high_specificity": 0.8},
    )
    labels = rng.integers(0, 3, 90)
    probabilities = rng.dirichlet(np.ones(3), labels.size)
    report = class_evaluation(labels, probabilities, config, n_bootstrap=10)
    assert "multiclass" in report and "auroc" in report
    assert _unknown(dict(report), REPORT_KEYS) == []


def test_the_card_sets_only_typed_keys(tmp_path):
    from fracture.data.phantoms import synthesize_phantoms

    dataset = synthesize_phantoms(tmp_path / "data", 8, size=64)
    config = ModelConfig(thresholds={"high_sensitivity": 0.4, "high_specificity": 0.8})

    class Fitted:
        def summary(self) -> dict:
            return {"method": "test"}

    card = build_card(
        model_config=config,
        train_config={"seed": 3},
        dataset=dataset,
        report={"auroc": 0.8, "n": 10, "operating_points": {}},
        history=[],
        best_epoch=1,
        training_seconds=2.0,
        imagenet_sha256="0" * 64,
        commit=None,
        ood_gate=Fitted(),
        calibration=Fitted(),
    )
    assert {"ood", "calibration", "val_metrics", "training_data"} <= set(card)
    assert _unknown(dict(card), CARD_KEYS) == []


@pytest.mark.parametrize(
    "name, known", [("evaluation.json", REPORT_KEYS), ("model_card.json", CARD_KEYS)]
)
def test_the_shipped_models_documents_fit_their_types(name, known):
    path = DEFAULT_MODEL / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    assert _unknown(json.loads(path.read_text()), known) == []
