"""Evaluation for K-class models: one-vs-rest ROC, the K x K confusion matrix, per-class figures.

A K-class model (fracture types, body part crossed with normal/abnormal, a hospital's own
classes) outputs one probability per class, ``softmax(logits / T)``. The binary figures of
:mod:`fracture.evaluation.metrics` then generalise as follows:

* **Discrimination, per class**: class ``k`` against the rest, scored by ``P(k)`` (the
  one-vs-rest reduction). **Macro** AUROC averages the per-class AUROCs, so a rare class
  counts as much as a common one; **micro** AUROC pools every (case, class) pair into one
  binary problem, so common classes dominate. Both are reported because they disagree
  exactly when a rare class is poorly recognised (Fawcett, "An introduction to ROC
  analysis", Pattern Recognition Letters 27, 2006; the definitions scikit-learn follows).
* **Decisions**: the predicted class is the most probable one (``argmax``; on an exact tie
  the first class in the model's order). The K x K confusion matrix has true classes in rows
  and predicted classes in columns; per class, sensitivity (recall) is the diagonal over the
  row sum and precision the diagonal over the column sum. A class that is never predicted
  has no precision (``None``, not scikit-learn's stand-in 0): nothing was claimed, so
  nothing was right or wrong.
* **Agreement**: Cohen's kappa on the predicted classes (Cohen, "A coefficient of agreement
  for nominal scales", Educational and Psychological Measurement 20, 1960).
* **Calibration, per class**: the binary ECE of ``(label == k, P(k))`` for every class, and
  their mean, the classwise ECE (Kull, Perello-Nieto, Kängsepp et al., "Beyond temperature
  scaling: Obtaining well-calibrated multiclass probabilities with Dirichlet calibration",
  NeurIPS 2019). Confidence ECE (top class only) would hide a class that is always
  over-confident behind the others.

The counts are computed here from the labels (``np.bincount``) rather than taken from
scikit-learn, so that the tests comparing them with scikit-learn compare two computations.
Every value returned is JSON-ready (plain ``int``, ``float``, ``str``, ``list``, ``dict``
or ``None``), like :mod:`fracture.evaluation.metrics`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score, roc_curve

from fracture.evaluation.metrics import MAX_CURVE_POINTS, expected_calibration_error

__all__ = [
    "multiclass_report",
    "confusion_matrix_k",
    "per_class_metrics",
    "one_vs_rest_auroc",
    "classwise_ece",
    "cohen_kappa",
    "format_multiclass",
    "PROBABILITY_SUM_TOLERANCE",
]

# Softmax outputs sum to 1 up to float32 rounding; more than this is not a probability vector.
PROBABILITY_SUM_TOLERANCE = 1e-3


# --------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------


def _class_labels(labels: ArrayLike, n_classes: int) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.number) or not np.all(array == np.round(array)):
            raise ValueError(f"labels must be class indices 0..{n_classes - 1}, got {array.dtype}")
    array = array.astype(np.int64)
    bad = (array < 0) | (array >= n_classes)
    if bad.any():
        raise ValueError(
            f"labels must be class indices 0..{n_classes - 1}; found {int(array[bad][0])} "
            f"({int(bad.sum())} invalid value(s))"
        )
    return array


def _probability_matrix(probabilities: ArrayLike) -> np.ndarray:
    array = np.asarray(probabilities, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] < 2:
        raise ValueError(
            f"probabilities must be an (N, K) array with K >= 2 classes, got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError("probabilities contain NaN or infinite values")
    if array.min() < 0.0 or array.max() > 1.0:
        raise ValueError("probabilities must lie in [0, 1]; pass logits through a softmax first")
    worst = float(np.max(np.abs(array.sum(axis=1) - 1.0)))
    if worst > PROBABILITY_SUM_TOLERANCE:
        raise ValueError(
            f"each row of probabilities must sum to 1 (worst row is off by {worst:.3g})"
        )
    return array


def _names(class_names: Sequence[str] | None, n_classes: int) -> list[str]:
    if class_names is None:
        return [f"class {index}" for index in range(n_classes)]
    names = [str(name) for name in class_names]
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for {n_classes} probability columns")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, got {names}")
    return names


def _inputs(labels: ArrayLike, probabilities: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    matrix = _probability_matrix(probabilities)
    classes = _class_labels(labels, matrix.shape[1])
    if classes.size != matrix.shape[0]:
        raise ValueError(f"{classes.size} labels for {matrix.shape[0]} rows of probabilities")
    return classes, matrix


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _thin(length: int) -> np.ndarray:
    if length <= MAX_CURVE_POINTS:
        return np.arange(length)
    return np.unique(np.round(np.linspace(0, length - 1, MAX_CURVE_POINTS)).astype(np.int64))


# --------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------


def confusion_matrix_k(labels: ArrayLike, predicted: ArrayLike, n_classes: int) -> np.ndarray:
    """The K x K confusion matrix, rows = true class, columns = predicted class (int64).

    Every class has its row and column, including one that never occurs or is never
    predicted, so matrices of two models over the same classes line up.
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, numbers.Integral) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    truth = _class_labels(labels, int(n_classes))
    guess = _class_labels(predicted, int(n_classes))
    if truth.size != guess.size:
        raise ValueError(f"{truth.size} labels for {guess.size} predictions")
    # One bincount over the flattened (true, predicted) cell index.
    cells = np.bincount(truth * n_classes + guess, minlength=n_classes * n_classes)
    return cells.reshape(n_classes, n_classes).astype(np.int64)


