"""A training run's per-epoch bookkeeping, as Keras callbacks beside ``fit``.

Each callback does one job after every epoch, in the order the list from
:func:`epoch_callbacks` gives them: measure val, write TensorBoard scalars,
checkpoint, record the run's files, stop early. This is how Keras's own
``ModelCheckpoint``, ``BackupAndRestore`` and ``EarlyStopping`` keep those jobs
out of the loop; ours write the run-folder format of :mod:`fracture.training.runs`,
which the dashboard reads and a resume starts from. They share one
:class:`~fracture.training.runs.RunProgress`, the resume state.

The checkpoint is written before ``state.json`` points at it: a kill between the
two leaves the previous, complete epoch as the resume point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from fracture.training.losses import LOGIT_OUTPUT
from fracture.training.runs import (
    BEST_CHECKPOINT,
    CHECKPOINTS_DIR,
    LAST_CHECKPOINT,
    RunProgress,
    RunWriter,
)
from fracture.training.validation import (
    ValidationSplit,
    binary_metrics,
    class_metrics,
    confusion,
    pointing,
    predict_tail,
    softmax,
)

__all__ = ["Schedule", "epoch_callbacks"]


@dataclass(frozen=True)
class Schedule:
    """The two phases of a run (head alone, then fine-tuning) and when to stop early."""

    head_epochs: int
    total_epochs: int
    patience: int

    def phase(self, epoch: int) -> str:
        """``head`` or ``fine-tune`` for a 1-based epoch number."""
        return "head" if epoch <= self.head_epochs else "fine-tune"


def epoch_callbacks(
    *,
    run_dir: Path,
    writer: RunWriter,
    progress: RunProgress,
    schedule: Schedule,
    val: ValidationSplit,
    label_names: list[str],
    normal_index: int | None,
    multiclass: bool,
    batches: int,
) -> list[keras.callbacks.Callback]:
    """The callbacks of one run's ``fit`` calls, in the order their jobs must happen."""
    checkpoints = run_dir / CHECKPOINTS_DIR
    checkpoints.mkdir(exist_ok=True)
    return [
        BatchStatus(writer, schedule, batches),
        Validation(val, progress, schedule, label_names, normal_index, multiclass),
        TensorBoardScalars(run_dir / "tensorboard", progress),
        Checkpoints(checkpoints, progress),
        RunRecords(writer, progress, label_names),
        PatienceStop(schedule, progress),
    ]


class BatchStatus(keras.callbacks.Callback):
    """Batch progress and an ETA in ``status.json``, for the dashboard's progress bar."""

    def __init__(self, writer: RunWriter, schedule: Schedule, batches: int) -> None:
        super().__init__()
        self.writer, self.schedule, self.batches = writer, schedule, batches
        self.epoch, self.started = 0, time.time()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch, self.started = epoch + 1, time.time()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        done, epochs, phase = batch + 1, self.schedule.total_epochs, self.schedule.phase(self.epoch)
        per_batch = (time.time() - self.started) / done
        remaining = (self.batches - done) + (epochs - self.epoch) * self.batches
        self.writer.status(
            "running",
            force=done == self.batches,
            phase=phase,
            epoch=self.epoch,
            epochs=epochs,
            batch=done,
            batches=self.batches,
            eta_seconds=per_batch * remaining,
            message=f"Epoch {self.epoch}/{epochs} ({phase}), batch {done}/{self.batches}",
        )


def _log(logs: dict[str, Any], name: str) -> float:
    # Keras prefixes a metric of one output of several with the output's name.
    return float(logs[name] if name in logs else logs[f"{LOGIT_OUTPUT}_{name}"])


