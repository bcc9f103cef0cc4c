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
import logging
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from fracture.config import Settings, get_settings
from fracture.data.layouts import load_dataset
from fracture.data.records import Dataset
from fracture.io.files import read_json
from fracture.model.folder import (
    ModelConfig,
    ModelFolder,
    imagenet_reference,
    quantise_like_saved,
)
from fracture.model.network import build_classifier, set_trainable, split_at
from fracture.model.reports import EvaluationReport
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
    BEST_CHECKPOINT,
    CHECKPOINTS_DIR,
    LAST_CHECKPOINT,
    STATUS_FILE,
    TRAIN_CONFIG_FILE,
    RunProgress,
    RunWriter,
    candidate_dir,
    read_train_config,
    write_train_config,
)
from fracture.training.tasks import Task, check_splits, resolve_task
from fracture.training.validation import (
    ValidationSplit,
    class_metrics,
    confusion,
    predict_tail,
)

if TYPE_CHECKING:
    import keras

__all__ = ["train", "make_strategy", "configure_logical_cpus", "export_for_the_onnx_runtime"]

logger = logging.getLogger(__name__)


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


def _batches(
    features: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    masks: np.ndarray | None,
    config: TrainConfig,
    first_epoch: int,
):
    """A keras PyDataset over cached features: each epoch draws one view per image.

    Targets are the label for the logit and, for the binary model, (box mask,
    label) for the evidence map; ``masks`` is None for a K-class model, whose
    integer labels feed a sparse softmax cross-entropy. Epoch ``e``'s order and
    views come from the seed ``(config.seed, e)`` (``draw(e)``, called as each epoch
    begins), so a resumed run sees what an uninterrupted one would have.
    """
    import keras

    class CachedBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            # Keras reads a few batches to infer shapes before the first epoch begins.
            self.draw(first_epoch)

        def draw(self, epoch: int) -> None:
            """Order and views for the 1-based ``epoch``; call it as the epoch begins."""
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


@dataclass
class Network:
    """The classifier being trained, split where the frozen stem ends, and what it started from."""

    model_config: ModelConfig
    model: "keras.Model"
    stem: "keras.Model"
    tail: "keras.Model"  # what fit trains: the layers after the stem, on cached stem outputs
    strategy: Any  # the tf.distribute strategy the tail was built in
    reference: dict[str, list[np.ndarray]]  # ImageNet weights of the layers training changes
    weights_sha: str  # of the ImageNet weights, or "random"


@dataclass
class TrainSplit:
    """The usable train images: cached stem features of every view, labels, weights, box masks."""

    features: np.ndarray  # (views, n, h, w, c) float16
    labels: np.ndarray
    sample_weights: np.ndarray
    masks: np.ndarray | None  # (views, n, grid h, grid w); None for a K-class model


@dataclass
class Prepared:
    """What :func:`_prepare` makes once and the fit and finalise phases use."""

    config: TrainConfig
    dataset: Dataset
    task: Task
    network: Network
    train: TrainSplit
    val: ValidationSplit
    skipped: list[str]  # unreadable files, left out of training

    @property
    def multiclass(self) -> bool:
        return self.task.classes is not None


def _train(
    data_root: str | os.PathLike[str],
    run_dir: Path,
    writer: RunWriter,
    config: TrainConfig,
    settings: Settings,
    pretrained: bool,
    resume: bool,
) -> Path:
    """The run's phases: prepare (data, network, feature cache), fit, finalise."""
    config, pretrained, progress = _start(run_dir, config, pretrained, resume)
    writer.status("starting", message="Loading data and model", phase="setup")
    _install_signal_handlers(writer)
    prepared = _prepare(data_root, run_dir, writer, config, settings, pretrained)
    _fit(prepared, run_dir, writer, progress, resume)
    model_dir = _finalise(prepared, run_dir, writer, progress)
    export_for_the_onnx_runtime(model_dir, settings, prepared.network.model_config)
    writer.status(
        "completed",
        phase="done",
        # A K-class run's epoch AUROC is the macro average over classes, not any fracture's.
        message=f"Best val {_epoch_auroc_name(prepared.network.model_config)} "
        f"{progress.best_auroc:.3f} at epoch {progress.best_epoch}",
        best_epoch=progress.best_epoch,
        best_val_auroc=progress.best_auroc,
        model_dir=str(model_dir),
        skipped_files=prepared.skipped,
        replicas=int(prepared.network.strategy.num_replicas_in_sync),
    )
    return model_dir


