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
A single Gaussian is fitted (no class-conditional means as in Lee et al.):
both classes are radiographs of the same body parts, and the question asked is
"is this a bone radiograph at all", not "which class is closest".

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
:func:`fracture.model.network.quantise_like_saved`).

Threshold
---------
Fitted on the training split, the distance would be optimistic on the very
images it was fitted to, so the threshold is chosen on *held-out*
in-distribution features (the validation split) for a stated false-alarm rate
alpha (default 5 %): the ceil((n + 1)(1 - alpha))-th smallest held-out score,
the split-conformal quantile (Vovk, Gammerman and Shafer, "Algorithmic
Learning in a Random World", 2005; Angelopoulos and Bates, arXiv:2107.07511),
which for exchangeable new in-distribution images keeps the false-alarm rate
at or below alpha. For n = 400 it is the 95th percentile up to one rank.

The gate does not say that an in-distribution image is classified correctly,
and a flagged image is not necessarily unusual to a radiologist: it is
unusual to *this model*. It is a warning, not a diagnosis.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from fracture.io.files import atomic_write_bytes
from fracture.model.network import CARD_JSON, OOD_FILE, ModelLoadError

if TYPE_CHECKING:
    from fracture.inference.predictor import Predictor

__all__ = [
    "OOD_FILE",
    "DEFAULT_FALSE_ALARM_RATE",
    "DEFAULT_COMPONENTS",
    "OODGate",
    "OODGateError",
    "fit_ood_gate",
    "conformal_threshold",
    "fit_for_model",
    "extract_features",
    "measure",
    "ood_probe_images",
    "add_ood_parser",
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
_FORMAT = 1
_METHOD = "ppca-mahalanobis"
# Rows scored at once: bounds the float64 temporaries to about 16 MB.
_SCORE_CHUNK = 1024
# The smallest variance any direction may have, relative to the mean variance:
# keeps the distance finite when the training set is smaller than K (tests,
# tiny datasets) and some directions have no spread at all.
_VARIANCE_FLOOR = 1e-6


class OODGateError(ModelLoadError):
    """An OOD gate file is unreadable, missing fields, of an unknown format, or inconsistent.

    A :class:`~fracture.model.network.ModelLoadError`, because the gate is part of the
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
        mean = self.mean.astype(np.float64)
        axes = self.components.astype(np.float64)
        inverse_variances = 1.0 / self.variances.astype(np.float64)
        residual_variance = float(self.residual_variance)
        out = np.empty(features.shape[0], np.float64)
        for start in range(0, features.shape[0], _SCORE_CHUNK):
            centred = features[start : start + _SCORE_CHUNK].astype(np.float64) - mean
            projected = centred @ axes.T
            # The residual is measured directly, not as |x|^2 - |z|^2, so that
            # float16 axes that are not exactly orthonormal cannot make it negative.
            residual = centred - projected @ axes
            squared = projected**2 @ inverse_variances + np.einsum(
                "ij,ij->i", residual, residual
            ) / residual_variance
            out[start : start + _SCORE_CHUNK] = np.sqrt(squared)
        return out

    def is_in_distribution(self, pooled: np.ndarray) -> np.ndarray:
        """Boolean (N,): True where the input looks like the training radiographs."""
        return self.score(pooled) <= self.threshold

    # ------------------------------------------------------------------ persistence

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
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
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **self.to_arrays())
        path = Path(path)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "OODGate":
        """Read a gate written by :meth:`save`; raises :class:`OODGateError` if it is not one."""
        try:
            # allow_pickle stays False: a model folder may come from anywhere.
            stored = np.load(Path(path), allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise OODGateError(f"{path} is not a readable OOD gate ({error})") from None
        if not isinstance(stored, np.lib.npyio.NpzFile):
            raise OODGateError(f"{path} is not an OOD gate: it holds a single array")
        with stored:
            missing = {"format", "mean", "components", "variances", "residual_variance",
                       "threshold", "false_alarm_rate", "n_train"} - set(stored.files)  # fmt: skip
            if missing:
                lacking = ", ".join(sorted(missing))
                raise OODGateError(f"{path} is not an OOD gate: it lacks {lacking}")
            if int(stored["format"]) != _FORMAT:
                raise OODGateError(
                    f"{path} has OOD gate format {int(stored['format'])}; "
                    f"this version reads {_FORMAT}"
                )
            gate = cls(
                mean=stored["mean"].astype(np.float32),
                components=stored["components"].astype(np.float16),
                variances=stored["variances"].astype(np.float32),
                residual_variance=float(stored["residual_variance"]),
                threshold=float(stored["threshold"]),
                false_alarm_rate=float(stored["false_alarm_rate"]),
                n_train=int(stored["n_train"]),
                n_heldout=int(stored["n_heldout"]) if "n_heldout" in stored.files else 0,
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
        if not (np.all(self.variances > 0) and self.residual_variance > 0):
            raise OODGateError(f"{where}: OOD gate variances must be positive")
        if not (math.isfinite(self.threshold) and 0.0 < self.false_alarm_rate < 1.0):
            raise OODGateError(f"{where}: OOD gate threshold or false-alarm rate is invalid")

    def summary(self) -> dict[str, Any]:
        """The gate's settings, for the model card."""
        return {
            "method": f"Mahalanobis distance on pooled ResNet-50 features, probabilistic PCA "
                      f"with {self.n_components} axes (Lee et al. 2018; Calli et al. 2019)",
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
) -> OODGate:
    """Fit the Gaussian on ``train_features`` (N, D); set the threshold on ``heldout_features``.

    ``heldout_features`` must be in-distribution images the Gaussian was not
    fitted to (the validation split), so that their scores are honest.
    """
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
    train = _as_feature_matrix(train_features, "train_features")
    heldout = _as_feature_matrix(heldout_features, "heldout_features")
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
    )
    gate.threshold = conformal_threshold(gate.score(heldout), false_alarm_rate)
    gate._validate("fitted gate")
    return gate


def _as_feature_matrix(values: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, np.float64)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty (N, D) array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return array


# --------------------------------------------------------------------------- model folders


def extract_features(
    predictor: "Predictor",
    sources: Sequence[Any],
    *,
    names: Sequence[str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Pooled features (M, D) of the readable ``sources`` and their indices; no Grad-CAM."""
    features: list[np.ndarray] = []
    kept: list[int] = []
    for index, result in enumerate(predictor.iter_predict(sources, names=names, with_cam=False)):
        if result.ok and result.features is not None:
            features.append(np.array(result.features, np.float32))
            kept.append(index)
        if on_progress:
            on_progress(index + 1, len(sources))
    if not features:
        return np.zeros((0, 0), np.float32), kept
    return np.stack(features), kept


def fit_for_model(
    model_dir: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    *,
    predictor: "Predictor | None" = None,
    max_train: int | None = None,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    n_components: int = DEFAULT_COMPONENTS,
    seed: int = 0,
    val_fraction: float = 0.15,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> OODGate:
    """Fit the gate of the model in ``model_dir`` on ``data_root`` and store it there.

    Features of the dataset's ``train`` split fit the Gaussian (at most
    ``max_train`` images, a seeded random subset, to bound the time on a
    CPU); the ``val`` split sets the threshold. Writes ``model_dir/ood.npz``,
    then re-writes the checksums and an ``ood`` summary in the model card, each
    atomically, so that :func:`fracture.model.network.read_config` keeps verifying the
    folder. A ``predictor`` of the same model folder gets the new gate too.

    ``seed`` and ``val_fraction`` must be the training run's when the dataset
    has no val split on disk (it is then carved here exactly as training
    carved it); otherwise images the classifier was trained on could become
    the "held-out" set, and their lower scores would set too low a threshold.
    """
    from fracture.data.layouts import load_dataset
    from fracture.model.network import read_config

    model_dir = Path(model_dir)
    read_config(model_dir)  # refuse a corrupt folder before spending minutes on it
    if predictor is None:
        from fracture.inference.predictor import Predictor

        predictor = Predictor(model_dir)
    dataset = load_dataset(data_root, val_fraction=val_fraction, seed=seed)
    train_records, val_records = dataset.split("train"), dataset.split("val")
    if not train_records or not val_records:
        raise ValueError(
            f"{data_root} needs both a train and a val split to fit an OOD gate "
            f"(splits: {dataset.summary()})"
        )
    if max_train is not None and len(train_records) > max_train:
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(train_records), max_train, replace=False))
        train_records = [train_records[i] for i in chosen]

    def progress(stage: str) -> Callable[[int, int], None] | None:
        if on_progress is None:
            return None
        return lambda done, total: on_progress(stage, done, total)

    train_features, _ = extract_features(
        predictor, [r.path for r in train_records], on_progress=progress("train")
    )
    heldout_features, _ = extract_features(
        predictor, [r.path for r in val_records], on_progress=progress("val")
    )
    if train_features.shape[0] < 2 or heldout_features.shape[0] < 1:
        raise ValueError(f"too few readable images in {data_root} to fit an OOD gate")
    gate = fit_ood_gate(train_features, heldout_features,
                        false_alarm_rate=false_alarm_rate, n_components=n_components)  # fmt: skip
    gate.save(model_dir / OOD_FILE)
    # Recorded because features computed in bfloat16 differ slightly from float32
    # ones: a gate is calibrated for the precision it was fitted in.
    _update_card(model_dir, gate, precision=str(getattr(predictor, "precision", "float32")))
    if predictor.loaded.directory is not None and _same_path(predictor.loaded.directory, model_dir):
        predictor.ood_gate = gate
    return gate


def _update_card(model_dir: Path, gate: OODGate, *, precision: str) -> None:
    # Between the two atomic writes a reader of a folder that already had a
    # gate sees the new ood.npz with the old checksum and refuses the folder
    # ("half-written"); that is the safe side of the race.
    from fracture.model.card import rewrite_model_card

    card_path = model_dir / CARD_JSON
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    rewrite_model_card(model_dir, card, ood={**gate.summary(), "fitted_precision": precision})


def _same_path(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


# --------------------------------------------------------------------------- measuring


def measure(gate: OODGate, in_features: np.ndarray, out_features: np.ndarray) -> dict[str, Any]:
    """How well the gate separates in-distribution from out-of-distribution features.

    AUROC of the score for "is OOD" (scikit-learn), the false-alarm rate (ID
    flagged) and the detection rate (OOD flagged) at the gate's threshold.
    ``in_features`` must be images the gate was *not* fitted on.
    """
    from sklearn.metrics import roc_auc_score

    in_scores = gate.score(_as_feature_matrix(in_features, "in_features"))
    out_scores = gate.score(_as_feature_matrix(out_features, "out_features"))
    labels = np.concatenate([np.zeros(in_scores.size), np.ones(out_scores.size)])
    scores = np.concatenate([in_scores, out_scores])
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "false_alarm_rate": float(np.mean(in_scores > gate.threshold)),
        "detection_rate": float(np.mean(out_scores > gate.threshold)),
        "threshold": gate.threshold,
        "n_in": int(in_scores.size),
        "n_out": int(out_scores.size),
        "in_score_median": float(np.median(in_scores)),
        "out_score_median": float(np.median(out_scores)),
    }


# --------------------------------------------------------------------------- probe images


def ood_probe_images(seed: int = 0) -> dict[str, np.ndarray]:
    """Images that are *not* bone radiographs, as (H, W, 3) uint8 arrays, for measuring the gate.

    Photos from :mod:`skimage.data` (shipped with scikit-image, no download),
    including grey ones that are hard cases (``camera``, ``moon``, ``coins``,
    the Shepp-Logan CT phantom), generated noise, a rendered text page,
    nearly blank frames (exactly blank ones are refused by
    :func:`fracture.io.images.load_image`, so a faint noise keeps them valid
    arrays) and a synthetic chest-CT-like slice. Arrays bypass
    ``load_image``: the Predictor accepts them as they are.
    """
    try:
        import skimage.data as data
    except ImportError as error:  # a development dependency (requirements-dev.txt)
        raise ImportError(
            "the OOD probe images come from scikit-image's sample data; install "
            "scikit-image (see requirements-dev.txt) to measure the gate"
        ) from error

    rng = np.random.default_rng(seed)
    probes: dict[str, np.ndarray] = {}
    photos = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "hubble_deep_field",
              "immunohistochemistry", "moon", "page", "text", "clock", "brick", "grass",
              "gravel", "cell", "colorwheel", "retina", "microaneurysms")  # fmt: skip
    for name in photos:
        probes[name] = _to_rgb_uint8(getattr(data, name)())
    probes["horse_silhouette"] = _to_rgb_uint8(data.horse())
    probes["binary_blobs"] = _to_rgb_uint8(data.binary_blobs(length=256, rng=seed))
    probes["logo_on_white"] = _to_rgb_uint8(data.logo())
    probes["shepp_logan_ct_phantom"] = _to_rgb_uint8(data.shepp_logan_phantom())
    probes["uniform_noise"] = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    probes["gaussian_noise_grey"] = _to_rgb_uint8(rng.normal(128, 40, (256, 256)))
    probes["text_document"] = _text_page(rng)
    for name, level in (("near_white", 250), ("near_black", 3), ("near_grey", 128)):
        probes[f"{name}_frame"] = _to_rgb_uint8(level + rng.normal(0, 1.0, (224, 224)))
    probes["synthetic_chest_ct"] = _synthetic_chest_ct(rng)
    probes["smooth_gradient"] = _to_rgb_uint8(np.linspace(0, 255, 256)[None, :].repeat(192, axis=0))
    return probes


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any skimage.data array (bool, float, grey, RGBA, large) as (H, W, 3) uint8, side <= 1024."""
    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        low, high = float(np.min(array)), float(np.max(array))
        if low >= 0 and high <= 255 and np.issubdtype(array.dtype, np.integer):
            array = array.astype(np.uint8)
        elif low >= 0 and high <= 1.0:
            array = np.round(array * 255).astype(np.uint8)
        else:
            array = np.clip(np.round(array), 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.shape[2] == 4:  # RGBA: composite on white, as a web page shows it
        alpha = array[..., 3:4].astype(np.float32) / 255.0
        array = np.round(array[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    if max(array.shape[:2]) > 1024:
        step = int(math.ceil(max(array.shape[:2]) / 1024))
        array = array[::step, ::step]
    return np.ascontiguousarray(array[..., :3])


def _text_page(rng: np.random.Generator) -> np.ndarray:
    """A white A4-like page with lines of black text, like a scanned letter uploaded by mistake."""
    from PIL import Image, ImageDraw, ImageFont

    page = Image.new("RGB", (420, 594), "white")
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=14)
    words = ("patient", "report", "fracture", "radiograph", "the", "of", "and", "left",
             "distal", "radius", "no", "acute", "findings", "impression", "view")  # fmt: skip
    for line in range(26):
        text = " ".join(rng.choice(words, size=int(rng.integers(4, 9))))
        draw.text((30, 30 + line * 20), text, fill="black", font=font)
    return np.asarray(page, dtype=np.uint8).copy()


def _synthetic_chest_ct(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """An axial chest-CT-like slice: body ellipse, two dark lungs, a bright spine, noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    image = np.zeros((size, size))
    body = ((xx - 0.5) / 0.44) ** 2 + ((yy - 0.52) / 0.34) ** 2 <= 1.0
    image[body] = 110.0
    for centre_x in (0.32, 0.68):
        lung = ((xx - centre_x) / 0.14) ** 2 + ((yy - 0.47) / 0.22) ** 2 <= 1.0
        image[lung] = 15.0
    spine = ((xx - 0.5) / 0.06) ** 2 + ((yy - 0.76) / 0.06) ** 2 <= 1.0
    image[spine] = 240.0
    heart = ((xx - 0.54) / 0.11) ** 2 + ((yy - 0.52) / 0.1) ** 2 <= 1.0
    image[heart] = 140.0
    image += rng.normal(0, 6.0, image.shape)
    return _to_rgb_uint8(np.clip(image, 0, 255))


# --------------------------------------------------------------------------- command line


def add_ood_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``ood fit DATA`` and ``ood measure DATA``."""
    ood = subparsers.add_parser("ood", help="fit or measure the out-of-distribution gate")
    commands = ood.add_subparsers(dest="ood_command", required=True, metavar="COMMAND")

    fit = commands.add_parser("fit", help="fit the gate on a dataset's train/val splits and "
                                          "store it in the model folder")  # fmt: skip
    fit.add_argument("data", help="dataset folder with train and val splits")
    fit.add_argument("--model", default=None, help="model folder (default: the active model)")
    fit.add_argument("--max-train", type=int, default=None,
                     help="fit on at most this many train images (seeded subset)")  # fmt: skip
    fit.add_argument("--false-alarm-rate", type=float, default=DEFAULT_FALSE_ALARM_RATE,
                     help=f"share of held-out radiographs to flag (default {DEFAULT_FALSE_ALARM_RATE})")  # fmt: skip
    fit.add_argument("--components", type=int, default=DEFAULT_COMPONENTS)
    fit.add_argument("--seed", type=int, default=0,
                     help="seed of the train subset and, without a val split on disk, of the "
                          "split (use the training run's)")  # fmt: skip
    fit.add_argument("--val-fraction", type=float, default=0.15,
                     help="without a val split on disk: the training val fraction")  # fmt: skip
    fit.set_defaults(func=_cmd_fit)

    meas = commands.add_parser(
        "measure", help="AUROC and false-alarm rate: val split vs probe images"
    )
    meas.add_argument("data", help="dataset folder; its val split is the in-distribution set")
    meas.add_argument("--model", default=None, help="model folder (default: the active model)")
    meas.add_argument("--split", default="val", help="in-distribution split (default: val)")
    meas.add_argument("--json", default=None, help="write every number here")
    meas.set_defaults(func=_cmd_measure)


def _model_dir(arg: str | None) -> Path:
    from fracture.config import get_settings

    return Path(arg) if arg else get_settings().active_model_dir


def _stage_progress() -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = tqdm(total=total, desc=f"ood {stage}", unit="img",
                               disable=not sys.stderr.isatty())  # fmt: skip
        bars[stage].update(done - bars[stage].n)

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return update, close


def _guarded(run: Callable[[], int]) -> int:
    from fracture.data.records import DatasetLayoutError
    from fracture.model.network import ModelLoadError
    from fracture.model.imagenet import WeightsError

    try:
        return int(run())
    except (ModelLoadError, WeightsError, DatasetLayoutError, OODGateError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _cmd_fit(args: argparse.Namespace) -> int:
    def run() -> int:
        model_dir = _model_dir(args.model)
        update, close = _stage_progress()
        try:
            gate = fit_for_model(model_dir, args.data, max_train=args.max_train,
                                 false_alarm_rate=args.false_alarm_rate,
                                 n_components=args.components, seed=args.seed,
                                 val_fraction=args.val_fraction, on_progress=update)  # fmt: skip
        finally:
            close()
        print(f"OOD gate written to {model_dir / OOD_FILE}: {gate.n_components} axes, "
              f"fitted on {gate.n_train} train images, threshold {gate.threshold:.4f} set on "
              f"{gate.n_heldout} val images for a {gate.false_alarm_rate:.0%} "
              f"false-alarm rate")  # fmt: skip
        return 0

    return _guarded(run)


def _cmd_measure(args: argparse.Namespace) -> int:
    def run() -> int:
        from fracture.data.layouts import load_dataset
        from fracture.io.files import atomic_write_json
        from fracture.inference.predictor import Predictor

        model_dir = _model_dir(args.model)
        if not (model_dir / OOD_FILE).is_file():  # before the minute a Predictor takes to load
            print(f"error: {model_dir} has no {OOD_FILE}; run 'python -m fracture ood fit DATA "
                  f"--model {model_dir}' first", file=sys.stderr)  # fmt: skip
            return 2
        predictor = Predictor(model_dir)
        gate = predictor.ood_gate
        assert gate is not None  # the file exists and read_config verified it
        records = load_dataset(args.data).split(args.split)
        if not records:
            raise ValueError(f"{args.data} has no {args.split!r} split")
        update, close = _stage_progress()
        try:
            in_features, _ = extract_features(
                predictor, [r.path for r in records],
                on_progress=lambda done, total: update(args.split, done, total),
            )
        finally:
            close()
        probes = ood_probe_images()
        out_features, kept = extract_features(predictor, list(probes.values()), names=list(probes))
        report = measure(gate, in_features, out_features)
        names = list(probes)
        probe_scores = gate.score(out_features)
        report["probes"] = {
            names[i]: {"score": float(s), "flagged": bool(s > gate.threshold)}
            for i, s in zip(kept, probe_scores)
        }
        report["model"] = str(model_dir)
        report["in_distribution_split"] = args.split
        print(f"OOD gate of {model_dir}: threshold {gate.threshold:.4f} "
              f"(set for a {gate.false_alarm_rate:.0%} false-alarm rate)")  # fmt: skip
        print(f"AUROC (ID {args.split} vs {report['n_out']} probe images): {report['auroc']:.4f}")
        print(f"False-alarm rate on {report['n_in']} {args.split} radiographs: "
              f"{report['false_alarm_rate']:.2%}")  # fmt: skip
        print(f"Detection rate on probe images: {report['detection_rate']:.2%}")
        width = max(len(name) for name in report["probes"])
        for name, entry in report["probes"].items():
            verdict = "flagged" if entry["flagged"] else "MISSED (looks in distribution)"
            print(f"  {name:<{width}}  {entry['score']:10.3f}  {verdict}")
        if args.json:
            atomic_write_json(args.json, report)
            print(f"full report written to {args.json}", file=sys.stderr)
        return 0

    return _guarded(run)
