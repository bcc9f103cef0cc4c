"""Evaluation core: calibration, operating points, metrics and the report JSON.

Pure numpy / scipy / scikit-learn, so that it is cheap to import and to test;
:mod:`fracture.evaluation.evaluate` runs the model and hands its logits to these
functions, and the dashboard plots the dictionary that
:func:`evaluation_report` returns.

The intended order, all fitted on the validation split and applied unchanged
to the test split, is::

    T = fit_temperature(val_logits, val_labels)                  # Guo et al. 2017
    ops = choose_thresholds(calibrated_probability(val_logits, T), val_labels)
    report = evaluation_report(test_labels, test_logits, T, ops, regions=..., hardware=...)
    print(format_report(report))

References
----------
* Guo, Pleiss, Sun, Weinberger. On Calibration of Modern Neural Networks. ICML 2017.
  (temperature scaling)
* Naeini, Cooper, Hauskrecht. Obtaining Well Calibrated Probabilities Using
  Bayesian Binning. AAAI 2015. (expected calibration error)
* Zhang, Lin, Brandt, Shen, Sclaroff. Top-down Neural Attention by Excitation
  Backprop. ECCV 2016. (pointing game)
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
from collections.abc import Mapping, Sequence, Sized
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize_scalar
from scipy.special import expit
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "fit_temperature",
    "calibrated_probability",
    "choose_thresholds",
    "binary_report",
    "expected_calibration_error",
    "subgroup_auroc",
    "map_peak",
    "point_in_boxes",
    "pointing_game",
    "evaluation_report",
    "probability_report",
    "format_report",
    "CLASS_NAMES",
    "MISSING_GROUP",
    "MAX_CURVE_POINTS",
    "TEMPERATURE_BOUNDS",
]

# Label order everywhere (confusion matrices included): 0 = normal, 1 = fracture.
CLASS_NAMES = ("normal", "fracture")
# Key under which cases with no group value (None / NaN) are reported.
MISSING_GROUP = "(missing)"
# ROC and PR curves can have one point per distinct score; a few hundred
# points draw the same picture and keep the report JSON small.
MAX_CURVE_POINTS = 200
# A fitted temperature outside this range means the logits are degenerate
# (e.g. a separable validation set drives T towards 0), not miscalibrated.
TEMPERATURE_BOUNDS = (0.05, 20.0)
REPORT_SCHEMA_VERSION = 1
_CI_LEVEL = 0.95


# --------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------


def _as_1d(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    return array


def _as_labels(labels: ArrayLike, name: str = "labels") -> np.ndarray:
    array = _as_1d(labels, name)
    if array.dtype == bool:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be 0 (normal) / 1 (fracture), got dtype {array.dtype}")
    bad = ~np.isin(array, (0, 1))  # NaN is caught here too: it is neither 0 nor 1
    if bad.any():
        example = array[bad][0]
        raise ValueError(
            f"{name} must be 0 (normal) / 1 (fracture); found {example!r} "
            f"({int(bad.sum())} invalid value(s))"
        )
    return array.astype(np.int64)


def _as_finite(values: ArrayLike, name: str) -> np.ndarray:
    array = _as_1d(values, name)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        count = int((~np.isfinite(array)).sum())
        raise ValueError(f"{name} contains {count} NaN or infinite value(s)")
    return array


def _as_probabilities(values: ArrayLike, name: str = "probabilities") -> np.ndarray:
    array = _as_finite(values, name)
    if array.min() < 0.0 or array.max() > 1.0:
        raise ValueError(
            f"{name} must lie in [0, 1], got range [{array.min():.6g}, {array.max():.6g}]; "
            "pass logits through calibrated_probability first"
        )
    return array


def _check_same_length(**arrays: Sized) -> None:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{name}={length}" for name, length in lengths.items())
        raise ValueError(f"Inputs must have the same length, got {described}")


def _check_both_classes(labels: np.ndarray, purpose: str) -> None:
    n_positive = int(labels.sum())
    if n_positive == 0 or n_positive == labels.size:
        only = CLASS_NAMES[int(labels[0])]
        raise ValueError(
            f"{purpose} needs both normal and fracture cases, but all {labels.size} "
            f"labels are {only!r}"
        )


def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _temperature(value: Any) -> float:
    temperature = _real(value, "temperature")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return temperature


def _threshold(value: Any, name: str = "threshold") -> float:
    threshold = _real(value, name)
    # Probabilities live in [0, 1]; a threshold outside it is almost always a
    # unit mistake (a percentage, or a logit) rather than a deliberate choice.
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {threshold}")
    return threshold


def _n_bootstrap(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"n_bootstrap must be a non-negative integer, got {value!r}")
    return int(value)


def _seed(value: Any) -> int:
    # None would draw fresh OS entropy: a report that cannot be reproduced.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value!r}")
    return int(value)


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
# Calibration
# --------------------------------------------------------------------------


def _mean_nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    # -log sigmoid(s * z / T) with s = +1 for fractures, -1 for normals;
    # logaddexp(0, -x) = log(1 + e^-x) never overflows, unlike log(sigmoid(x)).
    signs = 2.0 * labels - 1.0
    return float(np.mean(np.logaddexp(0.0, -signs * logits / temperature)))


def fit_temperature(logits: ArrayLike, labels: ArrayLike) -> float:
    """Fit the temperature ``T > 0`` that minimises the binary NLL of ``sigmoid(logits / T)``.

    Temperature scaling (Guo et al., ICML 2017) is the one-parameter Platt
    scaling that fixes the over-confidence of fine-tuned deep networks without
    moving any decision boundary: dividing every logit by the same ``T`` keeps
    the ranking, so AUROC is unchanged, while probabilities become honest.
    Fit it on the validation split, never on test.

    The search runs over ``log T`` (bounded to :data:`TEMPERATURE_BOUNDS`) so
    that shrinking and stretching by the same factor are equally easy to find;
    the NLL is convex in ``1/T`` and therefore unimodal in ``log T``, which is
    what Brent's bounded method needs to find the global minimum.

    Raises ``ValueError`` for empty, mismatched or non-finite inputs and when
    the labels hold a single class (the NLL then falls for ever as T -> 0 or
    infinity). Warns when the optimum sits at a bound, which usually means a
    separable (too small or leaked) validation set.
    """
    logits = _as_finite(logits, "logits")
    labels = _as_labels(labels)
    _check_same_length(logits=logits, labels=labels)
    _check_both_classes(labels, "fit_temperature")

    low, high = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    result = minimize_scalar(
        lambda log_t: _mean_nll(logits, labels, math.exp(log_t)),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-6},
    )
    if not result.success:  # pragma: no cover - bounded Brent does not fail on a smooth 1-D loss
        raise RuntimeError(f"Temperature fit did not converge: {result.message}")
    temperature = math.exp(float(result.x))
    if min(result.x - low, high - result.x) < 1e-3:
        warnings.warn(
            f"Fitted temperature {temperature:.3g} is at the search bound "
            f"{TEMPERATURE_BOUNDS}; the validation logits are probably separable "
            "or degenerate, so the calibration is not trustworthy",
            RuntimeWarning,
            stacklevel=2,
        )
    return temperature


def calibrated_probability(logits: ArrayLike, temperature: float) -> np.ndarray:
    """Fracture probability ``sigmoid(logits / temperature)``, any input shape.

    ``scipy.special.expit`` is exact in both tails (no overflow warning for
    large negative logits, no rounding of small probabilities to 0 sooner than
    float64 must), which matters for NLL and for thresholds chosen near 0 or 1.
    """
    temperature = _temperature(temperature)
    array = np.asarray(logits, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError("logits contain NaN or infinite values")
    return expit(array / temperature)


def expected_calibration_error(
    labels: ArrayLike, probabilities: ArrayLike, n_bins: int = 10
) -> tuple[float, dict]:
    """Expected calibration error over equal-width bins, and the reliability curve.

    ``ECE = sum_b (n_b / N) * |acc_b - conf_b|`` (Naeini et al., AAAI 2015;
    the form used by Guo et al. 2017), where ``acc_b`` is the observed fracture
    frequency and ``conf_b`` the mean predicted probability in bin ``b``.
    Bins are those of ``sklearn.calibration.calibration_curve(strategy="uniform")``:
    ``[0, 1/n]``, ``(1/n, 2/n]``, ..., ``((n-1)/n, 1]``.

    The reliability dict has one entry per bin (empty bins included, as
    ``None``) so the dashboard can draw bars against fixed edges:
    ``bin_edges`` (n_bins + 1), ``mean_predicted``, ``observed_frequency``,
    ``counts``, ``n_bins``.
    """
    labels = _as_labels(labels)
    probabilities = _as_probabilities(probabilities)
    _check_same_length(labels=labels, probabilities=probabilities)
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    n_bins = int(n_bins)

    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # calibration_curve returns means for non-empty bins only and no counts;
    # the counts come from the very same bin rule (searchsorted on the inner
    # edges), so the two line up bin for bin.
    bin_ids = np.searchsorted(edges[1:-1], probabilities)
    counts = np.bincount(bin_ids, minlength=n_bins)
    observed, predicted = calibration_curve(
        labels, probabilities, n_bins=n_bins, strategy="uniform"
    )
    occupied = counts > 0
    own_predicted = np.bincount(bin_ids, weights=probabilities, minlength=n_bins)[occupied]
    if observed.size != occupied.sum() or not np.allclose(
        predicted, own_predicted / counts[occupied]
    ):  # pragma: no cover - guards against scikit-learn changing its bin rule
        raise RuntimeError("calibration_curve binning no longer matches the ECE counts")

    weights = counts[occupied] / labels.size
    ece = float(np.sum(weights * np.abs(observed - predicted)))
    mean_predicted: list[float | None] = [None] * n_bins
    observed_frequency: list[float | None] = [None] * n_bins
    for index, conf, acc in zip(np.flatnonzero(occupied), predicted, observed):
        mean_predicted[index] = float(conf)
        observed_frequency[index] = float(acc)
    reliability = {
        "n_bins": n_bins,
        "bin_edges": [float(edge) for edge in edges],
        "mean_predicted": mean_predicted,
        "observed_frequency": observed_frequency,
        "counts": [int(count) for count in counts],
    }
    return ece, reliability


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
# Localisation
# --------------------------------------------------------------------------


def _boxes(value: Any, index: int) -> np.ndarray:
    boxes = np.asarray(value if value is not None else [], dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"boxes[{index}] must be a sequence of (x0, y0, x1, y1) boxes, got shape {boxes.shape}"
        )
    if not np.isfinite(boxes).all():
        raise ValueError(f"boxes[{index}] contains NaN or infinite coordinates")
    if boxes.min() < 0.0 or boxes.max() > 1.0:
        raise ValueError(
            f"boxes[{index}] must be normalised to [0, 1], got range "
            f"[{boxes.min():.6g}, {boxes.max():.6g}]"
        )
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise ValueError(f"boxes[{index}] has a box with x1 < x0 or y1 < y0")
    return boxes


def map_peak(cam: np.ndarray) -> tuple[float, float] | None:
    """Where a map points: the normalised centre ``(x, y)`` of its maximum, None when flat.

    Pixel (row, col) becomes ``((col + 0.5) / W, (row + 0.5) / H)``; among tied
    maxima the first in row-major order is used. A constant map has no peak, so a
    dead Grad-CAM cannot point anywhere by luck.
    """
    cam = np.asarray(cam, dtype=np.float64)
    if cam.size == 0 or cam.max() == cam.min():
        return None
    row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
    height, width = cam.shape
    return (col + 0.5) / width, (row + 0.5) / height


def point_in_boxes(
    point: Sequence[float],
    boxes: Sequence[Sequence[float]] | np.ndarray,
    *,
    tolerance: float = 0.0,
) -> bool:
    """Whether a normalised point lies in any ``(x0, y0, x1, y1)`` box grown by ``tolerance``.

    Edges are inclusive. The one rule for a hit, whether the point is a heat
    map's peak (:func:`pointing_game`) or where a student clicked (the Learn page).
    """
    x, y = float(point[0]), float(point[1])
    return any(
        x0 - tolerance <= x <= x1 + tolerance and y0 - tolerance <= y <= y1 + tolerance
        for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    )


def pointing_game(
    cams: Sequence[np.ndarray | None],
    boxes: Sequence[Sequence[tuple[float, float, float, float]]],
    *,
    tolerance: float = 0.0,
) -> dict:
    """Pointing-game localisation score of class-activation maps (Zhang et al. 2016).

    For each image with at least one ground-truth box, the map "points" at its
    maximum: pixel (row, col) becomes the normalised centre
    ``(x, y) = ((col + 0.5) / W, (row + 0.5) / H)``, and it is a hit when that
    point lies in any box ``(x0, y0, x1, y1)`` (normalised, edges inclusive)
    grown by ``tolerance`` on every side. Zhang et al. allowed 15 pixels; here
    the tolerance is in normalised units so it does not depend on image size.

    The maps must cover the same extent as the image the boxes are normalised
    to: map Grad-CAM back with :func:`fracture.inference.preprocess.unletterbox`
    first, or the letterbox padding shifts every point. Images without boxes
    are not counted (their map may be ``None``). A constant map has no peak and
    counts as a miss, so a dead Grad-CAM cannot score by luck; among tied
    maxima the first in row-major order is used.

    Returns ``{"hits", "n", "score", "tolerance"}``; ``score`` is ``None`` when
    no image has a box.
    """
    tolerance = _real(tolerance, "tolerance")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    _check_same_length(cams=cams, boxes=boxes)

    hits = 0
    counted = 0
    for index, (cam, raw_boxes) in enumerate(zip(cams, boxes)):
        image_boxes = _boxes(raw_boxes, index)
        if image_boxes.shape[0] == 0:
            continue
        if cam is None:
            raise ValueError(f"cams[{index}] is None but image {index} has boxes")
        cam = np.asarray(cam, dtype=np.float64)
        if cam.ndim != 2 or cam.size == 0:
            raise ValueError(
                f"cams[{index}] must be a non-empty 2-D (H, W) map, got shape {cam.shape}"
            )
        if not np.isfinite(cam).all():
            # np.argmax would treat NaN as the maximum and point at it.
            raise ValueError(f"cams[{index}] contains NaN or infinite values")
        counted += 1
        peak = map_peak(cam)
        hits += peak is not None and point_in_boxes(peak, image_boxes, tolerance=tolerance)
    return {
        "hits": hits,
        "n": counted,
        "score": hits / counted if counted else None,
        "tolerance": tolerance,
    }


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
) -> dict:
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
) -> dict:
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

    report = binary_report(
        labels, probabilities, points[operating_point], n_bootstrap=n_bootstrap, seed=seed
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


# --------------------------------------------------------------------------
# Terminal output
# --------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_ci(ci: Sequence[float] | None) -> str:
    return "" if not ci else f"[95% CI {_fmt(ci[0])}-{_fmt(ci[1])}]"


def _confusion_table(confusion: Mapping[str, int]) -> list[str]:
    cells = [str(confusion[key]) for key in ("tn", "fp", "fn", "tp")]
    width = max(len("fracture"), *(len(cell) for cell in cells))
    corner = "true \\ pred"
    rule = "+" + "-" * 15 + ("+" + "-" * (width + 2)) * 2 + "+"
    return [
        rule,
        f"| {corner:<13} | {'normal':>{width}} | {'fracture':>{width}} |",
        rule,
        f"| {'normal':<13} | {cells[0]:>{width}} | {cells[1]:>{width}} |",
        f"| {'fracture':<13} | {cells[2]:>{width}} | {cells[3]:>{width}} |",
        rule,
    ]


def _subgroup_line(label: str, entry: Mapping[str, Any]) -> str:
    return (
        f"  {label:<24} n={entry['n']:>5}  fractures={entry['n_positive']:>4}  "
        f"AUROC {_fmt(entry.get('auroc'))} {_fmt_ci(entry.get('auroc_ci'))}".rstrip()
    )


def format_report(report: Mapping[str, Any]) -> str:
    """A plain-text summary of :func:`evaluation_report` (or :func:`binary_report`) output.

    AUROC with its bootstrap interval, PR-AUC, Brier and ECE (before and after
    temperature scaling when known), one line per operating point, the
    confusion matrix at the main operating point as a 2x2 table, subgroup
    AUROCs and the pointing game when present. ASCII only, so it survives any
    terminal or log file.
    """
    lines = [
        f"Cases: {report['n']}  (fractures {report['n_positive']}, "
        f"prevalence {_fmt(report.get('prevalence'))})",
        f"AUROC        {_fmt(report.get('auroc'))} {_fmt_ci(report.get('auroc_ci'))}".rstrip(),
        f"PR-AUC       {_fmt(report.get('pr_auc'))}",
    ]
    brier = f"Brier        {_fmt(report.get('brier'))}"
    ece = f"ECE          {_fmt(report.get('ece'))}"
    if "brier_uncalibrated" in report:
        brier += f"  (before temperature scaling {_fmt(report['brier_uncalibrated'])})"
    if "ece_uncalibrated" in report:
        ece += f"  (before temperature scaling {_fmt(report['ece_uncalibrated'])})"
    lines += [brier, ece]
    if "temperature" in report:
        lines.append(f"Temperature  {_fmt(report['temperature'])}")

    main_name = report.get("operating_point", "threshold")
    points = report.get("operating_points") or {main_name: report}
    header = ("Operating point", "threshold", "sens", "spec", "PPV", "NPV")
    lines += ["", f"{header[0]:<20} {header[1]:>9}" + "".join(f" {h:>6}" for h in header[2:])]
    for name, point in points.items():
        marker = " *" if name == main_name and len(points) > 1 else ""
        lines.append(
            f"{name + marker:<20} {_fmt(point['threshold'], 4):>9} {_fmt(point['sensitivity']):>6} "
            f"{_fmt(point['specificity']):>6} {_fmt(point.get('ppv')):>6} "
            f"{_fmt(point.get('npv')):>6}"
        )
    if len(points) > 1:
        lines.append("(* main operating point)")
    lines += ["", f"Confusion matrix at {main_name} (threshold {_fmt(report['threshold'], 4)}):"]
    lines += _confusion_table(report["confusion"])

    subgroups = report.get("subgroups") or {}
    if subgroups:
        lines += ["", "Subgroups:"]
        for group, entry in (subgroups.get("region") or {}).items():
            lines.append(_subgroup_line(f"region {group}", entry))
        if "hardware_free" in subgroups:
            lines.append(_subgroup_line("without hardware", subgroups["hardware_free"]))
    pointing = report.get("pointing_game")
    if pointing:
        lines += [
            "",
            f"Pointing game: {pointing['hits']}/{pointing['n']} hits, "
            f"score {_fmt(pointing['score'])}",
        ]
    located = report.get("localisation")
    if located and located["pointing_game"]["n"]:
        tolerant, drawn = located["pointing_game_tolerant"], located["drawn_box_hit_rate"]
        lines += [
            f"Pointing game within {tolerant['tolerance']:.0%} of the side: "
            f"{tolerant['hits']}/{tolerant['n']} hits, score {_fmt(tolerant['rate'])} "
            f"{_fmt_ci(tolerant['ci'])}",
            f"Heat-map energy inside the boxes: {_fmt(located['energy_inside_boxes'])}",
            f"Drawn box hits a true box (IoU >= {drawn['min_iou']}): "
            f"{drawn['hits']}/{drawn['n']}, rate {_fmt(drawn['rate'])} {_fmt_ci(drawn['ci'])}",
        ]
    return "\n".join(lines)
