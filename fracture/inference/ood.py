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

The gate reads global-average-pooled features that the
:class:`~fracture.inference.predictor.Predictor` computes in the same forward pass as
the prediction, so it costs a few matrix products and no extra network call.

Two layers, as in Lee et al.'s feature ensemble: the head's pooled conv5 features
(2048 values) and those of ``conv4_block6_out`` (1024 values,
:data:`~fracture.model.network.EARLY_FEATURE_LAYER`). Each layer has its own Gaussian
and threshold (:class:`OODGate`), and :class:`LayeredOODGate` flags an input that
*either* flags. Why the second layer: box-supervised training moves the conv5
features of near-empty inputs towards those of normal radiographs (it penalises
evidence on normals), so a gate on conv5 alone let a text page, a near-black frame
and a smooth gradient through (scores 110-121 against a threshold of 121). Stage 4
is not trained with boxes; on its pooled features the lowest of the 31 probe
images scores 1.67 times its threshold, with 1 of 334 val normals and 0 of 74 val
fractures flagged. Lee et al. weight the layers with a regression fitted on OOD
examples; there are none to fit on here (the probes are the test), so the layers
are combined by "either", and each layer's threshold is set for the stated
false-alarm rate: the union's rate is at most their sum.
Class-conditional means, as Lee et al. do: one Gaussian per class (fracture,
normal) with a shared covariance, and an input's score is its distance to the
*nearest* class. A single Gaussian fitted to all training images put fractured
radiographs with plates, casts or several regions in its tail: on held-out
FracAtlas images it flagged 13% of the fractured ones and 0.2% of the normal
ones, so the Predict page called obvious fractures "unlike a radiograph". With
a mean per class, fractured images are measured against fractured images. The
threshold is then the largest of the per-class held-out thresholds, so that the
false-alarm rate holds within *each* class. Gates saved before (format 1, one
mean) and format 2 (one layer) still load and score as they did.

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

Storage: K = 256 axes as float16 take 1 MB for the head's 2048 features
(float32 would take 2 MB; 128 float32 axes also 1 MB but keep fewer directions),
and 0.5 MB for conv4's 1024. float16 rounding changes
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

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np

from fracture.io.files import atomic_write_npz, read_npz
from fracture.model.folder import OOD_FILE, ModelLoadError
from fracture.model.network import EARLY_FEATURE_LAYER, POOL_LAYER

__all__ = [
    "OOD_FILE",
    "DEFAULT_FALSE_ALARM_RATE",
    "DEFAULT_COMPONENTS",
    "OODGate",
    "LayeredOODGate",
    "AnyOODGate",
    "OODGateError",
    "GATE_LAYERS",
    "fit_ood_gate",
    "fit_layered_ood_gate",
    "load_ood_gate",
    "conformal_threshold",
    "as_feature_matrix",
    "DEFAULT_MARGIN",
]

logger = logging.getLogger(__name__)

# 1 %, not 5 %: on FracAtlas val the gate's false alarms fall mostly on fractured
# images (casts, hardware, several regions): at 5 % it flagged 11 of 74 fractured
# and 9 of 334 normal images, at 1 % 3 and 0, while every probe image (photos,
# documents, noise, CT, blank frames; lowest score 121 against a threshold of 105)
# is still flagged.
DEFAULT_FALSE_ALARM_RATE = 0.01
# Each threshold is this multiple of its conformal quantile. With 74 fractured val images
# the quantile at 1 % is their largest score, a noisy estimate of the tail: in split
# halves of FracAtlas val (thresholds from one half, flags counted on the other, 8
# splits) a margin of 1.0 flagged 3.6 % of the unseen fractured images and 0.5 % of the
# normal ones, 1.2 flagged 0.7 % and 0 % (held-out FracAtlas radiographs had seen 6.6 %
# of fractures flagged by the previous gate), while every probe image of
# fracture.evaluation.ood_fit still scores at least 1.39 times its threshold.
DEFAULT_MARGIN = 1.2
# 256 axes keep the directions that carry most of the variance of ResNet-50
# pooled features while the file stays at 1 MB in float16 (see module docstring).
DEFAULT_COMPONENTS = 256
_FORMAT = 2  # one layer; 2 added class_means, and format 1 files (one mean) still load
_READABLE_FORMATS = (1, 2)
_REQUIRED_FIELDS = (
    "mean",
    "components",
    "variances",
    "residual_variance",
    "threshold",
    "false_alarm_rate",
    "n_train",
)
_LAYERED_FORMAT = 3  # several layers, each an OODGate stored under "<layer>/"
# The layers a new gate reads, in order (module docstring).
GATE_LAYERS = (POOL_LAYER, EARLY_FEATURE_LAYER)
# Pooled features by layer name, as BatchOutput.gate_features gives them.
Features = Union[np.ndarray, Mapping[str, np.ndarray]]
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
    # The layer whose pooled features it reads (gates before format 3: the head's).
    layer: str = POOL_LAYER

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def score(self, pooled: Features) -> np.ndarray:
        """Mahalanobis distances (N,) of pooled features (N, D); larger is stranger.

        ``pooled`` is this layer's (N, D) matrix, or a mapping from layer names
        to such matrices (:attr:`layer` is read from it). Computed in float64. A
        row with NaN or infinite features scores NaN, and NaN compares as "not in
        distribution".
        """
        features = np.asarray(_layer_features(pooled, self.layer))
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

    def is_in_distribution(self, pooled: Features) -> np.ndarray:
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
        """Read a one-layer gate written by :meth:`save`; raises :class:`OODGateError` if it is not one.

        :func:`load_ood_gate` reads layered gates too.
        """
        stored = read_npz(
            path, what="OOD gate", required=(), formats=_READABLE_FORMATS, error=OODGateError
        )
        return cls.from_arrays(stored, path)

    @classmethod
    def from_arrays(
        cls, stored: Mapping[str, np.ndarray], where: object, layer: str = POOL_LAYER
    ) -> "OODGate":
        """The gate held by the arrays of :meth:`to_arrays`, checked; ``where`` names them in errors."""
        missing = set(_REQUIRED_FIELDS) - set(stored)
        if missing:
            raise OODGateError(
                f"{where} is not an OOD gate: {layer} lacks {', '.join(sorted(missing))}"
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
            layer=layer,
        )
        gate._validate(where)
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
            "method": f"Mahalanobis distance on pooled ResNet-50 features ({_layer_words(self.layer)}) to the nearest "
            f"{'class mean' if self.class_means is not None else 'mean'}, probabilistic "
            f"PCA with {self.n_components} axes (Lee et al. 2018; Calli et al. 2019)",
            "n_components": self.n_components,
            "n_train": self.n_train,
            "n_heldout": self.n_heldout,
            "false_alarm_rate": self.false_alarm_rate,
            "threshold": self.threshold,
        }


