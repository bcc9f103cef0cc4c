"""The validation figures a training run records after every epoch, and at its end.

Computed on the cached val features through the network's tail, so an epoch's
check costs a tail pass, not a forward pass through ResNet-50. The binary model
reports its figures at probability 0.5 (calibration comes at the end of the
run); a K-class model reports macro one-vs-rest AUROC, accuracy and, with a
normal class, the sensitivity and specificity of "any fracture".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fracture.data.augment import Box
from fracture.data.records import Record
from fracture.training.losses import EVIDENCE_OUTPUT, LOGIT_OUTPUT

if TYPE_CHECKING:
    import keras

__all__ = [
    "ValidationSplit",
    "predict_tail",
    "pointing",
    "binary_metrics",
    "class_metrics",
    "confusion",
    "softmax",
]


@dataclass
class ValidationSplit:
    """The usable val images: cached stem features, labels, boxes in the input frame, records."""

    features: np.ndarray  # (n, h, w, c) float16 stem outputs
    labels: np.ndarray  # (n,) task labels
    boxes: list[tuple[Box, ...]]  # fracture boxes in the network input's normalised frame
    records: list[Record]


def predict_tail(
    tail: "keras.Model", features: np.ndarray, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits and evidence maps (n, h, w) of the tail, in batches.

    Logits are (n,) for the binary model, (n, K) for a K-class one, whose tail
    has no evidence map (None).
    """
    logits, evidence = [], []
    for i in range(0, len(features), batch_size):
        out = tail(features[i : i + batch_size].astype(np.float32), training=False)
        logit = np.asarray(out[LOGIT_OUTPUT])
        logits.append(logit if logit.shape[1] > 1 else logit[:, 0])
        if EVIDENCE_OUTPUT in out:
            evidence.append(np.asarray(out[EVIDENCE_OUTPUT]))
    if not logits:
        return np.zeros(0), np.zeros((0, 1, 1))
    return np.concatenate(logits), np.concatenate(evidence) if evidence else None


def pointing(evidence: np.ndarray, labels: np.ndarray, boxes: list) -> float | None:
    """Val pointing game in the network input's frame (None when val has no boxes)."""
    from fracture.evaluation.localisation import pointing_game

    boxed = [i for i in np.flatnonzero(labels == 1) if boxes[i]]
    if not boxed:
        return None
    return pointing_game([evidence[i] for i in boxed], [boxes[i] for i in boxed])["score"]


def binary_metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Binary validation metrics at probability 0.5, from raw logits."""
    from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, roc_auc_score

    probabilities = 1 / (1 + np.exp(-logits))
    predicted = (probabilities >= 0.5).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    return {
        "loss": float(log_loss(labels, np.clip(probabilities, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "auroc": float(roc_auc_score(labels, probabilities)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "sensitivity": float(tp / max(tp + fn, 1)),
        "specificity": float(tn / max(tn + fp, 1)),
    }


def class_metrics(
    labels: np.ndarray, probabilities: np.ndarray, normal_index: int | None
) -> dict[str, float]:
    """K-class metrics: loss, macro one-vs-rest AUROC, accuracy, balanced accuracy.

    With a normal class, also the sensitivity and specificity of "any fracture"
    (the top class is not normal), so a run's curves read as a fracture model's do.
    """
    from sklearn.metrics import balanced_accuracy_score, log_loss, roc_auc_score

    k = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    clipped = np.clip(probabilities, 1e-7, 1.0)
    metrics = {
        "loss": float(
            log_loss(labels, clipped / clipped.sum(axis=1, keepdims=True), labels=range(k))
        ),
        # Every class is in val (fracture.training.tasks.check_splits), so each
        # one-vs-rest AUROC is defined.
        "auroc": float(
            roc_auc_score(
                labels, probabilities, multi_class="ovr", average="macro", labels=range(k)
            )
        ),
        "accuracy": float(np.mean(predicted == labels)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
    }
    if normal_index is not None:
        fractured, flagged = labels != normal_index, predicted != normal_index
        metrics["sensitivity"] = float(flagged[fractured].mean()) if fractured.any() else 0.0
        metrics["specificity"] = float((~flagged[~fractured]).mean()) if (~fractured).any() else 0.0
    return metrics


def confusion(labels: np.ndarray, logits: np.ndarray, n_classes: int) -> list[list[int]]:
    """Validation confusion matrix (rows true, columns predicted): the top class, or p >= 0.5."""
    from sklearn.metrics import confusion_matrix

    predicted = logits.argmax(axis=1) if logits.ndim == 2 else (logits >= 0).astype(int)
    return confusion_matrix(labels, predicted, labels=range(n_classes)).tolist()


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (a K-class tail's logits to probabilities)."""
    from scipy.special import softmax as scipy_softmax

    return scipy_softmax(np.asarray(logits, np.float64), axis=1)
