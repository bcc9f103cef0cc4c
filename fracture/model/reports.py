"""The typed shapes of a model folder's two JSON documents: ``evaluation.json`` and the card.

:func:`fracture.evaluation.evaluate.evaluate_model` (through
:mod:`fracture.evaluation.metrics`) writes the :class:`EvaluationReport`;
:func:`fracture.model.card.build_card` writes the :class:`ModelCard`. Both are plain
``dict``s on disk and in memory (JSON in, JSON out, older folders keep reading), and
these ``TypedDict``s name their keys so that mypy checks every reader: a misspelt key
or a key that the writer never sets is a type error rather than a silent ``None``.

Nearly every key is optional (``total=False``): a K-class model's report has no
top-level AUROC without a normal class, a report written before a figure existed
lacks it, and a card gains its heads' sections only when the heads are fitted.
Nested figures stay ``dict[str, Any]``: their shapes are documented where they are
computed (:func:`fracture.evaluation.metrics.binary_report` and friends).

The model layer owns these because :class:`fracture.model.folder.ModelFolder` reads
and writes both files and the card quotes the report; the evaluation layer above
builds them.
"""

from __future__ import annotations

from typing import Any, TypedDict

__all__ = ["EvaluationReport", "ModelCard"]


class EvaluationReport(TypedDict, total=False):
    """``evaluation.json``: one split's figures at the model's operating points.

    The binary figures (:func:`fracture.evaluation.metrics.binary_report`) sit at
    the top level; a K-class model adds ``multiclass`` and, from training, its epoch
    figures (``macro_auroc``, ``classes``, ``n_per_class``).
    """

    schema_version: int
    # The binary report at the chosen operating point.
    n: int
    n_positive: int
    prevalence: float | None
    class_names: list[str]
    auroc: float | None
    auroc_ci: list[float] | None
    ci_level: float
    n_bootstrap: int
    n_bootstrap_used: int
    bootstrap_seed: int
    pr_auc: float | None
    brier: float
    ece: float | None
    reliability: dict[str, Any]
    threshold: float
    sensitivity: float | None
    specificity: float | None
    ppv: float | None
    npv: float | None
    accuracy: float | None
    confusion: dict[str, int]
    confusion_matrix: list[list[int]]
    roc: dict[str, Any] | None
    pr: dict[str, Any] | None
    # Calibration and the operating points.
    temperature: float | None
    operating_point: str
    operating_points: dict[str, dict[str, Any]]
    ece_uncalibrated: float | None
    reliability_uncalibrated: dict[str, Any]
    brier_uncalibrated: float
    calibration_fit: dict[str, Any]
    # Subgroups and where the model looks.
    subgroups: dict[str, Any]
    pointing_game: dict[str, Any]
    localisation: dict[str, Any]
    localiser: dict[str, Any]
    ood: dict[str, Any]
    # K-class models, MURA studies.
    multiclass: dict[str, Any]
    macro_auroc: float | None
    balanced_accuracy: float
    loss: float
    classes: list[str]
    n_per_class: list[int]
    study_level: dict[str, Any]
    # What was evaluated.
    model: dict[str, Any]
    data: dict[str, Any]


class ModelCard(TypedDict, total=False):
    """``model_card.json`` (Mitchell et al. 2019): what a reviewer needs to judge a model.

    :func:`fracture.model.card.build_card` sets the first group; the heads and the
    recipes in ``tools/`` add their sections, and
    :meth:`fracture.model.folder.ModelFolder.write_card` adds ``checksums``.
    """

    name: str
    version: str
    created: str
    git_commit: str | None
    seed: int | None
    architecture: str
    multiclass: bool
    classes: list[str]
    normal_class: str | None
    class_counts: dict[str, dict[str, int]] | None
    image_size: int
    fine_tune_from: str
    imagenet_weights_sha256: str
    training_data: dict[str, Any]
    train_config: dict[str, Any]
    training_seconds: float
    best_epoch: int
    history: list[dict[str, Any]]
    temperature: float
    prior_shift: float
    localiser_weight: float  # the localisation head's peak in the logit (ModelConfig)
    thresholds: dict[str, float]
    operating_point: str
    val_metrics: dict[str, Any]
    intended_use: str
    limitations: list[str]
    ood: dict[str, Any]
    calibration: dict[str, Any]
    evidence_scale: float | None
    # Sections added after training: the heads, the recipes, the folder.
    region_head: dict[str, Any]
    hardware_head: dict[str, Any]
    localiser: dict[str, Any]
    localisation: dict[str, Any]
    box_supervision: str
    inference_precision: str
    inference_precision_evidence: dict[str, Any]
    checksums: dict[str, str]
