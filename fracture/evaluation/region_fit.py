"""Fit a model folder's small heads on a dataset's labels, and measure them.

Two heads share one code path (:class:`HeadKind`): the body-region head, fitted on
the manifest's ``region`` column and reported as per-region accuracy, and the
hardware head, fitted on its ``hardware`` column (metal implant visible or not) and
reported as accuracy and AUROC. The heads' maths and file are
:mod:`fracture.inference.heads`; this module feeds them the pooled features of the
dataset's radiographs (through the same :class:`Predictor` that serves them, so
the features are computed in the precision the dashboard uses) and measures each
on the val split.

FracAtlas labels one region per image: hand, leg, hip, shoulder, or "mixed"
for images that show several. Mixed images are trained on like the others but
reported apart: "several regions" is not a body part, and the accuracy a
clinician cares about is the single-region one.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

import numpy as np

from fracture.evaluation.ood_fit import extract_features
from fracture.evaluation.proportions import wilson_rate
from fracture.inference.heads import HARDWARE_ABSENT, HARDWARE_PRESENT, FeatureHead, HardwareHead
from fracture.inference.region import RegionHead
from fracture.model.folder import ModelFolder
from fracture.model.network import POOL_LAYER

if TYPE_CHECKING:
    from fracture.inference.predictor import Predictor

__all__ = [
    "HARDWARE",
    "REGION",
    "HeadKind",
    "fit_feature_head",
    "fit_for_model",
    "fit_hardware_for_model",
    "fit_head_for_model",
    "fit_region_head",
    "hardware_report",
    "region_report",
    "MULTI_REGION_LABELS",
]

_Head = TypeVar("_Head", bound=FeatureHead)

logger = logging.getLogger(__name__)

# -- Configurable parameters ---------------------------------------------------------
# Labels that mean "several regions": trained on, reported apart.
MULTI_REGION_LABELS = frozenset({"mixed"})
# Inverse regularisation strengths tried by cross-validation on train (standardised features).
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
CV_FOLDS = 3
MIN_IMAGES_PER_REGION = 5


def fit_region_head(
    features: np.ndarray,
    regions: Sequence[str],
    *,
    fitted_precision: str = "float32",
    seed: int = 0,
) -> RegionHead:
    """The body-region head (:func:`fit_feature_head` over region labels)."""
    return fit_feature_head(
        features, regions, RegionHead, fitted_precision=fitted_precision, seed=seed
    )


def fit_feature_head(
    features: np.ndarray,
    regions: Sequence[str],
    head_type: type[_Head],
    *,
    fitted_precision: str = "float32",
    seed: int = 0,
) -> _Head:
    """Multinomial logistic regression on standardised ``features``, folded into one affine map.

    Classes are weighted by inverse frequency (FracAtlas has 1,063 hand images
    and 78 shoulders; about one image in twenty shows metal), and the
    regularisation strength is chosen by stratified cross-validation on these
    features alone, never on val. ``regions`` are the labels, whatever the head.
    """
    words = head_type.class_words
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    features = np.asarray(features, np.float64)
    labels = np.asarray(regions, dtype=object)
    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"features {features.shape} and {labels.shape[0]} labels do not match")
    counts = Counter(labels.tolist())
    if len(counts) < 2:
        raise ValueError(f"a {head_type.what} needs at least two {words}, got {dict(counts)}")
    scarce = {name: n for name, n in counts.items() if n < MIN_IMAGES_PER_REGION}
    if scarce:
        raise ValueError(
            f"too few training images for {words} {scarce} (at least "
            f"{MIN_IMAGES_PER_REGION} each): merge or drop them"
        )
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale < 1e-6] = 1.0  # constant features carry nothing; avoid dividing by zero
    standardised = (features - mean) / scale
    folds = min(CV_FOLDS, min(counts.values()))
    search = LogisticRegressionCV(
        Cs=list(C_GRID),
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        class_weight="balanced",
        max_iter=3000,
        # Log loss, not accuracy: a C chosen for accuracy alone can leave probabilities
        # so soft that the head rarely reaches its minimum and names nothing.
        scoring="neg_log_loss",
        l1_ratios=(0.0,),
        use_legacy_attributes=False,
    )
    search.fit(standardised, labels)
    chosen = float(np.atleast_1d(search.C_)[0])
    logger.info(
        "%s: C=%s chosen by %d-fold cross-validation on train", head_type.what, chosen, folds
    )
    classes = tuple(str(name) for name in search.classes_)
    coef = np.asarray(search.coef_, np.float64)  # (R, D) on standardised features
    intercept = np.asarray(search.intercept_, np.float64)
    if coef.shape[0] == 1 and len(classes) == 2:
        # scikit-learn fits two classes as one logit for the second; as a softmax head
        # that is logits (0, z), whose softmax is the same sigmoid.
        coef = np.concatenate([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros_like(intercept), intercept])
    weights = (coef / scale).T  # (D, R) on raw features
    bias = intercept - (mean / scale) @ coef.T
    return head_type(
        classes=classes,
        weights=weights.astype(np.float32),
        bias=bias.astype(np.float32),
        fitted_precision=fitted_precision,
    )


def region_report(head: RegionHead, features: np.ndarray, regions: Sequence[str]) -> dict[str, Any]:
    """Per-region accuracy (Wilson 95% intervals), the confusion matrix, and the single-region total.

    Images whose head is unsure (below its minimum probability) count as wrong:
    the page would show no region for them.
    """
    labels = [str(name) for name in regions]
    probabilities = head.probabilities(features)
    named = [head.name(row)[0] for row in probabilities]
    per_region = {}
    for region in head.classes:
        rows = [i for i, label in enumerate(labels) if label == region]
        hits = sum(1 for i in rows if named[i] == region)
        per_region[region] = wilson_rate(hits, len(rows))
    single = [i for i, label in enumerate(labels) if label not in MULTI_REGION_LABELS]
    multi = [i for i, label in enumerate(labels) if label in MULTI_REGION_LABELS]
    index = {name: k for k, name in enumerate(head.classes)}
    confusion = np.zeros((len(head.classes), len(head.classes) + 1), np.int64)  # last: unsure
    for label, name in zip(labels, named):
        if label in index:
            confusion[index[label], index[name] if name is not None else -1] += 1
    unknown = sorted({label for label in labels if label not in index})
    return {
        "regions": list(head.classes),
        "per_region": per_region,
        "single_region_accuracy": wilson_rate(
            sum(1 for i in single if named[i] == labels[i]), len(single)
        ),
        "multi_region_accuracy": wilson_rate(
            sum(1 for i in multi if named[i] == labels[i]), len(multi)
        ),
        "unsure": int(sum(1 for name in named if name is None)),
        "confusion": confusion.tolist(),  # rows: true region; columns: named region, then unsure
        "unknown_labels": unknown,
        "n": len(labels),
    }


def hardware_report(
    head: HardwareHead, features: np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """The hardware head on val: accuracy at its caution threshold (Wilson 95%) and AUROC."""
    from sklearn.metrics import roc_auc_score

    truth = np.array([label == HARDWARE_PRESENT for label in labels], bool)
    probability = head.metal_probability(features) if len(labels) else np.zeros(0)
    fired = np.array([head.fires(float(p)) for p in probability], bool)
    both = 0 < truth.sum() < truth.size
    return {
        "accuracy": wilson_rate(int((fired == truth).sum()), int(truth.size)),
        "auroc": float(roc_auc_score(truth, probability)) if both else None,
        "sensitivity": wilson_rate(int((fired & truth).sum()), int(truth.sum())),
        "specificity": wilson_rate(int((~fired & ~truth).sum()), int((~truth).sum())),
        "n": int(truth.size),
        "n_hardware": int(truth.sum()),
    }


@dataclass(frozen=True)
class HeadKind:
    """One kind of small head: its labels, its type, its file, its card entry, its figures."""

    name: str  # in messages and progress
    head_type: type[FeatureHead]
    label: Callable[[Any], str | None]  # a record's label, or None to leave it out
    path: Callable[[ModelFolder], Path]
    card_key: str
    predictor_attribute: str
    report: Callable[[Any, np.ndarray, list[str]], dict[str, Any]]
    column: str  # the manifest column, for the error message


REGION = HeadKind(
    name="region",
    head_type=RegionHead,
    label=lambda record: record.region or None,
    path=lambda folder: folder.region_head_path,
    card_key="region_head",
    predictor_attribute="region_head",
    report=region_report,
    column="region",
)
HARDWARE = HeadKind(
    name="hardware",
    head_type=HardwareHead,
    label=lambda record: (
        None
        if record.hardware is None
        else (HARDWARE_PRESENT if record.hardware else HARDWARE_ABSENT)
    ),
    path=lambda folder: folder.hardware_head_path,
    card_key="hardware_head",
    predictor_attribute="hardware_head",
    report=hardware_report,
    column="hardware",
)


def fit_for_model(
    model_dir: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    **options: Any,
) -> tuple[RegionHead, dict[str, Any]]:
    """Fit the body-region head (:func:`fit_head_for_model` with :data:`REGION`)."""
    head, report = fit_head_for_model(REGION, model_dir, data_root, **options)
    assert isinstance(head, RegionHead)
    return head, report


def fit_hardware_for_model(
    model_dir: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    **options: Any,
) -> tuple[HardwareHead, dict[str, Any]]:
    """Fit the hardware head (:func:`fit_head_for_model` with :data:`HARDWARE`)."""
    head, report = fit_head_for_model(HARDWARE, model_dir, data_root, **options)
    assert isinstance(head, HardwareHead)
    return head, report


def fit_head_for_model(
    kind: HeadKind,
    model_dir: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    *,
    predictor: "Predictor | None" = None,
    seed: int = 0,
    val_fraction: float = 0.15,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> tuple[FeatureHead, dict[str, Any]]:
    """Fit the ``kind`` head of the model in ``model_dir`` on ``data_root``'s labels.

    Train images fit the head; the val split measures it. Writes the head's file
    into the folder, then the card (checksums, and a summary under ``kind.card_key``
    with the val figures), each atomically. A ``predictor`` of the same folder gets
    the new head too. ``seed`` and ``val_fraction`` must be the training run's when
    the dataset has no val split on disk.
    """
    from fracture.data.layouts import load_dataset

    model_dir = Path(model_dir)
    ModelFolder(model_dir).read()  # refuse a corrupt folder before spending minutes on it
    dataset = load_dataset(data_root, val_fraction=val_fraction, seed=seed)
    train = [r for r in dataset.split("train") if kind.label(r) is not None]
    val = [r for r in dataset.split("val") if kind.label(r) is not None]
    if not train or not val:
        raise ValueError(
            f"{data_root} needs {kind.name} labels (manifest.csv's {kind.column} column) in "
            f"both its train and val splits to fit a {kind.head_type.what}"
        )
    if predictor is None:
        from fracture.inference.predictor import load_predictor

        predictor = load_predictor(model_dir)

    def progress(stage: str) -> Callable[[int, int], None] | None:
        if on_progress is None:
            return None
        return lambda done, total: on_progress(stage, done, total)

    def head_features(stage: str, records: list) -> tuple[np.ndarray, list[int]]:
        # The heads read the classifier head's own pooled features.
        by_layer, kept = extract_features(
            predictor, [r.path for r in records], on_progress=progress(stage)
        )
        return by_layer.get(POOL_LAYER, np.zeros((0, 0), np.float32)), kept

    train_features, kept = head_features("train", train)
    train_labels = [str(kind.label(train[i])) for i in kept]
    val_features, val_kept = head_features("val", val)
    val_labels = [str(kind.label(val[i])) for i in val_kept]
    precision = str(getattr(predictor, "precision", "float32"))
    head = fit_feature_head(
        train_features, train_labels, kind.head_type, fitted_precision=precision, seed=seed
    )
    report = kind.report(head, val_features, val_labels)
    report["n_train"] = len(train_labels)
    report["train_counts"] = dict(sorted(Counter(train_labels).items()))
    report["fitted_precision"] = precision
    folder = ModelFolder(model_dir)
    # As with the OOD gate: between the two atomic writes a reader sees a checksum
    # mismatch and refuses the folder, the safe side of the race.
    head.save(kind.path(folder))
    folder.rewrite_card(folder.read_card(), **{kind.card_key: report})
    loaded_dir = getattr(getattr(predictor, "loaded", None), "directory", None)
    if loaded_dir is not None and os.path.realpath(loaded_dir) == os.path.realpath(model_dir):
        setattr(predictor, kind.predictor_attribute, head)
    return head, report