def export_for_the_onnx_runtime(model_dir: Path, settings: Settings, config: ModelConfig) -> bool:
    """Build the model's ONNX export now where the dashboard serves with ONNX Runtime.

    Training runs in its own process, which has TensorFlow already: the server that
    serves this model after promotion then finds the export in the folder (promotion
    copies it) instead of building it at its first start. Where the runtime is
    TensorFlow, or the model has K classes (no export), nothing is built. A failure is
    logged, never fatal: the server builds the export itself when it needs it.
    Returns whether an export is in place.
    """
    from fracture.inference.runtime import RuntimeChoiceError, choose_runtime, ensure_onnx_export

    if config.is_multiclass or choose_runtime(settings.runtime) != "onnx":
        return False
    try:
        ensure_onnx_export(model_dir)
    except RuntimeChoiceError as error:
        logger.warning("the ONNX export was not built (the server will build it): %s", error)
        return False
    return True


def _epoch_auroc_name(config: ModelConfig) -> str:
    """What the per-epoch validation AUROC is, in words (see training.validation)."""
    return "macro AUROC (mean over classes)" if config.is_multiclass else "AUROC"


def _start(
    run_dir: Path, config: TrainConfig, pretrained: bool, resume: bool
) -> tuple[TrainConfig, bool, RunProgress]:
    """The config and progress to train with: a new run's, or an interrupted run's own."""
    if not resume:
        write_train_config(run_dir / TRAIN_CONFIG_FILE, config, pretrained=pretrained)
        return config, pretrained, RunProgress()
    progress = RunProgress.resume(run_dir)
    saved, saved_pretrained = read_train_config(run_dir / TRAIN_CONFIG_FILE)
    # A run keeps its own weights choice: resuming must not mix random and ImageNet stems.
    return saved, pretrained if saved_pretrained is None else saved_pretrained, progress


def _prepare(
    data_root: str | os.PathLike[str],
    run_dir: Path,
    writer: RunWriter,
    config: TrainConfig,
    settings: Settings,
    pretrained: bool,
) -> Prepared:
    """Load the dataset, build the network and compute (or read) every stem feature."""
    import keras
    import tensorflow as tf

    from fracture.inference.engine import configure_threads

    configure_threads()  # before the first TensorFlow op: the pools are fixed then
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    dataset = load_dataset(data_root, val_fraction=config.val_fraction, seed=config.seed)
    if not dataset.split("train") or not dataset.split("val"):
        raise ValueError(f"{data_root} needs both train and val images (found {dataset.summary()})")
    task = resolve_task(dataset, config.task)
    check_splits(dataset, task)
    network = _build_network(run_dir.name, config, task, settings, pretrained)
    train, val, skipped = _cache_features(dataset, task, network, config, settings, writer)
    return Prepared(config, dataset, task, network, train, val, skipped)


def _build_network(
    name: str, config: TrainConfig, task: Task, settings: Settings, pretrained: bool
) -> Network:
    """ResNet-50 from ImageNet (or random) weights, with its tail made in the strategy's scope."""
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
        name=name,
        version=time.strftime("%Y%m%d-%H%M%S"),
    )
    strategy = make_strategy(config.strategy)
    with strategy.scope():
        # The tail is a Keras model of its own; made in scope, it trains replicated.
        model = build_classifier(model_config, weights_path)
        stem, _ = split_at(model, config.fine_tune_from)
        make_tail = logit_tail if task.classes is not None else evidence_tail
        tail = make_tail(model, config.fine_tune_from)
    reference = imagenet_reference(model, model_config)
    return Network(model_config, model, stem, tail, strategy, reference, weights_sha)


