"""Fine-tune ResNet-50 for fractures, fast enough for a 2-core CPU.

Two phases, as in the Keras transfer-learning guide: first the head alone on
a frozen backbone, then the top blocks with a lower learning rate. BatchNorm
stays frozen and in inference mode throughout.

Why it is fast: everything up to ``fine_tune_from`` is frozen, so its output
for a given image never changes. :class:`FeatureCache` computes it once per
image (and per augmented view), keyed by the image's bytes, the view and the
preprocessing, and stores it on disk. Every epoch, and every later run on the
same data, then trains only the top blocks.

K classes: when the dataset's class folders are not fracture and normal
synonyms (or the task says so, :mod:`fracture.training.tasks`), the head has one
logit per class and trains with class-weighted softmax cross-entropy; the box
loss, the pointing game and the heat-map scale belong to the binary fracture
model and are skipped. Each epoch records macro one-vs-rest AUROC, accuracy
and the K x K confusion matrix (``confusion.json``, for the Train page).

How augmentation stays honest: augmentation is applied to the *image*, before
the frozen stem, exactly as without a cache. What the cache changes is that
each training image has ``views`` fixed draws (view 0 unaugmented, the others
random rotations, flips, zoom, brightness and contrast) instead of a fresh draw
per epoch; every epoch samples one of them per image. Validation images are
never augmented.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fracture.config import Settings, get_settings
from fracture.data.layouts import load_dataset
from fracture.io.files import atomic_write_json, read_json
from fracture.model.folder import (
    ModelConfig,
    ModelFolder,
    imagenet_reference,
    quantise_like_saved,
)
from fracture.model.network import build_classifier, set_trainable, split_at
from fracture.training.cache import FeatureCache, compute_features, keep_usable, model_key
from fracture.training.config import TrainConfig
from fracture.training.losses import (
    EVIDENCE_OUTPUT,
    LOGIT_OUTPUT,
    box_alignment_loss,
    box_masks,
    evidence_tail,
    logit_tail,
)
from fracture.training.runs import (
    CHECKPOINTS_DIR,
    METRICS_JSON,
    STATE_FILE,
    STATUS_FILE,
    TRAIN_CONFIG_FILE,
    RunWriter,
    candidate_dir,
    read_confusion,
)
from fracture.training.tasks import Task, check_splits, resolve_task

if TYPE_CHECKING:
    import keras

__all__ = ["train", "make_strategy", "configure_logical_cpus"]


# ---------------------------------------------------------------------------
# Strategy


def make_strategy(name: str):
    """A tf.distribute strategy by name; no home-made distribution.

    ``mirrored`` replicates over all GPUs, or over the logical CPU devices when
    there is no GPU (so that it runs and is tested on a laptop). ``multiworker``
    reads the cluster from ``TF_CONFIG``.
    """
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in cpus])
    if name == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("--strategy multiworker needs TF_CONFIG describing the cluster")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown strategy {name!r}; use default, mirrored or multiworker")


def configure_logical_cpus(count: int) -> None:
    """Split the CPU into ``count`` logical devices; must run before TensorFlow starts."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    )


# ---------------------------------------------------------------------------
# Training


def _class_weights(labels: np.ndarray, n_classes: int = 2) -> dict[int, float]:
    """Weights that make every class count as much as the others: n / (K * count_k)."""
    counts = np.bincount(labels.astype(int), minlength=n_classes).astype(float)
    if (counts == 0).any():
        if n_classes == 2:
            raise ValueError("Training data must contain both fracture and normal images")
        raise ValueError("Training data must contain images of every class")
    return {k: float(len(labels) / (n_classes * counts[k])) for k in range(n_classes)}


def _batches(features, labels, weights, masks, config: TrainConfig, epoch: int):
    """A keras PyDataset over cached features: each epoch draws one view per image.

    Targets are the label for the logit and, for the binary model, (box mask,
    label) for the evidence map; ``masks`` is None for a K-class model, whose
    integer labels feed a sparse softmax cross-entropy.
    """
    import keras

    class CachedBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            rng = np.random.default_rng([config.seed, epoch])
            self.order = rng.permutation(len(labels))
            self.views = rng.integers(0, features.shape[0], size=len(labels))

        def __len__(self) -> int:
            return math.ceil(len(labels) / config.batch_size)

        def __getitem__(self, index: int):
            rows = self.order[index * config.batch_size : (index + 1) * config.batch_size]
            x = features[self.views[rows], rows].astype(np.float32)
            if masks is None:
                return x, {LOGIT_OUTPUT: labels[rows].astype(np.int32)}, weights[rows]
            y = labels[rows].astype(np.float32)
            mask = masks[self.views[rows], rows]
            evidence_target = np.stack([mask, np.broadcast_to(y[:, None, None], mask.shape)], -1)
            targets = {LOGIT_OUTPUT: y, EVIDENCE_OUTPUT: evidence_target}
            return x, targets, weights[rows].astype(np.float32)

    return CachedBatches()


