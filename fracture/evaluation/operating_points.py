"""Calibration and operating points that hold on unseen images.

Two weaknesses of fitting both on one small validation split, measured on
held-out FracAtlas radiographs with the previous default model:

* the high-sensitivity threshold, the highest one keeping 90% sensitivity on 74
  val fractures, sits on one or two fractured cases: it gave specificity 0.69
  where a threshold tuned on the held-out images gave 0.84 at 0.90 sensitivity;
* temperature scaling after removing the class-weighting prior shift left a
  bias (mean probability 0.245 against a prevalence of 0.172, ECE 0.073).

Hence:

* :func:`fit_platt`: Platt scaling, ``p = sigmoid(a z + b)`` (Platt, "Probabilistic
  Outputs for Support Vector Machines", 1999): a temperature (``1 / a``) *and* a
  bias (``-b / a``), which removes the bias that temperature alone cannot. It maps
  onto ``ModelConfig.temperature`` and ``ModelConfig.prior_shift`` exactly.
* :func:`out_of_fold_probabilities`: the honest ECE of that calibration, each
  val image calibrated by a fit that did not see it (k-fold cross-fitting).
* :func:`stable_thresholds`: each operating point is the median over stratified
  bootstrap resamples of val of the threshold the rule picks (bagging; Breiman
  1996), instead of the single pick on val, which one or two cases decide.
* :func:`threshold_intervals`: bootstrap 95% intervals of sensitivity and
  specificity at a stored threshold, so the card says how far they can move.
* :func:`fit_localiser_weight`: for a model with a localisation head, Platt scaling
  on two inputs, the classifier's logit and the head's peak centre logit (stacked
  generalisation; Wolpert 1992). It becomes ``ModelConfig.localiser_weight``, and
  :func:`calibrate` keeps it only where the out-of-fold AUROC says it helps.

A K-class model (``ModelConfig.classes``) is calibrated by :func:`calibrate_classes`:
one temperature for all K logits, ``softmax(z / T)`` (Guo et al., "On Calibration
of Modern Neural Networks", ICML 2017). Platt's bias has no K-class counterpart
that keeps the top class, so there is none. Its operating points are on the
probability of any fracture, 1 - P(normal), where a normal class exists.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from scipy.special import expit

__all__ = [
    "Calibration",
    "calibrate",
    "calibrate_classes",
    "fit_softmax_temperature",
    "fit_platt",
    "platt_probability",
    "out_of_fold_probabilities",
    "fit_localiser_weight",
    "stable_thresholds",
    "threshold_intervals",
]

# Bounds on Platt's slope: a slope at a bound means separable or degenerate data.
_SLOPE_BOUNDS = (1e-3, 1e3)
# Bounds on a K-class temperature, in the same spirit.
_TEMPERATURE_BOUNDS = (1e-2, 1e2)
PLATT_METHOD = "Platt scaling (a temperature and a bias), fitted on val"
SOFTMAX_METHOD = "Temperature scaling of the class logits, softmax(logits / T), fitted on val"


def fit_platt(logits: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Maximum-likelihood Platt scaling, returned as ``(temperature, shift)``.

    ``sigmoid((z - shift) / temperature)`` equals Platt's ``sigmoid(a z + b)``
    with ``temperature = 1 / a`` and ``shift = -b / a``. The slope is kept
    positive, so the ranking (and AUROC) never changes.
    """
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    if z.ndim != 1 or z.shape != y.shape or z.size == 0:
        raise ValueError(f"need matching 1-D logits and labels, got {z.shape} and {y.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinite values")
    if not (0 < y.sum() < y.size):
        raise ValueError("Platt scaling needs both classes among the labels")
    signs = 2.0 * y - 1.0

    def nll(params: np.ndarray) -> float:
        return float(np.mean(np.logaddexp(0.0, -signs * (params[0] * z + params[1]))))

    def gradient(params: np.ndarray) -> np.ndarray:
        weight = -signs * expit(-signs * (params[0] * z + params[1]))
        return np.array([np.mean(weight * z), np.mean(weight)])

    result = minimize(
        nll,
        x0=np.array([1.0, 0.0]),
        jac=gradient,
        method="L-BFGS-B",
        bounds=[_SLOPE_BOUNDS, (-50.0, 50.0)],
    )
    slope, intercept = (float(v) for v in result.x)
    if min(abs(math.log(slope / bound)) for bound in _SLOPE_BOUNDS) < 1e-3:
        warnings.warn(
            f"Platt slope {slope:.3g} is at its bound; the validation logits are "
            "separable or degenerate, so the calibration is not trustworthy",
            RuntimeWarning,
            stacklevel=2,
        )
    return 1.0 / slope, -intercept / slope


