"""Out-of-distribution gate: flag inputs that do not look like the training radiographs.

A fracture classifier answers "fracture" or "normal" for *any* picture it is
given, a cat photo included, often with high confidence (Hendrycks and Gimpel,
"A Baseline for Detecting Misclassified and Out-of-Distribution Examples in
Neural Networks", ICLR 2017). This module adds a second opinion that needs no
extra training data: the Mahalanobis distance of an input's pooled ResNet-50
features from the distribution of the training set's features.

Method
------
* Lee, Lee, Lee and Shin, "A Simple Unified Framework for Detecting
  Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018: fit a
  Gaussian to a trained network's features and score an input by its
  Mahalanobis distance to it.
* Çallı, Murphy, Sogancioglu and van Ginneken, "FRODO: Free rejection of
  out-of-distribution samples: application to chest x-ray analysis",
  arXiv:1907.01253, 2019: the same distance rejects non-chest-X-ray inputs
  of a radiograph classifier without any OOD examples at training time.

Only the global-average-pooled features (2048 values) are used, because the
:class:`~fracture.inference.predictor.Predictor` computes them in the same forward pass as
the prediction, so the gate costs a matrix product and no extra network call.
Class-conditional means, as Lee et al. do: one Gaussian per class (fracture,
normal) with a shared covariance, and an input's score is its distance to the
*nearest* class. A single Gaussian fitted to all training images put fractured
radiographs with plates, casts or several regions in its tail: on held-out
FracAtlas images it flagged 13% of the fractured ones and 0.2% of the normal
ones, so the Predict page called obvious fractures "unlike a radiograph". With
a mean per class, fractured images are measured against fractured images. The
threshold is then the largest of the per-class held-out thresholds, so that the
false-alarm rate holds within *each* class. Gates saved before (format 1, one
mean) still load and score as they did.

Covariance estimate: probabilistic PCA
--------------------------------------
With D = 2048 dimensions and a few thousand training images, the sample
covariance is nearly singular: its smallest eigenvalues are estimation noise,
and inverting them makes the distance explode along directions the training
set simply did not sample. Some shrinkage is required. The gate uses
probabilistic PCA (Tipping and Bishop, "Probabilistic Principal Component
Analysis", J R Stat Soc B 61(3), 1999): the top K principal axes keep their
own variances, and the remaining D - K directions share one variance, the mean
of the discarded eigenvalues (the maximum-likelihood estimate). The squared
distance is therefore

    d^2(x) = sum_k z_k^2 / lambda_k  +  ||r||^2 / sigma^2

with ``z`` the projection of ``x - mean`` on the K axes and ``r`` the rest.
The residual term matters: Kamoi and Kobayashi ("Why is the Mahalanobis
Distance Effective for Anomaly Detection?", arXiv:2003.00402, 2020) show that
much of the Mahalanobis distance's power comes from the low-variance
directions, which plain "PCA to K dimensions" would throw away. Equalising
those directions' variances is the same kind of shrinkage as Ledoit-Wolf's
(which shrinks *all* eigenvalues towards their mean), but it needs only K x D
numbers on disk instead of a 2048 x 2048 precision matrix (16 MB in float32).

Storage: K = 256 axes as float16 take 1 MB (float32 would take 2 MB; 128
float32 axes also 1 MB but keep fewer directions). float16 rounding changes
the axes by about 1e-3 relative; this cannot bias the gate because the
variances and the threshold are computed *with the rounded axes*, so the
stored gate is calibrated exactly as shipped (the same rule as
:func:`fracture.model.folder.quantise_like_saved`).

Threshold
---------
Fitted on the training split, the distance would be optimistic on the very
images it was fitted to, so the threshold is chosen on *held-out*
in-distribution features (the validation split) for a stated false-alarm rate
alpha (default 1 %, see DEFAULT_FALSE_ALARM_RATE): the ceil((n + 1)(1 - alpha))-th
smallest held-out score, the split-conformal quantile (Vovk, Gammerman and
Shafer, "Algorithmic Learning in a Random World", 2005; Angelopoulos and Bates,
arXiv:2107.07511), which for exchangeable new in-distribution images keeps the
false-alarm rate at or below alpha. For n = 400 it is the 99th percentile up to
one rank.

The gate does not say that an in-distribution image is classified correctly,
and a flagged image is not necessarily unusual to a radiologist: it is
unusual to *this model*. It is a warning, not a diagnosis.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fracture.io.files import atomic_write_npz, read_npz
from fracture.model.folder import OOD_FILE, ModelLoadError

__all__ = [
    "OOD_FILE",
    "DEFAULT_FALSE_ALARM_RATE",
    "DEFAULT_COMPONENTS",
    "OODGate",
    "OODGateError",
    "fit_ood_gate",
    "conformal_threshold",
    "as_feature_matrix",
]

# 1 %, not 5 %: on FracAtlas val the gate's false alarms fall mostly on fractured
# images (casts, hardware, several regions): at 5 % it flagged 11 of 74 fractured
# and 9 of 334 normal images, at 1 % 3 and 0, while every probe image (photos,
# documents, noise, CT, blank frames; lowest score 121 against a threshold of 105)
# is still flagged.
DEFAULT_FALSE_ALARM_RATE = 0.01
# 256 axes keep the directions that carry most of the variance of ResNet-50
# pooled features while the file stays at 1 MB in float16 (see module docstring).
DEFAULT_COMPONENTS = 256
_FORMAT = 2  # 2 added class_means; format 1 files (one mean) still load
_READABLE_FORMATS = (1, 2)
_METHOD = "ppca-mahalanobis"
# Rows scored at once: bounds the float64 temporaries to about 16 MB.
_SCORE_CHUNK = 1024
# The smallest variance any direction may have, relative to the mean variance:
# keeps the distance finite when the training set is smaller than K (tests,
# tiny datasets) and some directions have no spread at all.
_VARIANCE_FLOOR = 1e-6


class OODGateError(ModelLoadError):
    """An OOD gate file is unreadable, missing fields, of an unknown format, or inconsistent.

    A :class:`~fracture.model.folder.ModelLoadError`, because the gate is part of the
    model folder: callers that already report a bad model folder cleanly (the
    CLI, the dashboard) report a bad gate the same way.
    """


@dataclass(eq=False)  # arrays inside: field-wise == would be ambiguous
class OODGate:
    """Mahalanobis distance to the training features under a probabilistic-PCA Gaussian.

    ``score`` gives the distance; inputs with ``score <= threshold`` are in
    distribution. ``components`` has orthonormal rows (up to float16 rounding)
    holding the principal axes of the training features, ``variances`` the
    variance along each, and ``residual_variance`` the shared variance of all
    other directions. Arrays are kept in their storage dtype so that a loaded
    gate scores bit for bit like the one that was saved.
    """

    mean: np.ndarray  # (D,) float32
    components: np.ndarray  # (K, D) float16
    variances: np.ndarray  # (K,) float32
    residual_variance: float
    threshold: float
    false_alarm_rate: float
    n_train: int
    n_heldout: int = 0
    # (C, D) float32: one mean per class (Lee et al. 2018); the score is the distance
    # to the nearest. None: one Gaussian around ``mean`` (gates of format 1).
    class_means: np.ndarray | None = None

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def score(self, pooled: np.ndarray) -> np.ndarray:
        """Mahalanobis distances (N,) of pooled features (N, D); larger is stranger.

        Computed in float64. A row with NaN or infinite features scores NaN,
        and NaN compares as "not in distribution".
        """
        features = np.asarray(pooled)
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(
                f"expected pooled features of shape (N, {self.n_features}), got {features.shape}"
            )
        centres = (self.mean[None] if self.class_means is None else self.class_means).astype(
            np.float64
        )
        axes = self.components.astype(np.float64)
        inverse_variances = 1.0 / self.variances.astype(np.float64)
        residual_variance = float(self.residual_variance)
        out = np.empty(features.shape[0], np.float64)
        for start in range(0, features.shape[0], _SCORE_CHUNK):
            chunk = features[start : start + _SCORE_CHUNK].astype(np.float64)
            distances = []
            for centre in centres:
                centred = chunk - centre
                projected = centred @ axes.T
                # The residual is measured directly, not as |x|^2 - |z|^2, so that
                # float16 axes that are not exactly orthonormal cannot make it negative.
                residual = centred - projected @ axes
                squared = (
                    projected**2 @ inverse_variances
                    + np.einsum("ij,ij->i", residual, residual) / residual_variance
                )
                distances.append(squared)
            # The nearest class; a NaN row stays NaN (np.min propagates it).
            out[start : start + _SCORE_CHUNK] = np.sqrt(np.min(distances, axis=0))
        return out

    def is_in_distribution(self, pooled: np.ndarray) -> np.ndarray:
        """Boolean (N,): True where the input looks like the training radiographs."""
        return self.score(pooled) <= self.threshold

    # ------------------------------------------------------------------ persistence

    def to_arrays(self) -> dict[str, np.ndarray]:
        extra = (
            {} if self.class_means is None else {"class_means": self.class_means.astype(np.float32)}
        )
        return {
            **extra,
            "format": np.array(_FORMAT, np.int64),
            "method": np.array(_METHOD),
            "mean": self.mean.astype(np.float32),
            "components": self.components.astype(np.float16),
            "variances": self.variances.astype(np.float32),
            "residual_variance": np.array(self.residual_variance, np.float64),
            "threshold": np.array(self.threshold, np.float64),
            "false_alarm_rate": np.array(self.false_alarm_rate, np.float64),
            "n_train": np.array(self.n_train, np.int64),
            "n_heldout": np.array(self.n_heldout, np.int64),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the gate as an ``.npz`` file, atomically (readers never see half of it)."""
        return atomic_write_npz(path, self.to_arrays())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "OODGate":
        """Read a gate written by :meth:`save`; raises :class:`OODGateError` if it is not one."""
        stored = read_npz(
            path,
            what="OOD gate",
            required=(
                "mean",
                "components",
                "variances",
                "residual_variance",
                "threshold",
                "false_alarm_rate",
                "n_train",
            ),
            formats=_READABLE_FORMATS,
            error=OODGateError,
        )
        gate = cls(
            mean=stored["mean"].astype(np.float32),
            components=stored["components"].astype(np.float16),
            variances=stored["variances"].astype(np.float32),
            residual_variance=float(stored["residual_variance"]),
            threshold=float(stored["threshold"]),
            false_alarm_rate=float(stored["false_alarm_rate"]),
            n_train=int(stored["n_train"]),
            n_heldout=int(stored["n_heldout"]) if "n_heldout" in stored else 0,
            class_means=(
                stored["class_means"].astype(np.float32) if "class_means" in stored else None
            ),
        )
        gate._validate(path)
        return gate

    def _validate(self, where: object) -> None:
        k, d = self.components.shape if self.components.ndim == 2 else (-1, -1)
        if self.mean.ndim != 1 or d != self.mean.shape[0] or self.variances.shape != (k,):
            raise OODGateError(
                f"{where}: inconsistent OOD gate shapes (mean {self.mean.shape}, "
                f"components {self.components.shape}, variances {self.variances.shape})"
            )
        if self.class_means is not None and (
            self.class_means.ndim != 2 or self.class_means.shape[1] != d
        ):
            raise OODGateError(f"{where}: class means of shape {self.class_means.shape} do not fit")
        if not (np.all(self.variances > 0) and self.residual_variance > 0):
            raise OODGateError(f"{where}: OOD gate variances must be positive")
        if not (math.isfinite(self.threshold) and 0.0 < self.false_alarm_rate < 1.0):
            raise OODGateError(f"{where}: OOD gate threshold or false-alarm rate is invalid")

    def summary(self) -> dict[str, Any]:
        """The gate's settings, for the model card."""
        return {
            "method": f"Mahalanobis distance on pooled ResNet-50 features to the nearest "
            f"{'class mean' if self.class_means is not None else 'mean'}, probabilistic "
            f"PCA with {self.n_components} axes (Lee et al. 2018; Calli et al. 2019)",
            "n_components": self.n_components,
            "n_train": self.n_train,
            "n_heldout": self.n_heldout,
            "false_alarm_rate": self.false_alarm_rate,
            "threshold": self.threshold,
        }