class Validation(keras.callbacks.Callback):
    """Measure val after each epoch and add the epoch's row and confusion matrix to the progress."""

    def __init__(
        self,
        val: ValidationSplit,
        progress: RunProgress,
        schedule: Schedule,
        label_names: list[str],
        normal_index: int | None,
        multiclass: bool,
    ) -> None:
        super().__init__()
        self.val, self.progress, self.schedule = val, progress, schedule
        self.label_names, self.normal_index, self.multiclass = (
            label_names,
            normal_index,
            multiclass,
        )
        self.started = time.time()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.time()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        epoch += 1
        logs = logs or {}
        labels = self.val.labels
        logits, evidence = predict_tail(self.model, self.val.features)
        train_row: dict[str, Any] = {
            "train_loss": float(logs["loss"]),
            "train_accuracy": _log(logs, "accuracy"),
        }
        val: dict[str, Any]
        if self.multiclass:
            val = class_metrics(labels, softmax(logits), self.normal_index)
        else:
            val = dict(binary_metrics(labels, logits))
            # The binary tail always has its evidence map.
            val["pointing"] = pointing(evidence, labels, self.val.boxes)  # type: ignore[arg-type]
            tn, fp = _log(logs, "tn"), _log(logs, "fp")
            train_row = {
                "train_loss": float(logs["loss"]),
                "train_auroc": _log(logs, "auroc"),
                "train_accuracy": _log(logs, "accuracy"),
                "train_sensitivity": _log(logs, "sensitivity"),
                "train_specificity": tn / max(tn + fp, 1.0),
            }
        self.progress.history.append(
            {
                "epoch": epoch,
                "phase": self.schedule.phase(epoch),
                **train_row,
                **{f"val_{k}": v for k, v in val.items()},
                "seconds": time.time() - self.started,
            }
        )
        self.progress.confusions.append(
            {"epoch": epoch, "matrix": confusion(labels, logits, len(self.label_names))}
        )


class TensorBoardScalars(keras.callbacks.Callback):
    """Every float of the epoch's row as a TensorBoard scalar (``tensorboard/`` of the run)."""

    def __init__(self, log_dir: Path, progress: RunProgress) -> None:
        import tensorflow as tf

        super().__init__()
        self.progress = progress
        self.summaries = tf.summary.create_file_writer(str(log_dir))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        import tensorflow as tf

        row = self.progress.history[-1]
        with self.summaries.as_default(step=epoch + 1):
            for key, value in row.items():
                if isinstance(value, float):
                    tf.summary.scalar(key, value)


class Checkpoints(keras.callbacks.Callback):
    """The last epoch's weights, and the best epoch's by val AUROC (the one a run finishes with)."""

    def __init__(self, directory: Path, progress: RunProgress) -> None:
        super().__init__()
        self.directory, self.progress = directory, progress

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        epoch += 1
        self.model.save_weights(self.directory / LAST_CHECKPOINT)
        auroc = self.progress.history[-1]["val_auroc"]
        if auroc > self.progress.best_auroc:
            self.progress.best_auroc, self.progress.best_epoch = auroc, epoch
            self.model.save_weights(self.directory / BEST_CHECKPOINT)


class RunRecords(keras.callbacks.Callback):
    """``metrics.json``/``.csv``, ``confusion.json``, then ``state.json``: the epoch is complete."""

    def __init__(self, writer: RunWriter, progress: RunProgress, label_names: list[str]) -> None:
        super().__init__()
        self.writer, self.progress, self.label_names = writer, progress, label_names

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.progress.completed_epoch = epoch + 1
        self.writer.metrics(self.progress.history)
        self.writer.confusion(self.label_names, self.progress.confusions)
        self.writer.state(self.progress)


class PatienceStop(keras.callbacks.Callback):
    """Stop fine-tuning after ``patience`` epochs without a better val AUROC.

    The head phase always runs to its end; patience counts from the best epoch
    or the start of fine-tuning, whichever is later.
    """

    def __init__(self, schedule: Schedule, progress: RunProgress) -> None:
        super().__init__()
        self.schedule, self.progress = schedule, progress

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        epoch += 1
        since = epoch - max(self.progress.best_epoch, self.schedule.head_epochs)
        if self.schedule.phase(epoch) == "fine-tune" and since >= self.schedule.patience:
            self.model.stop_training = True