def platt_probability(logits: ArrayLike, temperature: float, shift: float) -> np.ndarray:
    """``sigmoid((logits - shift) / temperature)``."""
    return expit((np.asarray(logits, np.float64) - shift) / temperature)


def fit_localiser_weight(logits: ArrayLike, peaks: ArrayLike, labels: ArrayLike) -> float:
    """The weight ``w`` of the localisation head's peak in the logit ``z + w * peak``.

    Maximum-likelihood logistic regression of the labels on the classifier's raw
    logit ``z`` and the head's peak centre logit, ``sigmoid(a z + b peak + c)``; the
    weight is ``b / a``, so that Platt scaling of ``z + w * peak`` (:func:`fit_platt`)
    is the same fit. ``b`` is kept at 0 or above: a head whose peak counted *against*
    a fracture would be a broken head, not evidence.
    """
    z = np.asarray(logits, np.float64)
    m = np.asarray(peaks, np.float64)
    y = np.asarray(labels, np.float64)
    if z.ndim != 1 or z.shape != m.shape or z.shape != y.shape or z.size == 0:
        raise ValueError(
            f"need matching 1-D logits, peaks and labels, got {z.shape}, {m.shape}, {y.shape}"
        )
    if not (np.isfinite(z).all() and np.isfinite(m).all()):
        raise ValueError("logits or peaks contain NaN or infinite values")
    if not (0 < y.sum() < y.size):
        raise ValueError("fitting the localiser's weight needs both classes among the labels")
    signs = 2.0 * y - 1.0
    # Standardised inputs keep L-BFGS well conditioned; the weight is scale-free.
    z_scale, m_scale = max(float(z.std()), 1e-9), max(float(m.std()), 1e-9)
    zs, ms = z / z_scale, m / m_scale

    def nll(params: np.ndarray) -> float:
        return float(
            np.mean(np.logaddexp(0.0, -signs * (params[0] * zs + params[1] * ms + params[2])))
        )

    def gradient(params: np.ndarray) -> np.ndarray:
        weight = -signs * expit(-signs * (params[0] * zs + params[1] * ms + params[2]))
        return np.array([np.mean(weight * zs), np.mean(weight * ms), np.mean(weight)])

    result = minimize(
        nll,
        x0=np.array([1.0, 0.0, 0.0]),
        jac=gradient,
        method="L-BFGS-B",
        bounds=[_SLOPE_BOUNDS, (0.0, 1e3), (-50.0, 50.0)],
    )
    a, b = float(result.x[0]) / z_scale, float(result.x[1]) / m_scale
    return b / a