@dataclass(eq=False)
class LayeredOODGate:
    """One :class:`OODGate` per layer; an input is out of distribution where any of them says so.

    The score is each layer's distance divided by that layer's threshold, and the
    largest of them: above 1 (:attr:`threshold`) at least one layer flags. NaN in
    any layer scores NaN, which is "not in distribution".
    """

    parts: tuple[OODGate, ...]
    # What each layer's conformal threshold was multiplied by (DEFAULT_MARGIN); 1 for gates
    # saved before the margin existed.
    margin: float = 1.0

    threshold = 1.0

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(part.layer for part in self.parts)

    @property
    def false_alarm_rate(self) -> float:
        """The rate each layer's threshold was set for; the union's is at most their sum."""
        return max(part.false_alarm_rate for part in self.parts)

    @property
    def n_train(self) -> int:
        return self.parts[0].n_train

    @property
    def n_heldout(self) -> int:
        return self.parts[0].n_heldout

    def layer_scores(self, features: Features) -> dict[str, np.ndarray]:
        """Each layer's score divided by its threshold, (N,) per layer."""
        if not isinstance(features, Mapping):
            raise ValueError(
                f"a gate of {len(self.parts)} layers needs pooled features by layer name "
                f"({', '.join(self.layers)}), not one matrix"
            )
        return {part.layer: part.score(features) / part.threshold for part in self.parts}

    def score(self, features: Features) -> np.ndarray:
        """The largest of the layers' threshold-relative scores (N,); above 1 is flagged."""
        # np.max, not np.fmax: a NaN in any layer must stay NaN (flagged).
        return np.max(np.stack(list(self.layer_scores(features).values())), axis=0)

    def is_in_distribution(self, features: Features) -> np.ndarray:
        """Boolean (N,): True where every layer finds the input like the training radiographs."""
        return self.score(features) <= self.threshold

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {
            "format": np.array(_LAYERED_FORMAT, np.int64),
            "method": np.array(_METHOD),
            "layers": np.array(self.layers),
            "margin": np.array(self.margin, np.float64),
        }
        for part in self.parts:
            stored = part.to_arrays()
            for key in ("format", "method"):
                stored.pop(key)
            arrays.update({f"{part.layer}/{key}": value for key, value in stored.items()})
        return arrays

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the gate as an ``.npz`` file, atomically (readers never see half of it)."""
        return atomic_write_npz(path, self.to_arrays())

    def summary(self) -> dict[str, Any]:
        """The gate's settings, for the model card."""
        words = " and ".join(_layer_words(layer) for layer in self.layers)
        return {
            "method": f"Mahalanobis distance to the nearest class mean on pooled ResNet-50 "
            f"features of {len(self.parts)} layer{'s' if len(self.parts) > 1 else ''} ({words}), "
            f"each with probabilistic PCA and its own threshold; an image is flagged where any "
            f"layer flags it (Lee et al. 2018; Calli et al. 2019)",
            "layers": list(self.layers),
            "n_components": self.parts[0].n_components,
            "n_train": self.n_train,
            "n_heldout": self.n_heldout,
            "false_alarm_rate": self.false_alarm_rate,
            "margin": self.margin,
            "threshold": self.threshold,
            "layer_thresholds": {part.layer: part.threshold for part in self.parts},
        }


