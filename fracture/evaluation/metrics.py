"""Evaluation core: calibration, operating points, metrics and the report JSON.

Pure numpy / scipy / scikit-learn, so that it is cheap to import and to test;
:mod:`fracture.evaluation.evaluate` runs the model and hands its logits to these
functions, and the dashboard plots the dictionary that
:func:`evaluation_report` returns.

Calibration (temperature scaling, the expected calibration error) lives in
:mod:`fracture.evaluation.calibration`, the input checks in
:mod:`fracture.evaluation.checks`, the plain-text report in
:mod:`fracture.evaluation.formatting` and the pointing game in
:mod:`fracture.evaluation.localisation`; their public names are re-exported here.
The order, all fitted on the validation split and applied unchanged to the test
split, is: calibrate (:func:`fracture.evaluation.operating_points.calibrate`),
choose the operating points on the calibrated val probabilities
(:func:`choose_thresholds`), then :func:`evaluation_report` on test.

References
----------
* Guo, Pleiss, Sun, Weinberger. On Calibration of Modern Neural Networks. ICML 2017.
  (temperature scaling)
* Naeini, Cooper, Hauskrecht. Obtaining Well Calibrated Probabilities Using
  Bayesian Binning. AAAI 2015. (expected calibration error)
* Efron, Tibshirani. An Introduction to the Bootstrap. Chapman & Hall 1993.
  (percentile bootstrap confidence intervals)

Every value returned is a plain Python ``int``, ``float``, ``str``, ``list``,
``dict`` or ``None`` so that ``json.dumps(..., allow_nan=False)`` succeeds:
a metric that is undefined (the AUROC of a subgroup with one class, the PPV
of an operating point that flags nothing) is ``None``, never NaN.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from fracture.evaluation.calibration import (
    TEMPERATURE_BOUNDS,
    calibrated_probability,
    expected_calibration_error,
    fit_temperature,
)
from fracture.evaluation.checks import (
    CLASS_NAMES,
    _as_finite,
    _as_labels,
    _as_probabilities,
    _check_both_classes,
    _check_same_length,
    _n_bootstrap,
    _real,
    _seed,
    _temperature,
    _threshold,
)
from fracture.evaluation.formatting import format_report
from fracture.model.reports import EvaluationReport

__all__ = [
    "fit_temperature",
    "calibrated_probability",
    "choose_thresholds",
    "binary_report",
    "expected_calibration_error",
    "subgroup_auroc",
    "evaluation_report",
    "probability_report",
    "format_report",
    "CLASS_NAMES",
    "MISSING_GROUP",
    "MAX_CURVE_POINTS",
    "TEMPERATURE_BOUNDS",
]

# Key under which cases with no group value (None / NaN) are reported.
MISSING_GROUP = "(missing)"
# ROC and PR curves can have one point per distinct score; a few hundred
# points draw the same picture and keep the report JSON small.
MAX_CURVE_POINTS = 200
REPORT_SCHEMA_VERSION = 1
_CI_LEVEL = 0.95


# --------------------------------------------------------------------------
# JSON helpers
# --------------------------------------------------------------------------


def _float(value: Any) -> float | None:
    """A plain float, or None where the value is undefined (NaN / infinite)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _thin(length: int, max_points: int = MAX_CURVE_POINTS) -> np.ndarray:
    """Evenly spaced indices into a curve, always keeping both end points."""
    if length <= max_points:
        return np.arange(length)
    return np.unique(np.round(np.linspace(0, length - 1, max_points)).astype(np.int64))


# --------------------------------------------------------------------------
# Operating points
# --------------------------------------------------------------------------