def per_class_metrics(matrix: ArrayLike) -> list[dict[str, Any]]:
    """Support, sensitivity (recall) and precision per class, from a confusion matrix.

    ``None`` where the denominator is empty: sensitivity of a class with no true cases,
    precision of a class never predicted.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {counts.shape}")
    rows, columns = counts.sum(axis=1), counts.sum(axis=0)
    return [
        {
            "n": int(rows[k]),
            "n_predicted": int(columns[k]),
            "true_positives": int(counts[k, k]),
            "sensitivity": _ratio(int(counts[k, k]), int(rows[k])),
            "precision": _ratio(int(counts[k, k]), int(columns[k])),
        }
        for k in range(counts.shape[0])
    ]


def cohen_kappa(matrix: ArrayLike) -> float | None:
    """Cohen's kappa from a confusion matrix: ``(p_o - p_e) / (1 - p_e)`` (Cohen 1960).

    ``p_o`` is the observed agreement (the diagonal's share) and ``p_e`` the agreement
    expected by chance from the row and column totals. ``None`` when chance agreement is
    already perfect (both raters used one and the same class), where kappa is 0 / 0.
    """
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {counts.shape}")
    total = counts.sum()
    if total == 0:
        return None
    observed = np.trace(counts) / total
    expected = float(np.dot(counts.sum(axis=1), counts.sum(axis=0))) / total**2
    if expected >= 1.0:
        return None
    return float((observed - expected) / (1.0 - expected))


# --------------------------------------------------------------------------
# Discrimination and calibration
# --------------------------------------------------------------------------


def one_vs_rest_auroc(labels: ArrayLike, probabilities: ArrayLike) -> dict[str, Any]:
    """Per-class one-vs-rest AUROC, their macro average and the micro AUROC.

    ``per_class`` holds ``None`` for a class that is absent or the only one present
    (its AUROC is undefined); ``macro`` averages the defined ones (``n_macro`` says
    how many) and is ``None`` when none is. ``micro`` is the AUROC of every
    (case, class) pair: ``label == k`` scored by ``P(k)``.
    """
    classes, matrix = _inputs(labels, probabilities)
    n_classes = matrix.shape[1]
    indicator = classes[:, None] == np.arange(n_classes)[None, :]
    per_class: list[float | None] = []
    for k in range(n_classes):
        positives = int(indicator[:, k].sum())
        if positives in (0, classes.size):
            per_class.append(None)
        else:
            per_class.append(float(roc_auc_score(indicator[:, k], matrix[:, k])))
    defined = [value for value in per_class if value is not None]
    # Always defined: every row contributes one positive pair and K - 1 negative ones.
    micro = float(roc_auc_score(indicator.ravel(), matrix.ravel()))
    return {
        "per_class": per_class,
        "macro": float(np.mean(defined)) if defined else None,
        "n_macro": len(defined),
        "micro": micro,
    }


def classwise_ece(
    labels: ArrayLike, probabilities: ArrayLike, n_bins: int = 10
) -> tuple[float, list[float]]:
    """Classwise ECE (Kull et al., NeurIPS 2019) and the ECE of each class.

    Class ``k``'s ECE is the binary :func:`~fracture.evaluation.metrics.expected_calibration_error`
    of ``(label == k, P(k))``, on the same equal-width bins; the classwise ECE is their mean.
    """
    classes, matrix = _inputs(labels, probabilities)
    per_class = [
        expected_calibration_error((classes == k).astype(np.int64), matrix[:, k], n_bins)[0]
        for k in range(matrix.shape[1])
    ]
    return float(np.mean(per_class)), [float(value) for value in per_class]


def _roc_curves(classes: np.ndarray, matrix: np.ndarray) -> list[dict[str, list] | None]:
    curves: list[dict[str, list] | None] = []
    for k in range(matrix.shape[1]):
        is_k = classes == k
        if is_k.all() or not is_k.any():
            curves.append(None)
            continue
        fpr, tpr, _ = roc_curve(is_k, matrix[:, k])
        keep = _thin(fpr.size)
        curves.append({"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()})
    return curves


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------


def multiclass_report(
    labels: ArrayLike,
    probabilities: ArrayLike,
    class_names: Sequence[str] | None = None,
    *,
    n_bins: int = 10,
) -> dict[str, Any]:
    """Everything the Model page and ``evaluate`` show for a K-class model, on one split.

    ``labels`` are class indices into ``class_names`` (the model's order), and
    ``probabilities`` the calibrated ``(N, K)`` softmax outputs. Returns:

    * ``class_names``, ``n``, ``accuracy`` (top class right), ``kappa``;
    * ``auroc_macro``, ``auroc_micro``, ``n_auroc_macro`` (classes the macro mean covers);
    * ``classwise_ece``;
    * ``confusion_matrix``: K x K lists, rows true, columns predicted (top class);
    * ``per_class``: one dict per class, in order: ``name``, ``n``, ``n_predicted``,
      ``true_positives``, ``sensitivity``, ``precision``, ``auroc``, ``ece`` and ``roc``
      (``{"fpr", "tpr"}`` thinned to :data:`MAX_CURVE_POINTS`, or ``None``).
    """
    classes, matrix = _inputs(labels, probabilities)
    n_classes = matrix.shape[1]
    names = _names(class_names, n_classes)
    # argmax takes the first maximum: ties go to the class listed first.
    predicted = np.argmax(matrix, axis=1)
    confusion = confusion_matrix_k(classes, predicted, n_classes)
    aurocs = one_vs_rest_auroc(classes, matrix)
    mean_ece, eces = classwise_ece(classes, matrix, n_bins)
    curves = _roc_curves(classes, matrix)
    per_class = [
        {
            "name": name,
            **counts,
            "auroc": aurocs["per_class"][k],
            "ece": eces[k],
            "roc": curves[k],
        }
        for k, (name, counts) in enumerate(zip(names, per_class_metrics(confusion)))
    ]
    return {
        "class_names": names,
        "n": int(classes.size),
        "accuracy": float(np.trace(confusion) / classes.size),
        "kappa": cohen_kappa(confusion),
        "auroc_macro": aurocs["macro"],
        "auroc_micro": aurocs["micro"],
        "n_auroc_macro": aurocs["n_macro"],
        "classwise_ece": mean_ece,
        "confusion_matrix": confusion.tolist(),
        "per_class": per_class,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_multiclass(report: dict[str, Any]) -> str:
    """Plain-text summary of :func:`multiclass_report`: averages, a per-class table, the matrix."""
    names = report["class_names"]
    lines = [
        f"Classes        {len(names)}: {', '.join(names)}",
        f"AUROC          macro {_fmt(report['auroc_macro'])}  micro {_fmt(report['auroc_micro'])}",
        f"Accuracy       {_fmt(report['accuracy'])}  (most probable class)",
        f"Cohen's kappa  {_fmt(report['kappa'])}",
        f"Classwise ECE  {_fmt(report['classwise_ece'])}",
        "",
    ]
    width = max(12, *(len(name) for name in names))
    header = f"{'class':<{width}} {'n':>6} {'AUROC':>6} {'sens':>6} {'prec':>6} {'ECE':>6}"
    lines.append(header)
    for entry in report["per_class"]:
        lines.append(
            f"{entry['name']:<{width}} {entry['n']:>6} {_fmt(entry['auroc']):>6} "
            f"{_fmt(entry['sensitivity']):>6} {_fmt(entry['precision']):>6} "
            f"{_fmt(entry['ece']):>6}"
        )
    cell = max(6, *(len(str(v)) for row in report["confusion_matrix"] for v in row))
    lines += ["", "Confusion matrix (rows: true class, columns: predicted class):"]
    lines.append(" " * width + "".join(f" {name[:cell]:>{cell}}" for name in names))
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(f"{name:<{width}}" + "".join(f" {value:>{cell}}" for value in row))
    return "\n".join(lines)