AnyOODGate = Union[OODGate, LayeredOODGate]


def load_ood_gate(path: str | os.PathLike[str]) -> AnyOODGate:
    """Read any gate file: one layer (formats 1, 2) or several (format 3).

    Raises :class:`OODGateError` if it is not a gate, with the reason.
    """
    stored = read_npz(
        path,
        what="OOD gate",
        required=(),
        formats=(*_READABLE_FORMATS, _LAYERED_FORMAT),
        error=OODGateError,
    )
    if int(stored["format"]) != _LAYERED_FORMAT:
        return OODGate.from_arrays(stored, path)
    if "layers" not in stored or np.asarray(stored["layers"]).ndim != 1:
        raise OODGateError(f"{path}: a layered OOD gate must list its layers")
    parts = []
    for layer in (str(name) for name in stored["layers"]):
        fields = {
            key.split("/", 1)[1]: value
            for key, value in stored.items()
            if key.startswith(f"{layer}/")
        }
        parts.append(OODGate.from_arrays(fields, path, layer=layer))
    if not parts:
        raise OODGateError(f"{path}: a layered OOD gate lists no layers")
    margin = float(stored["margin"]) if "margin" in stored else 1.0
    return LayeredOODGate(tuple(parts), margin=margin)


def _layer_features(features: Features, layer: str) -> np.ndarray:
    """``layer``'s matrix from a mapping by layer name; a bare matrix is taken as that layer's."""
    if not isinstance(features, Mapping):
        return features
    if layer not in features:
        raise ValueError(
            f"the OOD gate reads the pooled features of {layer!r}, which were not computed "
            f"(given: {', '.join(features) or 'none'})"
        )
    return features[layer]


def _layer_words(layer: str) -> str:
    if layer == POOL_LAYER:
        return "the head's conv5 features"
    return f"{layer}, stage {layer[4]}" if layer.startswith("conv") else layer


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
    layer: str = POOL_LAYER,
    margin: float = 1.0,
) -> OODGate:
    """Fit the Gaussian on ``train_features`` (N, D); set the threshold on ``heldout_features``.

    ``layer`` names the layer the features were pooled from (the gate reads it).

    ``heldout_features`` must be in-distribution images the Gaussian was not
    fitted to (the validation split), so that their scores are honest. With
    ``train_labels``, one mean per class and a shared covariance (Lee et al.
    2018); with ``heldout_labels`` too, the threshold keeps the false-alarm rate
    within each class. ``margin`` multiplies the threshold (see :data:`DEFAULT_MARGIN`).
    """
    if not margin >= 1.0:
        raise ValueError(f"margin must be at least 1, got {margin}")
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
        layer=layer,
    )
    heldout_scores = gate.score(heldout)
    if heldout_labels is None:
        gate.threshold = margin * conformal_threshold(heldout_scores, false_alarm_rate)
    else:
        groups = np.asarray(heldout_labels).astype(int)
        gate.threshold = margin * max(
            conformal_threshold(heldout_scores[groups == c], false_alarm_rate)
            for c in np.unique(groups)
        )
    gate._validate("fitted gate")
    return gate


def fit_layered_ood_gate(
    train_features: Mapping[str, np.ndarray],
    heldout_features: Mapping[str, np.ndarray],
    *,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    n_components: int = DEFAULT_COMPONENTS,
    train_labels: np.ndarray | None = None,
    heldout_labels: np.ndarray | None = None,
    layers: tuple[str, ...] = GATE_LAYERS,
    margin: float = DEFAULT_MARGIN,
) -> LayeredOODGate:
    """:func:`fit_ood_gate` for each of ``layers`` that both feature mappings hold.

    A layer missing from the features (a network without it, or a training
    cache that does not reach it) is left out with a warning in the log; the head's
    pooled features (:data:`~fracture.model.network.POOL_LAYER`) are required.
    """
    available = [layer for layer in layers if layer in train_features and layer in heldout_features]
    if POOL_LAYER not in available:
        raise ValueError(f"the OOD gate needs the head's pooled features ({POOL_LAYER!r})")
    for layer in sorted(set(layers) - set(available)):
        logger.warning(
            "OOD gate fitted without the %s layer: its features were not computed "
            "('python -m fracture ood fit DATA --model DIR' fits every layer)",
            layer,
        )
    return LayeredOODGate(
        margin=margin,
        parts=tuple(
            fit_ood_gate(
                train_features[layer],
                heldout_features[layer],
                false_alarm_rate=false_alarm_rate,
                n_components=n_components,
                train_labels=train_labels,
                heldout_labels=heldout_labels,
                layer=layer,
                margin=margin,
            )
            for layer in available
        ),
    )


def as_feature_matrix(values: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, np.float64)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty (N, D) array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return array