def choose_thresholds(
    probabilities: ArrayLike,
    labels: ArrayLike,
    *,
    min_sensitivity: float = 0.90,
    min_specificity: float = 0.90,
) -> dict:
    """Pick two operating points on the validation split.

    * ``high_sensitivity`` (rule-out / triage): the *highest* threshold whose
      sensitivity is at least ``min_sensitivity``, which gives the best
      specificity that the sensitivity constraint allows.
    * ``high_specificity`` (rule-in): the *lowest* threshold whose specificity
      is at least ``min_specificity``, which gives the best sensitivity that
      the specificity constraint allows.

    A case is predicted positive when ``probability >= threshold``, the same
    convention as ``sklearn.metrics.roc_curve``, whose thresholds are exactly
    the extreme thresholds of each achievable (sensitivity, specificity) pair.

    If no observed score gives the required specificity (the top-scoring case
    is normal and there are too few normal cases), the threshold is the
    smallest float above every score: it flags nothing. That is warned about,
    not hidden, because such an operating point is useless clinically.

    Returns ``{"high_sensitivity": t1, "high_specificity": t2, "targets":
    {"min_sensitivity", "min_specificity"}, "achieved": {name: {"sensitivity",
    "specificity"}}}`` with achieved values measured on these same data.
    """
    probabilities = _as_probabilities(probabilities)
    labels = _as_labels(labels)
    _check_same_length(probabilities=probabilities, labels=labels)
    _check_both_classes(labels, "choose_thresholds")
    targets = {"min_sensitivity": min_sensitivity, "min_specificity": min_specificity}
    for name, target in targets.items():
        if not 0.0 < _real(target, name) <= 1.0:
            raise ValueError(f"{name} must lie in (0, 1], got {target}")

    # drop_intermediate=False keeps every distinct score, so the first point
    # that meets a target is not thinned away.
    fpr, tpr, thresholds = roc_curve(labels, probabilities, drop_intermediate=False)
    n_positive = int(labels.sum())
    n_negative = labels.size - n_positive
    # Back to integer counts so the ratios equal, bit for bit, what anyone
    # recomputes from a confusion matrix (1 - fp/n can differ from tn/n by an ulp).
    true_positives = np.rint(tpr * n_positive).astype(np.int64)
    false_positives = np.rint(fpr * n_negative).astype(np.int64)
    sensitivity = true_positives / n_positive
    specificity = (n_negative - false_positives) / n_negative

    # roc_curve's thresholds fall, so sensitivity rises along the arrays:
    # the first index meeting the target is the highest threshold.
    meets_sensitivity = np.flatnonzero(sensitivity >= min_sensitivity)
    # Index 0 is roc_curve's +inf "flag nothing" point; min_sensitivity > 0
    # and the last point has sensitivity 1, so the index is finite and exists.
    sens_index = int(meets_sensitivity[0])

    meets_specificity = np.flatnonzero(specificity >= min_specificity)
    spec_index = int(meets_specificity[-1])  # index 0 (spec = 1) always qualifies
    achieved = {
        "high_sensitivity": {
            "sensitivity": float(sensitivity[sens_index]),
            "specificity": float(specificity[sens_index]),
        },
        "high_specificity": {
            "sensitivity": float(sensitivity[spec_index]),
            "specificity": float(specificity[spec_index]),
        },
    }
    high_sensitivity = float(thresholds[sens_index])
    if spec_index > 0:
        high_specificity = float(thresholds[spec_index])
    else:
        top = float(probabilities.max())
        if top >= 1.0:
            raise ValueError(
                f"No threshold in [0, 1] reaches specificity >= {min_specificity}: a normal "
                "case has probability 1.0 and there are too few normal cases; lower "
                "min_specificity or use a larger validation set"
            )
        high_specificity = float(np.nextafter(top, np.inf))
        warnings.warn(
            f"No observed score reaches specificity >= {min_specificity} (the highest-"
            f"scoring validation case is normal and there are only {n_negative} normal "
            "cases); the high_specificity threshold flags nothing",
            RuntimeWarning,
            stacklevel=2,
        )
    return {
        "high_sensitivity": high_sensitivity,
        "high_specificity": high_specificity,
        "targets": {name: float(value) for name, value in targets.items()},
        "achieved": achieved,
    }


