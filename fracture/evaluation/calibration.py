"""Temperature scaling and the expected calibration error of a binary model.

The shipped calibration is Platt scaling (:func:`fracture.evaluation.operating_points.calibrate`,
a temperature and a bias); :func:`fit_temperature` is the one-parameter form it
generalises, kept for comparison and tests. :func:`calibrated_probability` turns
logits into probabilities and :func:`expected_calibration_error` measures them, for
the evaluation report and the K-class per-class figures. :mod:`fracture.evaluation.calibrate`
applies the calibration to a saved model.

References
----------
* Guo, Pleiss, Sun, Weinberger. On Calibration of Modern Neural Networks. ICML 2017.
  (temperature scaling)
* Naeini, Cooper, Hauskrecht. Obtaining Well Calibrated Probabilities Using
  Bayesian Binning. AAAI 2015. (expected calibration error)
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize_scalar
from scipy.special import expit
from sklearn.calibration import calibration_curve

from fracture.evaluation.checks import (
    _as_finite,
    _as_labels,
    _as_probabilities,
    _check_both_classes,
    _check_same_length,
    _temperature,
)

__all__ = [
    "fit_temperature",
    "calibrated_probability",
    "expected_calibration_error",
    "TEMPERATURE_BOUNDS",
]

# A fitted temperature outside this range means the logits are degenerate
# (e.g. a separable validation set drives T towards 0), not miscalibrated.
TEMPERATURE_BOUNDS = (0.05, 20.0)


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