def _cache_features(
    dataset: Dataset,
    task: Task,
    network: Network,
    config: TrainConfig,
    settings: Settings,
    writer: RunWriter,
) -> tuple[TrainSplit, ValidationSplit, list[str]]:
    """Every image's stem features (each train view, val unaugmented), with progress in the status."""
    train_records, val_records = dataset.split("train"), dataset.split("val")
    cache = FeatureCache(settings.cache_dir / "features", model_key(config, network.weights_sha))
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
        train_records, views, network.stem, cache, config, on_cache_progress
    )
    progress_base[0] = len(train_records) * views
    val_features, val_ok, val_boxes = compute_features(
        val_records, 1, network.stem, cache, config, on_cache_progress
    )
    train_masks = None
    if task.classes is None:
        shape = network.tail.output[EVIDENCE_OUTPUT].shape
        grid = (int(shape[1]), int(shape[2]))
        train_masks = np.stack([box_masks(view, grid) for view in train_boxes])[:, train_ok]
    skipped = [
        str(r.path) for r, ok in zip(train_records + val_records, [*train_ok, *val_ok]) if not ok
    ]
    train_labels = task.labels(train_records)[train_ok]
    class_weight = _class_weights(train_labels, len(task.label_names))
    # In place: the train features are the run's largest array (views x images x
    # stem output; 10.7 GB for 3 views at 384 px from conv4), and a boolean-index
    # copy would double them.
    train = TrainSplit(
        features=keep_usable(train_features, train_ok),
        labels=train_labels,
        sample_weights=np.array([class_weight[int(y)] for y in train_labels], np.float32),
        masks=train_masks,
    )
    val = ValidationSplit(
        features=keep_usable(val_features, val_ok)[0],
        labels=task.labels(val_records)[val_ok],
        boxes=[b for b, ok in zip(val_boxes[0], val_ok) if ok],
        records=[r for r, ok in zip(val_records, val_ok) if ok],
    )
    return train, val, skipped


def _fit(
    prepared: Prepared, run_dir: Path, writer: RunWriter, progress: RunProgress, resume: bool
) -> None:
    """Train the head alone, then the top blocks, from where ``progress`` says the run is.

    One ``fit`` per phase (the phase changes what trains and the learning rate);
    the per-epoch bookkeeping is the callbacks' (:mod:`fracture.training.callbacks`).
    """
    import keras

    from fracture.training.callbacks import Schedule, epoch_callbacks

    config, network, train = prepared.config, prepared.network, prepared.train
    schedule = Schedule(config.head_epochs, config.total_epochs, config.patience)
    bookkeeping = epoch_callbacks(
        run_dir=run_dir,
        writer=writer,
        progress=progress,
        schedule=schedule,
        val=prepared.val,
        label_names=prepared.task.label_names,
        normal_index=network.model_config.normal_index,
        multiclass=prepared.multiclass,
        batches=math.ceil(len(train.labels) / config.batch_size),
    )
    if resume:
        network.tail.load_weights(run_dir / CHECKPOINTS_DIR / LAST_CHECKPOINT)
    phases = (
        ("head", 1, config.head_epochs, config.head_lr),
        ("fine-tune", config.head_epochs + 1, config.total_epochs, config.lr),
    )
    for phase, first, last, learning_rate in phases:
        first = max(first, progress.completed_epoch + 1)
        if first > last:
            continue
        set_trainable(network.model, None if phase == "head" else config.fine_tune_from)
        with network.strategy.scope():
            _compile(network.tail, learning_rate, config)
        batches = _batches(
            train.features, train.labels, train.sample_weights, train.masks, config, first
        )
        draw = keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda index, logs, batches=batches: batches.draw(index + 1)
        )
        network.tail.fit(
            batches,
            initial_epoch=first - 1,
            epochs=last,
            verbose=0,
            callbacks=[draw, *bookkeeping],
        )
        if network.tail.stop_training:
            break