def out_of_fold_probabilities(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    peaks: ArrayLike | None = None,
    folds: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Each image's probability from a Platt fit on the other folds (stratified k-fold).

    With ``peaks`` (the localisation head's), the localiser's weight is refitted on
    the other folds too (:func:`fit_localiser_weight`), so nothing about an image's
    own label reaches its probability.
    """
    from sklearn.model_selection import StratifiedKFold

    z = np.asarray(logits, np.float64)
    y = np.asarray(labels).astype(int)
    m = None if peaks is None else np.asarray(peaks, np.float64)
    folds = int(min(folds, np.bincount(y, minlength=2).min()))
    if folds < 2:
        raise ValueError("out-of-fold calibration needs at least 2 images of each class")
    out = np.empty_like(z)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for fitted, held in splitter.split(z, y):
        fused = z
        if m is not None:
            fused = z + fit_localiser_weight(z[fitted], m[fitted], y[fitted]) * m
        temperature, shift = fit_platt(fused[fitted], y[fitted])
        out[held] = platt_probability(fused[held], temperature, shift)
    return out


def stable_thresholds(
    probabilities: ArrayLike,
    labels: ArrayLike,
    choose: Callable[[np.ndarray, np.ndarray], dict[str, Any]],
    *,
    names: tuple[str, ...] = ("high_sensitivity", "high_specificity"),
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """The median, over stratified bootstrap resamples, of each threshold ``choose`` picks.

    ``choose(probabilities, labels)`` returns ``{name: threshold}`` (for example
    :func:`fracture.evaluation.metrics.choose_thresholds`). Resampling within each
    class keeps the prevalence fixed.
    """
    p = np.asarray(probabilities, np.float64)
    y = np.asarray(labels).astype(int)
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if positives.size == 0 or negatives.size == 0:
        raise ValueError("thresholds need both classes among the labels")
    rng = np.random.default_rng(seed)
    picks: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(n_bootstrap):
        rows = np.concatenate(
            [rng.choice(positives, positives.size), rng.choice(negatives, negatives.size)]
        )
        with warnings.catch_warnings():
            # An unreachable target on one resample is expected; the median absorbs it.
            warnings.simplefilter("ignore", RuntimeWarning)
            chosen = choose(p[rows], y[rows])
        for name in names:
            picks[name].append(float(chosen[name]))
    thresholds = {name: float(np.median(values)) for name, values in picks.items()}
    sensitive, specific = thresholds.get("high_sensitivity"), thresholds.get("high_specificity")
    if sensitive is not None and specific is not None and sensitive > specific:
        # Scores that separate the classes leave a gap: the highest threshold keeping the
        # sensitivity target can then sit above the lowest one reaching the specificity
        # target. Lowering it to the latter keeps its sensitivity (a lower threshold only
        # finds more) and keeps the order the page relies on (dotted box, then solid).
        thresholds["high_sensitivity"] = specific
    return thresholds


def threshold_intervals(
    probabilities: ArrayLike,
    labels: ArrayLike,
    threshold: float,
    *,
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Sensitivity and specificity at ``threshold`` with bootstrap 95% intervals.

    A case is positive when ``probability >= threshold``. Each class is resampled
    on its own (sensitivity depends only on fractured cases, specificity only on
    normal ones).
    """
    p = np.asarray(probabilities, np.float64)
    y = np.asarray(labels).astype(int)
    fractured, normal = p[y == 1], p[y == 0]
    if fractured.size == 0 or normal.size == 0:
        raise ValueError("intervals need both classes among the labels")
    rng = np.random.default_rng(seed)

    def interval(values: np.ndarray, positive: bool) -> list[float]:
        draws = rng.choice(values, (n_bootstrap, values.size))
        rates = ((draws >= threshold) if positive else (draws < threshold)).mean(axis=1)
        return [float(np.quantile(rates, 0.025)), float(np.quantile(rates, 0.975))]

    return {
        "threshold": float(threshold),
        "sensitivity": float(np.mean(fractured >= threshold)),
        "sensitivity_ci": interval(fractured, True),
        "specificity": float(np.mean(normal < threshold)),
        "specificity_ci": interval(normal, False),
        "n_fractured": int(fractured.size),
        "n_normal": int(normal.size),
    }


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` fits on val: the probability map and both operating points."""

    temperature: float
    shift: float  # ModelConfig.prior_shift: p = sigmoid((logit - shift) / temperature)
    thresholds: dict[str, float]
    ece_before: float  # sigmoid of the raw logit
    ece_in_sample: float  # fitted and measured on the same images
    ece_out_of_fold: float  # each image calibrated by a fit that did not see it
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)
    # K classes: the ECE is of the top class's probability against whether it was right.
    method: str = PLATT_METHOD
    # ModelConfig.localiser_weight (0: the classifier's logit alone), and the
    # out-of-fold AUROCs that decided it (empty without a localisation head).
    localiser_weight: float = 0.0
    auroc_out_of_fold: dict[str, float] = field(default_factory=dict)

    def probability(self, logits: ArrayLike) -> np.ndarray:
        """Binary models: the calibrated fracture probability of raw logits."""
        return platt_probability(logits, self.temperature, self.shift)

    def summary(self) -> dict[str, Any]:
        """For the model card and evaluation.json."""
        return {
            "method": self.method,
            "temperature": self.temperature,
            "shift": self.shift,
            "ece_before": self.ece_before,
            "ece_after_in_sample": self.ece_in_sample,
            "ece_after_out_of_fold": self.ece_out_of_fold,
            "threshold_method": "median over stratified bootstrap resamples of val",
            "operating_points": self.intervals,
            **(
                {
                    "localiser_weight": self.localiser_weight,
                    "auroc_out_of_fold": self.auroc_out_of_fold,
                }
                if self.auroc_out_of_fold
                else {}
            ),
        }


def calibrate(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    peaks: ArrayLike | None = None,
    seed: int = 0,
    n_bootstrap: int = 1000,
) -> Calibration:
    """The one calibration of a model: Platt scaling and bootstrap-stable thresholds on val.

    ``logits`` are the network's raw fracture logits on the validation images.
    ``peaks``, for a model with a localisation head, are the head's peak centre
    logits: their weight in the logit (:func:`fit_localiser_weight`) is kept only
    where the out-of-fold AUROC with it beats the classifier's alone, and both
    AUROCs are reported. Training and ``python -m fracture calibrate`` both call this.
    """
    from sklearn.metrics import roc_auc_score

    from fracture.evaluation.metrics import choose_thresholds, expected_calibration_error

    z = np.asarray(logits, np.float64)
    y = np.asarray(labels).astype(int)
    # Each val image's probability from a fit that did not see it: the classifier's logit
    # alone, and (with a head) with the head's peak weighted in, the weight refitted too.
    out_of_fold = out_of_fold_probabilities(z, y, seed=seed)
    weight, aurocs = 0.0, {}
    if peaks is not None:
        m = np.asarray(peaks, np.float64)
        with_peak = out_of_fold_probabilities(z, y, peaks=m, seed=seed)
        aurocs = {
            "classifier": float(roc_auc_score(y, out_of_fold)),
            "with_localiser": float(roc_auc_score(y, with_peak)),
        }
        if aurocs["with_localiser"] > aurocs["classifier"]:
            weight = fit_localiser_weight(z, m, y)
            z, out_of_fold = z + weight * m, with_peak
    temperature, shift = fit_platt(z, y)
    probabilities = platt_probability(z, temperature, shift)
    thresholds = stable_thresholds(
        probabilities, y, choose_thresholds, n_bootstrap=n_bootstrap, seed=seed
    )
    method = PLATT_METHOD
    if aurocs:
        compared = (
            f"out-of-fold val AUROC {aurocs['with_localiser']:.3f} with the head's peak, "
            f"{aurocs['classifier']:.3f} without"
        )
        method = (
            f"Platt scaling (a temperature and a bias) of the classifier's logit plus "
            f"{weight:.2f} x the localisation head's peak centre logit, fitted on val ({compared})"
            if weight
            else f"{PLATT_METHOD}; the localisation head's peak was left out ({compared})"
        )
    return Calibration(
        temperature=temperature,
        shift=shift,
        thresholds=thresholds,
        method=method,
        ece_before=expected_calibration_error(y, expit(z))[0],
        ece_in_sample=expected_calibration_error(y, probabilities)[0],
        ece_out_of_fold=expected_calibration_error(y, out_of_fold)[0],
        intervals={
            name: threshold_intervals(probabilities, y, value, seed=seed)
            for name, value in thresholds.items()
        },
        localiser_weight=weight,
        auroc_out_of_fold=aurocs,
    )


def fit_softmax_temperature(logits: ArrayLike, labels: ArrayLike) -> float:
    """The temperature ``T`` minimising the mean NLL of ``softmax(logits / T)`` (K classes).

    One parameter, so it cannot change which class is on top; searched on log T.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    z = np.asarray(logits, np.float64)
    y = np.asarray(labels).astype(int)
    if z.ndim != 2 or z.shape[0] != y.shape[0] or z.shape[0] == 0:
        raise ValueError(f"need (n, K) logits and n labels, got {z.shape} and {y.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinite values")
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-np.mean(log_softmax(z / math.exp(log_t), axis=1)[rows, y]))

    low, high = (math.log(bound) for bound in _TEMPERATURE_BOUNDS)
    result = minimize_scalar(nll, bounds=(low, high), method="bounded")
    temperature = math.exp(float(result.x))
    if min(abs(float(result.x) - low), abs(float(result.x) - high)) < 1e-3:
        warnings.warn(
            f"Temperature {temperature:.3g} is at its bound; the validation logits are "
            "separable or degenerate, so the calibration is not trustworthy",
            RuntimeWarning,
            stacklevel=2,
        )
    return temperature


def _top_class_ece(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """ECE of the top class's probability against whether it was right (Guo et al. 2017)."""
    from fracture.evaluation.metrics import expected_calibration_error

    correct = (probabilities.argmax(axis=1) == labels).astype(int)
    return expected_calibration_error(correct, probabilities.max(axis=1))[0]


def calibrate_classes(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    normal_index: int | None,
    seed: int = 0,
    n_bootstrap: int = 1000,
    folds: int = 5,
) -> Calibration:
    """The calibration of a K-class model: a temperature, and any-fracture thresholds.

    ``logits`` (n, K) are the network's raw logits on val, ``labels`` the class
    indices. With a ``normal_index``, both operating points are fitted, as for the
    binary model, on 1 - P(normal) against "not normal"; without one there are none.
    """
    from scipy.special import softmax
    from sklearn.model_selection import StratifiedKFold

    from fracture.evaluation.metrics import choose_thresholds

    z = np.asarray(logits, np.float64)
    y = np.asarray(labels).astype(int)
    temperature = fit_softmax_temperature(z, y)
    probabilities = softmax(z / temperature, axis=1)
    out_of_fold = np.empty_like(probabilities)
    folds = int(min(folds, np.bincount(y, minlength=z.shape[1]).min()))
    if folds >= 2:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
        for fitted, held in splitter.split(z, y):
            held_temperature = fit_softmax_temperature(z[fitted], y[fitted])
            out_of_fold[held] = softmax(z[held] / held_temperature, axis=1)
    else:  # a class with one val image: no honest estimate, so say the in-sample one
        out_of_fold = probabilities
    thresholds: dict[str, float] = {}
    intervals: dict[str, dict[str, Any]] = {}
    if normal_index is not None:
        any_fracture = 1.0 - probabilities[:, normal_index]
        fractured = (y != normal_index).astype(int)
        thresholds = stable_thresholds(
            any_fracture, fractured, choose_thresholds, n_bootstrap=n_bootstrap, seed=seed
        )
        intervals = {
            name: threshold_intervals(any_fracture, fractured, value, seed=seed)
            for name, value in thresholds.items()
        }
    return Calibration(
        temperature=temperature,
        shift=0.0,
        thresholds=thresholds,
        ece_before=_top_class_ece(softmax(z, axis=1), y),
        ece_in_sample=_top_class_ece(probabilities, y),
        ece_out_of_fold=_top_class_ece(out_of_fold, y),
        intervals=intervals,
        method=SOFTMAX_METHOD,
    )