def _predict(
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


def _predict_logits(tail: "keras.Model", features: np.ndarray) -> np.ndarray:
    return _predict(tail, features)[0]


def _pointing(evidence: np.ndarray, labels: np.ndarray, boxes: list) -> float | None:
    """Val pointing game in the network input's frame (None when val has no boxes)."""
    from fracture.evaluation.metrics import pointing_game

    boxed = [i for i in np.flatnonzero(labels == 1) if boxes[i]]
    if not boxed:
        return None
    return pointing_game([evidence[i] for i in boxed], [boxes[i] for i in boxed])["score"]


def _epoch_metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
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


def _class_metrics(
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


def _confusion(labels: np.ndarray, logits: np.ndarray, n_classes: int) -> list[list[int]]:
    """Validation confusion matrix (rows true, columns predicted): the top class, or p >= 0.5."""
    from sklearn.metrics import confusion_matrix

    predicted = logits.argmax(axis=1) if logits.ndim == 2 else (logits >= 0).astype(int)
    return confusion_matrix(labels, predicted, labels=range(n_classes)).tolist()


def _softmax(logits: np.ndarray) -> np.ndarray:
    from scipy.special import softmax

    return softmax(np.asarray(logits, np.float64), axis=1)


def _compile(tail: "keras.Model", learning_rate: float, config: TrainConfig) -> None:
    import keras

    if EVIDENCE_OUTPUT not in tail.output:  # a K-class tail: logits only, no box loss
        tail.compile(
            optimizer=keras.optimizers.AdamW(
                learning_rate=learning_rate, weight_decay=config.weight_decay
            ),
            loss={LOGIT_OUTPUT: keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
            weighted_metrics={
                LOGIT_OUTPUT: [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
            },
        )
        return
    tail.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=learning_rate, weight_decay=config.weight_decay
        ),
        loss={
            LOGIT_OUTPUT: keras.losses.BinaryCrossentropy(from_logits=True),
            EVIDENCE_OUTPUT: box_alignment_loss(
                config.normal_evidence_weight, config.box_mass_weight
            ),
        },
        loss_weights={LOGIT_OUTPUT: 1.0, EVIDENCE_OUTPUT: config.box_weight},
        # The tail outputs logits, so every threshold is 0 (probability 0.5).
        weighted_metrics={
            LOGIT_OUTPUT: [
                keras.metrics.AUC(name="auroc", from_logits=True),
                keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0),
                keras.metrics.Recall(name="sensitivity", thresholds=0.0),
                keras.metrics.TrueNegatives(name="tn", thresholds=0.0),
                keras.metrics.FalsePositives(name="fp", thresholds=0.0),
            ]
        },
    )


def _log(logs: dict[str, float], name: str) -> float:
    # Keras prefixes a metric of one output of several with the output's name.
    return logs[name] if name in logs else logs[f"{LOGIT_OUTPUT}_{name}"]


def train(
    data_root: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    config: TrainConfig = TrainConfig(),  # noqa: B008 (frozen: a shared default is safe)
    *,
    settings: Settings | None = None,
    pretrained: bool = True,
    resume: bool = False,
) -> Path:
    """Train, calibrate and save a model; returns the saved model folder (``run_dir/model``).

    Any error leaves ``status.json`` in state ``failed`` with the reason, so the
    dashboard shows what went wrong instead of a run that looks interrupted.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = RunWriter(run_dir)
    if resume:
        # A resumed run's clock (ETA, training time in the card) starts at its first start.
        writer.started = read_json(run_dir / STATUS_FILE, default={}).get("started", writer.started)
    try:
        return _train(
            data_root, run_dir, writer, config, settings or get_settings(), pretrained, resume
        )
    except Exception as error:
        writer.status(
            "failed",
            phase="failed",
            message=f"Training failed: {error}",
            error=type(error).__name__,
        )
        raise


def _train(
    data_root: str | os.PathLike[str],
    run_dir: Path,
    writer: RunWriter,
    config: TrainConfig,
    settings: Settings,
    pretrained: bool,
    resume: bool,
) -> Path:
    import keras
    import tensorflow as tf

    state = read_json(run_dir / STATE_FILE, default={}) if resume else {}
    if resume and not state:
        raise ValueError(f"{run_dir} has no completed epoch to resume from")
    if resume:
        saved = read_json(run_dir / TRAIN_CONFIG_FILE)
        # A run keeps its own weights choice: resuming must not mix random and ImageNet stems.
        pretrained = bool(saved.pop("pretrained", pretrained))
        config = TrainConfig(**saved)
    else:
        atomic_write_json(
            run_dir / TRAIN_CONFIG_FILE, {**dataclasses.asdict(config), "pretrained": pretrained}
        )
    writer.status("starting", message="Loading data and model", phase="setup")
    _install_signal_handlers(writer)

    from fracture.inference.engine import configure_threads

    configure_threads()  # before the first TensorFlow op: the pools are fixed then
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    dataset = load_dataset(data_root, val_fraction=config.val_fraction, seed=config.seed)
    train_records, val_records = dataset.split("train"), dataset.split("val")
    if not train_records or not val_records:
        raise ValueError(f"{data_root} needs both train and val images (found {dataset.summary()})")
    task = resolve_task(dataset, config.task)
    check_splits(dataset, task)
    multiclass = task.classes is not None

    weights_sha = "random"
    weights_path = None
    if pretrained:
        from fracture.model.imagenet import resolve_imagenet_weights

        resolved = resolve_imagenet_weights(settings)
        weights_path, weights_sha = resolved.path, resolved.sha256
    model_config = ModelConfig(
        image_size=config.image_size,
        fine_tune_from=config.fine_tune_from,
        dropout=config.dropout,
        conv5_dilation=config.conv5_dilation,
        classes=task.classes,
        name=run_dir.name,
        version=time.strftime("%Y%m%d-%H%M%S"),
    )
    strategy = make_strategy(config.strategy)
    with strategy.scope():
        # The tail is a Keras model of its own; made in scope, it trains replicated.
        model = build_classifier(model_config, weights_path)
        stem, _ = split_at(model, config.fine_tune_from)
        make_tail = logit_tail if multiclass else evidence_tail
        tail = make_tail(model, config.fine_tune_from)
    reference = imagenet_reference(model, model_config)

    cache = FeatureCache(settings.cache_dir / "features", model_key(config, weights_sha))
    views = config.views if config.augment else 1
    total = len(train_records) * views + len(val_records)
    progress_base = [0]

    def on_cache_progress(done: int, todo: int) -> None:
        elapsed = time.time() - writer.started
        writer.status(
            "caching",
            force=False,
            phase="caching features",
            done=progress_base[0] + done,
            total=total,
            eta_seconds=elapsed / max(done, 1) * (todo - done),
            message=f"Computing frozen-backbone features ({progress_base[0] + done}/{total})",
        )

    train_features, train_ok, train_boxes = compute_features(
        train_records, views, stem, cache, config, on_cache_progress
    )
    progress_base[0] = len(train_records) * views
    val_features, val_ok, val_boxes = compute_features(
        val_records, 1, stem, cache, config, on_cache_progress
    )
    train_masks = None
    if not multiclass:
        shape = tail.output[EVIDENCE_OUTPUT].shape
        grid = (int(shape[1]), int(shape[2]))
        train_masks = np.stack([box_masks(view, grid) for view in train_boxes])[:, train_ok]
    val_boxes_ok = [b for b, ok in zip(val_boxes[0], val_ok) if ok]
    skipped = [
        str(r.path) for r, ok in zip(train_records + val_records, [*train_ok, *val_ok]) if not ok
    ]
    train_labels = task.labels(train_records)[train_ok]
    val_labels = task.labels(val_records)[val_ok]
    # In place: the train features are the run's largest array (views x images x
    # stem output; 10.7 GB for 3 views at 384 px from conv4), and a boolean-index
    # copy would double them.
    train_features = keep_usable(train_features, train_ok)
    val_features = keep_usable(val_features, val_ok)[0]
    class_weight = _class_weights(train_labels, len(task.label_names))
    sample_weights = np.array([class_weight[int(y)] for y in train_labels], np.float32)

    history: list[dict[str, Any]] = read_json(run_dir / METRICS_JSON, default=[]) if resume else []
    confusions: list[dict[str, Any]] = (
        (read_confusion(run_dir) or {}).get("epochs", []) if resume else []
    )
    start_epoch = int(state.get("completed_epoch", 0))
    best_auroc = float(state.get("best_auroc", -1.0))
    best_epoch = int(state.get("best_epoch", 0))
    checkpoints = run_dir / CHECKPOINTS_DIR
    checkpoints.mkdir(exist_ok=True)
    if resume:
        tail.load_weights(checkpoints / "last.weights.h5")
    tensorboard = tf.summary.create_file_writer(str(run_dir / "tensorboard"))

    compiled_phase = None
    for epoch in range(start_epoch + 1, config.total_epochs + 1):
        phase = "head" if epoch <= config.head_epochs else "fine-tune"
        if phase != compiled_phase:
            set_trainable(model, None if phase == "head" else config.fine_tune_from)
            with strategy.scope():
                _compile(tail, config.head_lr if phase == "head" else config.lr, config)
            compiled_phase = phase
        batches = _batches(train_features, train_labels, sample_weights, train_masks, config, epoch)
        epoch_started = time.time()
        progress = _status_callback(writer, epoch, config.total_epochs, phase, len(batches))
        fit = tail.fit(batches, epochs=1, verbose=0, callbacks=[progress])
        logs = {k: float(v[-1]) for k, v in fit.history.items()}
        val_logits_now, val_evidence = _predict(tail, val_features)
        train_row: dict[str, Any] = {
            "train_loss": logs["loss"],
            "train_accuracy": _log(logs, "accuracy"),
        }
        val: dict[str, Any]
        if multiclass:
            val = _class_metrics(val_labels, _softmax(val_logits_now), model_config.normal_index)
        else:
            val = dict(_epoch_metrics(val_labels, val_logits_now))
            # The binary tail always has its evidence map.
            val["pointing"] = _pointing(val_evidence, val_labels, val_boxes_ok)  # type: ignore[arg-type]
            tn, fp = _log(logs, "tn"), _log(logs, "fp")
            train_row = {
                "train_loss": logs["loss"],
                "train_auroc": _log(logs, "auroc"),
                "train_accuracy": _log(logs, "accuracy"),
                "train_sensitivity": _log(logs, "sensitivity"),
                "train_specificity": tn / max(tn + fp, 1.0),
            }
        row = {
            "epoch": epoch,
            "phase": phase,
            **train_row,
            **{f"val_{k}": v for k, v in val.items()},
            "seconds": time.time() - epoch_started,
        }
        history.append(row)
        confusions.append(
            {
                "epoch": epoch,
                "matrix": _confusion(val_labels, val_logits_now, len(task.label_names)),
            }
        )
        with tensorboard.as_default(step=epoch):
            for key, value in row.items():
                if isinstance(value, float):
                    tf.summary.scalar(key, value)
        # Checkpoint first, then the state that points to it: a kill between
        # the two leaves the previous, complete epoch as the resume point.
        tail.save_weights(checkpoints / "last.weights.h5")
        if val["auroc"] > best_auroc:
            best_auroc, best_epoch = val["auroc"], epoch
            tail.save_weights(checkpoints / "best.weights.h5")
        writer.metrics(history)
        writer.confusion(task.label_names, confusions)
        atomic_write_json(
            run_dir / STATE_FILE,
            {"completed_epoch": epoch, "best_auroc": best_auroc, "best_epoch": best_epoch},
        )
        if phase == "fine-tune" and epoch - max(best_epoch, config.head_epochs) >= config.patience:
            break

    writer.status("finishing", phase="calibrating", message="Calibrating and saving the model")
    tail.load_weights(checkpoints / "best.weights.h5")
    quantise_like_saved(model, model_config, reference)
    val_logits, val_evidence = _predict(tail, val_features)
    writer.status("finishing", phase="ood", message="Fitting the out-of-distribution gate")
    ood_gate = _fit_ood_from_cache(
        model, config, train_features[0], val_features, train_labels, val_labels
    )
    if val_evidence is not None:
        model_config = dataclasses.replace(
            model_config, evidence_scale=evidence_scale(val_evidence, val_labels)
        )
    model_dir = _finalise(
        model,
        model_config,
        reference,
        run_dir,
        val_logits,
        val_labels,
        [r for r, ok in zip(val_records, val_ok) if ok],
        config,
        dataset,
        history,
        best_epoch,
        writer.started,
        weights_sha,
        ood_gate,
        _seen_counts(task, train_labels, val_labels),
    )
    writer.status(
        "completed",
        phase="done",
        message=f"Best val AUROC {best_auroc:.3f} at epoch {best_epoch}",
        best_epoch=best_epoch,
        best_val_auroc=best_auroc,
        model_dir=str(model_dir),
        skipped_files=skipped,
        replicas=int(strategy.num_replicas_in_sync),
    )
    return model_dir


def _seen_counts(
    task: Task, train_labels: np.ndarray, val_labels: np.ndarray
) -> dict[str, dict[str, int]]:
    """Images per class that training and validation actually used (unreadable ones left out)."""
    return {"train": task.label_counts(train_labels), "val": task.label_counts(val_labels)}


def _prior_shift(class_weight: dict[int, float]) -> float:
    """How much class weighting raised the fracture logit: log(w_fracture / w_normal)."""
    return float(np.log(class_weight[1] / class_weight[0]))


def evidence_scale(evidence: np.ndarray, labels: np.ndarray) -> float | None:
    """The heat map's absolute scale: the 75th percentile of the peak evidence on val fractures.

    A fracture as clear as the clearest quarter of val fractures fills the colour
    scale; a normal whose evidence the training pushed below zero shows nothing.
    """
    peaks = np.maximum(evidence[labels == 1], 0).reshape(int((labels == 1).sum()), -1).max(axis=1)
    scale = float(np.percentile(peaks, 75)) if peaks.size else 0.0
    return scale if scale > 0 else None


def _fit_ood_from_cache(
    model,
    config: TrainConfig,
    train_stem: np.ndarray,
    val_stem: np.ndarray,
    train_labels: np.ndarray,
    val_labels: np.ndarray,
):
    """Fit the OOD gate on pooled features of the final model, from the cached stem outputs.

    Train images (unaugmented view) fit the Gaussians; val images set the
    thresholds. Reusing the cache costs a tail pass instead of a full forward pass.
    The early layer the gate also reads (``conv4_block6_out``) is computed when the
    cache lies at or before it; a cache past it leaves the gate with the head's
    layer only, and says so in the log.
    """
    import keras

    from fracture.inference.ood import fit_layered_ood_gate
    from fracture.model.network import EARLY_FEATURE_LAYER, POOL_LAYER

    names = [layer.name for layer in model.layers]
    stem_output = model.get_layer(config.fine_tune_from).output
    outputs = {POOL_LAYER: model.get_layer(POOL_LAYER).output}
    if EARLY_FEATURE_LAYER in names and names.index(config.fine_tune_from) <= names.index(
        EARLY_FEATURE_LAYER
    ):
        outputs[EARLY_FEATURE_LAYER] = keras.layers.GlobalAveragePooling2D()(
            model.get_layer(EARLY_FEATURE_LAYER).output
        )
    tail = keras.Model(stem_output, outputs)

    def pooled(stem_features: np.ndarray) -> dict[str, np.ndarray]:
        chunks = [
            tail(stem_features[i : i + 64].astype(np.float32), training=False)
            for i in range(0, len(stem_features), 64)
        ]
        return {
            layer: np.concatenate([np.asarray(chunk[layer]) for chunk in chunks])
            for layer in outputs
        }

    # One mean per class (Lee et al. 2018), so fractured images with plates or casts
    # are measured against fractured images (fracture.inference.ood).
    return fit_layered_ood_gate(
        pooled(train_stem), pooled(val_stem), train_labels=train_labels, heldout_labels=val_labels
    )


def _finalise(
    model,
    model_config,
    reference,
    run_dir,
    val_logits,
    val_labels,
    val_records,
    config,
    dataset,
    history,
    best_epoch,
    started,
    weights_sha,
    ood_gate,
    class_counts,
) -> Path:
    """Calibrate on val, then save the model with its card and OOD gate.

    ``val_logits`` are the network's raw logits on val. Platt scaling removes the
    bias that class weighting adds to them (log of the weight ratio) along with
    any other (:func:`fracture.evaluation.operating_points.calibrate`). A K-class
    model gets a softmax temperature and, with a normal class, any-fracture
    thresholds (:func:`fracture.evaluation.operating_points.calibrate_classes`).
    """
    from fracture.evaluation.calibrate import calibrate_binary
    from fracture.evaluation.operating_points import calibrate_classes
    from fracture.model.card import build_card
    from fracture.model.folder import OOD_FILE

    if model_config.is_multiclass:
        calibration = calibrate_classes(
            val_logits, val_labels, normal_index=model_config.normal_index, seed=config.seed
        )
        model_config = dataclasses.replace(
            model_config,
            temperature=calibration.temperature,
            thresholds=calibration.thresholds,
            prior_shift=calibration.shift,
        )
        report = _class_report(val_labels, val_logits, model_config)
        report["ece"] = calibration.ece_in_sample
        report["ece_uncalibrated"] = calibration.ece_before
        report["calibration_fit"] = calibration.summary()
    else:
        fitted = calibrate_binary(
            model_config, val_logits, val_labels, val_records, seed=config.seed
        )
        model_config, calibration, report = fitted.config, fitted.calibration, fitted.report
    card = build_card(
        model_config=model_config,
        train_config=dataclasses.asdict(config),
        dataset=dataset,
        report=report,
        history=history,
        best_epoch=best_epoch,
        training_seconds=time.time() - started,
        imagenet_sha256=weights_sha,
        commit=_git_commit(),
        class_counts=class_counts,
        ood_gate=ood_gate,
        calibration=calibration,
    )
    folder = ModelFolder(candidate_dir(run_dir))
    folder.write_model(
        model,
        model_config,
        reference=reference,
        card=card,
        report=report,
        heads={OOD_FILE: ood_gate},
    )
    return folder.path


def _class_report(labels: np.ndarray, logits: np.ndarray, config: ModelConfig) -> dict[str, Any]:
    """A K-class model's validation figures for its card and evaluation.json.

    The report ``python -m fracture evaluate`` writes for the model
    (:func:`fracture.evaluation.evaluate.class_evaluation`: per class, and with a
    normal class any fracture at the operating points, whose AUROC is then ``auroc``),
    plus the epoch figures of the calibrated probabilities: the macro AUROC (as
    ``auroc`` without a normal class, ``macro_auroc`` with one), accuracy and the
    confusion matrix.
    """
    from fracture.evaluation.evaluate import class_evaluation

    probabilities = config.probabilities(logits)
    metrics = _class_metrics(labels, probabilities, config.normal_index)
    if config.normal_index is not None:
        metrics["macro_auroc"] = metrics.pop("auroc")
        # Any fracture at the operating points comes from class_evaluation, not the top class.
        metrics.pop("sensitivity", None)
        metrics.pop("specificity", None)
    return {
        **metrics,
        **class_evaluation(labels, probabilities, config),
        "classes": config.class_names,
        "n": int(len(labels)),
        "n_per_class": np.bincount(labels, minlength=config.num_outputs).tolist(),
        "confusion_matrix": _confusion(labels, logits, config.num_outputs),
        "operating_point": config.operating_point,
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _install_signal_handlers(writer: RunWriter) -> None:
    """On SIGTERM (Cancel in the dashboard), leave a readable 'cancelled' status."""

    def cancel(signum, frame):  # noqa: ARG001
        writer.status("cancelled", phase="cancelled", message="Cancelled by the user")
        # Not SystemExit: raised from a signal handler it can land inside a
        # destructor (TensorFlow's AtomicFunction.__del__), where Python ignores it
        # and training carries on (seen in CI). Every file of the run is written
        # atomically, so a hard exit loses nothing already written.
        sys.stderr.flush()
        os._exit(130)

    try:
        signal.signal(signal.SIGTERM, cancel)
    except ValueError:  # not the main thread (e.g. inside a test runner thread)
        pass


def _status_callback(writer: RunWriter, epoch: int, epochs: int, phase: str, batches: int):
    """A Keras callback reporting batch progress and an ETA to ``status.json``."""
    import keras

    started = time.time()

    class StatusCallback(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            done = batch + 1
            per_batch = (time.time() - started) / done
            remaining = (batches - done) + (epochs - epoch) * batches
            writer.status(
                "running",
                force=done == batches,
                phase=phase,
                epoch=epoch,
                epochs=epochs,
                batch=done,
                batches=batches,
                eta_seconds=per_batch * remaining,
                message=f"Epoch {epoch}/{epochs} ({phase}), batch {done}/{batches}",
            )

    return StatusCallback()