def _threshold_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """Everything that depends on the threshold, from one confusion matrix.

    The ratios are taken from the counts rather than from ``recall_score`` /
    ``precision_score`` so that an empty denominator becomes ``None`` instead
    of scikit-learn's ``zero_division`` stand-in value.
    """
    predictions = (probabilities >= threshold).astype(np.int64)
    matrix = confusion_matrix(labels, predictions, labels=[0, 1])
    tn, fp, fn, tp = (int(count) for count in matrix.ravel())
    return {
        "threshold": float(threshold),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "accuracy": _ratio(tp + tn, labels.size),
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


# --------------------------------------------------------------------------
# Discrimination
# --------------------------------------------------------------------------


def _bootstrap_auroc_ci(
    labels: np.ndarray, probabilities: np.ndarray, n_bootstrap: int, seed: int
) -> tuple[list[float] | None, int]:
    """Percentile bootstrap CI of the AUROC (Efron & Tibshirani 1993).

    Cases are resampled with replacement; resamples with a single class have
    no AUROC and are skipped (and counted, so a reader can see when many
    were). Returns (``[low, high]`` or None, number of resamples used).
    """
    if n_bootstrap == 0 or labels.min() == labels.max():
        return None, 0
    rng = np.random.default_rng(seed)
    n = labels.size
    aurocs = []
    for _ in range(n_bootstrap):
        index = rng.integers(0, n, size=n)
        sample_labels = labels[index]
        n_positive = int(sample_labels.sum())
        if n_positive == 0 or n_positive == n:
            continue
        aurocs.append(roc_auc_score(sample_labels, probabilities[index]))
    if not aurocs:
        return None, 0
    tail = 100.0 * (1.0 - _CI_LEVEL) / 2.0
    low, high = np.percentile(aurocs, [tail, 100.0 - tail])
    return [float(low), float(high)], len(aurocs)


def _auroc_summary(
    labels: np.ndarray, probabilities: np.ndarray, n_bootstrap: int, seed: int
) -> dict:
    n_positive = int(labels.sum())
    single_class = n_positive in (0, labels.size)
    ci, used = _bootstrap_auroc_ci(labels, probabilities, n_bootstrap, seed)
    return {
        "n": int(labels.size),
        "n_positive": n_positive,
        "prevalence": _ratio(n_positive, labels.size),
        "auroc": None if single_class else float(roc_auc_score(labels, probabilities)),
        "auroc_ci": ci,
        "n_bootstrap_used": used,
    }


def binary_report(
    labels: ArrayLike,
    probabilities: ArrayLike,
    threshold: float,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    n_bins: int = 10,
) -> dict:
    """Discrimination, calibration and threshold metrics for one set of predictions.

    Threshold-free: ``auroc`` (``roc_auc_score``) with a seeded 95 % percentile
    bootstrap interval ``auroc_ci`` (Efron & Tibshirani 1993), ``pr_auc``
    (``average_precision_score``, more informative than AUROC when fractures
    are rare), ``brier`` (``brier_score_loss``), ``ece`` and ``reliability``
    (:func:`expected_calibration_error`), and the ``roc`` (fpr, tpr,
    thresholds) and ``pr`` (precision, recall, thresholds) curves thinned to
    at most :data:`MAX_CURVE_POINTS` points. The ROC's first threshold is
    ``None``: scikit-learn's ``+inf`` "flag nothing" point.

    At ``threshold`` (positive when ``probability >= threshold``):
    ``sensitivity``, ``specificity``, ``ppv``, ``npv``, ``accuracy`` and the
    confusion matrix as ``confusion`` ``{"tn", "fp", "fn", "tp"}`` and as
    ``confusion_matrix`` ``[[tn, fp], [fn, tp]]`` (rows true, columns
    predicted, order ``[normal, fracture]``).

    Single-class inputs are allowed (e.g. a subgroup): whatever is undefined
    is ``None``. Everything returned is JSON-serialisable without NaN.
    """
    labels = _as_labels(labels)
    probabilities = _as_probabilities(probabilities)
    _check_same_length(labels=labels, probabilities=probabilities)
    threshold = _threshold(threshold)
    n_bootstrap = _n_bootstrap(n_bootstrap)
    seed = _seed(seed)

    n = int(labels.size)
    n_positive = int(labels.sum())
    has_positive = n_positive > 0
    both_classes = 0 < n_positive < n
    summary = _auroc_summary(labels, probabilities, n_bootstrap, seed)
    ece, reliability = expected_calibration_error(labels, probabilities, n_bins)

    report: dict[str, Any] = {
        "n": n,
        "n_positive": n_positive,
        "prevalence": n_positive / n,
        "class_names": list(CLASS_NAMES),
        "auroc": summary["auroc"],
        "auroc_ci": summary["auroc_ci"],
        "ci_level": _CI_LEVEL,
        "n_bootstrap": n_bootstrap,
        "n_bootstrap_used": summary["n_bootstrap_used"],
        "bootstrap_seed": seed,
        # Average precision has no meaning without a single fracture to find.
        "pr_auc": float(average_precision_score(labels, probabilities)) if has_positive else None,
        "brier": float(brier_score_loss(labels, probabilities)),
        "ece": ece,
        "reliability": reliability,
    }
    report.update(_threshold_metrics(labels, probabilities, threshold))

    if both_classes:
        fpr, tpr, roc_thresholds = roc_curve(labels, probabilities)
        keep = _thin(fpr.size)
        report["roc"] = {
            "fpr": [float(value) for value in fpr[keep]],
            "tpr": [float(value) for value in tpr[keep]],
            "thresholds": [_float(value) for value in roc_thresholds[keep]],
        }
    else:
        report["roc"] = None
    if has_positive:
        precision, recall, pr_thresholds = precision_recall_curve(
            labels, probabilities, drop_intermediate=True
        )
        # The final (recall 0, precision 1) point has no threshold; pad so all
        # three lists line up for plotting and hover text.
        pr_thresholds = np.append(pr_thresholds, np.nan)
        keep = _thin(precision.size)
        report["pr"] = {
            "precision": [float(value) for value in precision[keep]],
            "recall": [float(value) for value in recall[keep]],
            "thresholds": [_float(value) for value in pr_thresholds[keep]],
        }
    else:
        report["pr"] = None
    return report


def _group_key(value: Any, index: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING_GROUP
    if isinstance(value, str):
        return value
    raise ValueError(
        f"groups[{index}] is {value!r} ({type(value).__name__}); group values must be "
        "str, or None / NaN for a missing value"
    )


def _group_keys(groups: Sequence[Any], n: int) -> list[str]:
    if isinstance(groups, (str, bytes)):
        raise ValueError("groups must be a sequence of group values, not a single string")
    keys = [_group_key(value, index) for index, value in enumerate(groups)]
    if len(keys) != n:
        raise ValueError(f"groups must have the same length as labels ({n}), got {len(keys)}")
    return keys


def subgroup_auroc(
    labels: ArrayLike,
    probabilities: ArrayLike,
    groups: Sequence[str | None],
    *,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, dict]:
    """AUROC per group value (e.g. anatomical region), sorted by group name.

    Each entry holds ``n``, ``n_positive``, ``prevalence``, ``auroc`` (``None``
    for a group with a single class, where it is undefined) and ``auroc_ci``
    (a percentile bootstrap interval when ``n_bootstrap > 0``, else ``None``).
    Subgroups are small, so the interval is what tells a real difference from
    noise. Missing values (None or NaN) are reported under :data:`MISSING_GROUP`.
    """
    labels = _as_labels(labels)
    probabilities = _as_probabilities(probabilities)
    n_bootstrap = _n_bootstrap(n_bootstrap)
    seed = _seed(seed)
    _check_same_length(labels=labels, probabilities=probabilities)
    keys = _group_keys(groups, labels.size)
    key_array = np.asarray(keys, dtype=object)
    summaries = {}
    for key in sorted(set(keys)):
        members = key_array == key
        summaries[key] = _auroc_summary(labels[members], probabilities[members], n_bootstrap, seed)
    return summaries


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------


def _operating_points(thresholds: Mapping[str, Any]) -> dict[str, float]:
    """The named thresholds, whether from :func:`choose_thresholds` or a model config."""
    if not isinstance(thresholds, Mapping):
        raise ValueError(f"thresholds must be a mapping of name -> threshold, got {thresholds!r}")
    # choose_thresholds' "targets" / "achieved" entries are dicts, not thresholds.
    points = {
        str(name): _threshold(value, f"thresholds[{name!r}]")
        for name, value in thresholds.items()
        if not isinstance(value, Mapping)
    }
    if not points:
        raise ValueError("thresholds holds no operating point")
    return points


def _hardware_mask(hardware: Sequence[Any], n: int) -> np.ndarray:
    """True where a case is known to have no orthopaedic hardware (metal implant)."""
    if isinstance(hardware, (str, bytes)) or len(hardware) != n:
        raise ValueError(f"hardware must be a sequence of {n} booleans")
    free = np.zeros(n, dtype=bool)
    for index, value in enumerate(hardware):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue  # unknown: in neither group
        is_flag = isinstance(value, (bool, np.bool_))
        if is_flag or (isinstance(value, numbers.Integral) and value in (0, 1)):
            free[index] = not bool(value)
        else:
            raise ValueError(
                f"hardware[{index}] is {value!r}; expected True / False (or 1 / 0, None if unknown)"
            )
    return free


def evaluation_report(
    labels: ArrayLike,
    logits: ArrayLike,
    temperature: float,
    thresholds: Mapping[str, Any],
    *,
    regions: Sequence[str | None] | None = None,
    hardware: Sequence[bool | None] | None = None,
    pointing: Mapping[str, Any] | None = None,
    operating_point: str = "high_sensitivity",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> EvaluationReport:
    """The whole evaluation JSON that the dashboard plots, for one split.

    ``logits`` are raw model outputs; they are turned into probabilities with
    ``temperature`` (fitted on validation by :func:`fit_temperature`), and
    ``thresholds`` must be on that calibrated probability scale, as returned
    by :func:`choose_thresholds` or stored in ``ModelConfig.thresholds``.

    The top level is :func:`binary_report` at ``thresholds[operating_point]``
    plus:

    * ``operating_points``: ``{name: {threshold, sensitivity, specificity,
      ppv, npv, accuracy, confusion, confusion_matrix}}`` for every threshold;
    * ``temperature``, ``operating_point``, ``schema_version``;
    * ``ece_uncalibrated``, ``brier_uncalibrated``, ``reliability_uncalibrated``:
      the same measures at ``T = 1``, to show what temperature scaling bought
      (AUROC is unchanged by construction: scaling keeps the ranking);
    * ``subgroups``: ``"region"`` (:func:`subgroup_auroc`) when ``regions``
      are given, ``"hardware_free"`` (AUROC on the cases without metal
      hardware, which otherwise makes fractures trivially easy to spot) when
      ``hardware`` is given;
    * ``pointing_game``: the :func:`pointing_game` result, when given.
    """
    labels = _as_labels(labels)
    logits = _as_finite(logits, "logits")
    _check_same_length(labels=labels, logits=logits)
    temperature = _temperature(temperature)
    return probability_report(
        labels,
        calibrated_probability(logits, temperature),
        thresholds,
        temperature=temperature,
        uncalibrated=calibrated_probability(logits, 1.0),
        regions=regions,
        hardware=hardware,
        pointing=pointing,
        operating_point=operating_point,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )


def probability_report(
    labels: ArrayLike,
    probabilities: ArrayLike,
    thresholds: Mapping[str, Any],
    *,
    temperature: float | None = None,
    uncalibrated: ArrayLike | None = None,
    regions: Sequence[str | None] | None = None,
    hardware: Sequence[bool | None] | None = None,
    pointing: Mapping[str, Any] | None = None,
    operating_point: str = "high_sensitivity",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> EvaluationReport:
    """:func:`evaluation_report` from calibrated fracture probabilities rather than logits.

    For models whose fracture probability is not one sigmoid logit: a K-class
    model's any-fracture probability, 1 - P(normal). ``temperature`` is recorded
    as given; the ``*_uncalibrated`` figures are reported when ``uncalibrated``
    (the same probabilities at ``T = 1``) is given.
    """
    labels = _as_labels(labels)
    probabilities = _as_probabilities(probabilities)
    _check_same_length(labels=labels, probabilities=probabilities)
    points = _operating_points(thresholds)
    if operating_point not in points:
        raise ValueError(
            f"operating_point {operating_point!r} is not among the thresholds {sorted(points)}"
        )
    n_bootstrap = _n_bootstrap(n_bootstrap)
    seed = _seed(seed)
    # Check the optional inputs before the bootstrap, so a bad column fails
    # in milliseconds rather than after it.
    free = _hardware_mask(hardware, labels.size) if hardware is not None else None
    if regions is not None:
        _group_keys(regions, labels.size)
    if pointing is not None:
        missing = {"hits", "n", "score"} - set(pointing)
        if missing:
            raise ValueError(f"pointing lacks {sorted(missing)}; pass pointing_game(...)'s result")

    if uncalibrated is not None:
        uncalibrated = _as_probabilities(uncalibrated, "uncalibrated")
        _check_same_length(labels=labels, uncalibrated=uncalibrated)

    report = cast(
        EvaluationReport,
        binary_report(
            labels, probabilities, points[operating_point], n_bootstrap=n_bootstrap, seed=seed
        ),
    )
    report.update(
        {
            "schema_version": REPORT_SCHEMA_VERSION,
            "temperature": temperature,
            "operating_point": operating_point,
            "operating_points": {
                name: _threshold_metrics(labels, probabilities, value)
                for name, value in points.items()
            },
        }
    )
    if uncalibrated is not None:
        ece_uncalibrated, reliability_uncalibrated = expected_calibration_error(
            labels, uncalibrated
        )
        report.update(
            {
                "ece_uncalibrated": ece_uncalibrated,
                "reliability_uncalibrated": reliability_uncalibrated,
                "brier_uncalibrated": float(brier_score_loss(labels, uncalibrated)),
            }
        )
    subgroups: dict[str, Any] = {}
    if regions is not None:
        subgroups["region"] = subgroup_auroc(
            labels, probabilities, regions, n_bootstrap=n_bootstrap, seed=seed
        )
    if free is not None:
        if free.any():
            subgroups["hardware_free"] = _auroc_summary(
                labels[free], probabilities[free], n_bootstrap, seed
            )
        else:
            subgroups["hardware_free"] = {
                "n": 0,
                "n_positive": 0,
                "prevalence": None,
                "auroc": None,
                "auroc_ci": None,
                "n_bootstrap_used": 0,
            }
    if subgroups:
        report["subgroups"] = subgroups
    if pointing is not None:
        report["pointing_game"] = dict(pointing)
    return report