# --------------------------------------------------------------------------- fitting


def conformal_threshold(heldout_scores: np.ndarray, false_alarm_rate: float) -> float:
    """The ceil((n + 1)(1 - alpha))-th smallest held-out score (split-conformal quantile).

    When that rank exceeds n (alpha < 1 / (n + 1)) no finite threshold has the
    guarantee; the largest score is returned, and the false-alarm rate is then
    only about 1 / (n + 1).
    """
    scores = np.sort(np.asarray(heldout_scores, np.float64))
    if scores.size == 0:
        raise ValueError("no held-out scores to choose a threshold from")
    if not np.all(np.isfinite(scores)):
        raise ValueError("held-out scores contain NaN or infinite values")
    rank = math.ceil((scores.size + 1) * (1.0 - false_alarm_rate))
    return float(scores[min(max(rank, 1), scores.size) - 1])


def fit_ood_gate(
    train_features: np.ndarray,
    heldout_features: np.ndarray,
    *,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    n_components: int = DEFAULT_COMPONENTS,
    train_labels: np.ndarray | None = None,
    heldout_labels: np.ndarray | None = None,
) -> OODGate:
    """Fit the Gaussian on ``train_features`` (N, D); set the threshold on ``heldout_features``.

    ``heldout_features`` must be in-distribution images the Gaussian was not
    fitted to (the validation split), so that their scores are honest. With
    ``train_labels``, one mean per class and a shared covariance (Lee et al.
    2018); with ``heldout_labels`` too, the threshold keeps the false-alarm rate
    within each class.
    """
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
    train = as_feature_matrix(train_features, "train_features")
    heldout = as_feature_matrix(heldout_features, "heldout_features")
    if train.shape[1] != heldout.shape[1]:
        raise ValueError(
            f"train has {train.shape[1]} features per row, held-out {heldout.shape[1]}"
        )
    if train.shape[0] < 2:
        raise ValueError(f"need at least 2 training rows, got {train.shape[0]}")
    if n_components < 1:
        raise ValueError(f"n_components must be at least 1, got {n_components}")
    n, d = train.shape
    mean64 = train.mean(axis=0)
    class_means = None
    if train_labels is not None:
        labels = np.asarray(train_labels).astype(int)
        if labels.shape != (n,):
            raise ValueError(f"train_labels has shape {labels.shape}, expected ({n},)")
        classes = np.unique(labels)
        class_means = np.stack([train[labels == c].mean(axis=0) for c in classes]).astype(
            np.float32
        )
        # Within-class scatter: the shared covariance of Lee et al.
        centred = train - class_means.astype(np.float64)[np.searchsorted(classes, labels)]
    else:
        centred = train - mean64
    # Principal axes from the SVD of the centred data: no D x D matrix is formed.
    singular, vt = np.linalg.svd(centred, full_matrices=False)[1:]
    rank = int(np.sum(singular > singular[0] * max(n, d) * np.finfo(np.float64).eps))
    # At most half the training rows: with fewer rows than dimensions the
    # residual variance must still be estimated from data, not from the floor.
    k = int(max(1, min(n_components, rank, (n - 1) // 2, d - 1)))
    # Round to the storage dtypes first and estimate everything else with the
    # rounded values, so that the saved gate is the calibrated one.
    mean = mean64.astype(np.float32)
    components = vt[:k].astype(np.float16)
    axes = components.astype(np.float64)
    if class_means is None:
        centred = train - mean.astype(np.float64)
    projected = centred @ axes.T
    residual = centred - projected @ axes
    total_variance = float(np.einsum("ij,ij->", centred, centred)) / (n - 1)
    floor = _VARIANCE_FLOOR * max(total_variance / d, np.finfo(np.float64).tiny)
    variances = np.maximum((projected**2).sum(axis=0) / (n - 1), floor)
    # PPCA's maximum-likelihood sigma^2: the discarded variance spread evenly.
    residual_energy = float(np.einsum("ij,ij->", residual, residual)) / (n - 1)
    residual_variance = max(residual_energy / (d - k), floor)
    gate = OODGate(
        mean=mean,
        components=components,
        variances=variances.astype(np.float32),
        residual_variance=residual_variance,
        threshold=math.inf,
        false_alarm_rate=float(false_alarm_rate),
        n_train=int(n),
        n_heldout=int(heldout.shape[0]),
        class_means=class_means,
    )
    heldout_scores = gate.score(heldout)
    if heldout_labels is None:
        gate.threshold = conformal_threshold(heldout_scores, false_alarm_rate)
    else:
        groups = np.asarray(heldout_labels).astype(int)
        gate.threshold = max(
            conformal_threshold(heldout_scores[groups == c], false_alarm_rate)
            for c in np.unique(groups)
        )
    gate._validate("fitted gate")
    return gate


def as_feature_matrix(values: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, np.float64)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty (N, D) array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return array