def _finalise(prepared: Prepared, run_dir: Path, writer: RunWriter, progress: RunProgress) -> Path:
    """The best epoch, rounded as it will be saved, with its OOD gate and heat-map scale, saved.

    Everything here is measured on the model exactly as the folder will hold it
    (:func:`fracture.model.folder.quantise_like_saved`).
    """
    config, network, val = prepared.config, prepared.network, prepared.val
    writer.status("finishing", phase="calibrating", message="Calibrating and saving the model")
    network.tail.load_weights(run_dir / CHECKPOINTS_DIR / BEST_CHECKPOINT)
    quantise_like_saved(network.model, network.model_config, network.reference)
    val_logits, val_evidence = predict_tail(network.tail, val.features)
    writer.status("finishing", phase="ood", message="Fitting the out-of-distribution gate")
    ood_gate = _fit_ood_from_cache(
        network.model,
        config,
        prepared.train.features[0],
        val.features,
        prepared.train.labels,
        val.labels,
    )
    model_config = network.model_config
    if val_evidence is not None:
        model_config = dataclasses.replace(
            model_config, evidence_scale=evidence_scale(val_evidence, val.labels)
        )
    return _save_candidate(
        prepared, run_dir, model_config, val_logits, ood_gate, progress, writer.started
    )


def _save_candidate(
    prepared: Prepared,
    run_dir: Path,
    model_config: ModelConfig,
    val_logits: np.ndarray,
    ood_gate: Any,
    progress: RunProgress,
    started: float,
) -> Path:
    """Calibrate on val, then write the candidate model folder with its card and OOD gate.

    ``val_logits`` are the network's raw logits on val. Platt scaling removes the
    bias that class weighting adds to them (log of the weight ratio) along with
    any other (:func:`fracture.evaluation.calibrate.calibrate_binary`). A K-class
    model gets a softmax temperature and, with a normal class, any-fracture
    thresholds (:func:`fracture.evaluation.operating_points.calibrate_classes`).
    """
    from fracture.evaluation.calibrate import calibrate_binary
    from fracture.evaluation.operating_points import calibrate_classes
    from fracture.model.card import build_card
    from fracture.model.folder import OOD_FILE

    config, val = prepared.config, prepared.val
    if model_config.is_multiclass:
        calibration = calibrate_classes(
            val_logits, val.labels, normal_index=model_config.normal_index, seed=config.seed
        )
        model_config = dataclasses.replace(
            model_config,
            temperature=calibration.temperature,
            thresholds=calibration.thresholds,
            prior_shift=calibration.shift,
        )
        report = _class_report(val.labels, val_logits, model_config)
        report["ece"] = calibration.ece_in_sample
        report["ece_uncalibrated"] = calibration.ece_before
        report["calibration_fit"] = calibration.summary()
    else:
        fitted = calibrate_binary(
            model_config, val_logits, val.labels, val.records, seed=config.seed
        )
        model_config, calibration, report = fitted.config, fitted.calibration, fitted.report
    card = build_card(
        model_config=model_config,
        train_config=dataclasses.asdict(config),
        dataset=prepared.dataset,
        report=report,
        history=progress.history,
        best_epoch=progress.best_epoch,
        training_seconds=time.time() - started,
        imagenet_sha256=prepared.network.weights_sha,
        commit=_git_commit(),
        # Images per class that training and validation actually used (unreadable ones left out).
        class_counts={
            "train": prepared.task.label_counts(prepared.train.labels),
            "val": prepared.task.label_counts(val.labels),
        },
        ood_gate=ood_gate,
        calibration=calibration,
    )
    folder = ModelFolder(candidate_dir(run_dir))
    folder.write_model(
        prepared.network.model,
        model_config,
        reference=prepared.network.reference,
        card=card,
        report=report,
        heads={OOD_FILE: ood_gate},
    )
    return folder.path


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


def _class_report(labels: np.ndarray, logits: np.ndarray, config: ModelConfig) -> EvaluationReport:
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
    metrics = class_metrics(labels, probabilities, config.normal_index)
    if config.normal_index is not None:
        metrics["macro_auroc"] = metrics.pop("auroc")
        # Any fracture at the operating points comes from class_evaluation, not the top class.
        metrics.pop("sensitivity", None)
        metrics.pop("specificity", None)
    report = {
        **metrics,
        **class_evaluation(labels, probabilities, config),
        "classes": config.class_names,
        "n": int(len(labels)),
        "n_per_class": np.bincount(labels, minlength=config.num_outputs).tolist(),
        "confusion_matrix": confusion(labels, logits, config.num_outputs),
        "operating_point": config.operating_point,
    }
    return cast(EvaluationReport, report)


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
