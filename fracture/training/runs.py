"""The run-folder format: a training run's live status, metrics and resume state.

A run folder holds ``status.json`` (state, phase, progress, pid), ``metrics.json``
and ``metrics.csv`` (one row per epoch), ``confusion.json`` (the validation
confusion matrix of every epoch, K x K, with the class names), ``state.json`` (the resume point),
``train_config.json``, ``checkpoints/``, ``tensorboard/`` and, once finished,
the candidate model in ``model/``. Every file is written atomically.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fracture.config import Settings, get_settings
from fracture.io.files import atomic_write_json, atomic_write_text, read_json
from fracture.io.processes import pid_alive
from fracture.model.folder import ModelFolder
from fracture.training.config import TrainConfig

__all__ = [
    "STATUS_FILE",
    "METRICS_JSON",
    "METRICS_CSV",
    "STATE_FILE",
    "RunWriter",
    "read_status",
    "read_metrics",
    "read_confusion",
    "CONFUSION_JSON",
    "discard_candidate",
    "candidate_dir",
    "MODEL_SUBDIR",
    "TRAIN_CONFIG_FILE",
    "CHECKPOINTS_DIR",
    "LAST_CHECKPOINT",
    "BEST_CHECKPOINT",
    "RunProgress",
    "write_train_config",
    "read_train_config",
]

logger = logging.getLogger(__name__)


STATUS_FILE = "status.json"


METRICS_JSON = "metrics.json"


METRICS_CSV = "metrics.csv"


STATE_FILE = "state.json"


# {"classes": [K names], "epochs": [{"epoch": e, "matrix": K x K counts}]}: rows are
# the true class, columns the predicted one (the top class; binary: at probability 0.5).
CONFUSION_JSON = "confusion.json"


# Where a finished run leaves its candidate model (a model folder, see ModelFolder).
MODEL_SUBDIR = "model"
# The run's TrainConfig (plus "pretrained"): written by whoever starts the run (the
# background launcher, or the trainer itself), read by the training process and by
# a resume, so that it trains the same way.
TRAIN_CONFIG_FILE = "train_config.json"
CHECKPOINTS_DIR = "checkpoints"
# In CHECKPOINTS_DIR: the last complete epoch's tail weights (where a resume starts)
# and the best epoch's by val AUROC (what the run finishes with).
LAST_CHECKPOINT = "last.weights.h5"
BEST_CHECKPOINT = "best.weights.h5"


@dataclass
class RunProgress:
    """What a run has done so far: its epoch rows, confusion matrices and best epoch.

    ``state.json`` holds the last three fields (:meth:`RunWriter.state`);
    :meth:`resume` reads them back with ``metrics.json`` and ``confusion.json``.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    confusions: list[dict[str, Any]] = field(default_factory=list)
    completed_epoch: int = 0
    best_auroc: float = -1.0
    best_epoch: int = 0

    @classmethod
    def resume(cls, run_dir: str | os.PathLike[str]) -> "RunProgress":
        """The progress of an interrupted run; a ValueError when no epoch completed."""
        run_dir = Path(run_dir)
        state = read_json(run_dir / STATE_FILE, default={})
        if not state:
            raise ValueError(f"{run_dir} has no completed epoch to resume from")
        return cls(
            history=read_json(run_dir / METRICS_JSON, default=[]),
            confusions=(read_confusion(run_dir) or {}).get("epochs", []),
            completed_epoch=int(state.get("completed_epoch", 0)),
            best_auroc=float(state.get("best_auroc", -1.0)),
            best_epoch=int(state.get("best_epoch", 0)),
        )


def candidate_dir(run_dir: str | os.PathLike[str]) -> Path:
    """The candidate model folder of a run (it exists once training has finished)."""
    return Path(run_dir) / MODEL_SUBDIR


class RunWriter:
    """Writes a run's live status and metrics, each file atomically."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.started = time.time()
        self._last_status = 0.0

    def status(self, state: str, *, force: bool = True, **fields: Any) -> None:
        now = time.time()
        if not force and now - self._last_status < 1.0:
            return
        self._last_status = now
        payload = {
            "state": state,
            "pid": os.getpid(),
            "started": self.started,
            "updated": now,
            **fields,
        }
        atomic_write_json(self.run_dir / STATUS_FILE, payload)

    def metrics(self, history: list[dict[str, Any]]) -> None:
        atomic_write_json(self.run_dir / METRICS_JSON, history)
        if history:
            columns = list(history[0])
            lines = [",".join(columns)]
            lines += [",".join(_csv_cell(row.get(c)) for c in columns) for row in history]
            atomic_write_text(self.run_dir / METRICS_CSV, "\n".join(lines) + "\n")

    def state(self, progress: RunProgress) -> None:
        """Record the resume point; write it after the checkpoint it points to."""
        atomic_write_json(
            self.run_dir / STATE_FILE,
            {
                "completed_epoch": progress.completed_epoch,
                "best_auroc": progress.best_auroc,
                "best_epoch": progress.best_epoch,
            },
        )

    def confusion(self, classes: list[str], epochs: list[dict[str, Any]]) -> None:
        """Record every epoch's validation confusion matrix so far (see :data:`CONFUSION_JSON`)."""
        atomic_write_json(
            self.run_dir / CONFUSION_JSON, {"classes": list(classes), "epochs": list(epochs)}
        )


def write_train_config(
    path: str | os.PathLike[str], config: TrainConfig, *, pretrained: bool
) -> Path:
    """Write a run's ``train_config.json`` (see :data:`TRAIN_CONFIG_FILE`) at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {**config.to_json(), "pretrained": pretrained})
    return path


def read_train_config(path: str | os.PathLike[str]) -> tuple[TrainConfig, bool | None]:
    """The config in a ``train_config.json`` and its ImageNet choice (None if it has none).

    Raises ValueError, in words, for a file that is missing, unreadable or holds an
    invalid config.
    """
    path = Path(path)
    try:
        data = read_json(path)
    except ValueError as error:  # JSONDecodeError
        raise ValueError(f"{path} is not readable JSON: {error}") from None
    if data is None:
        raise ValueError(f"No training settings at {path}")
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold training settings")
    pretrained = data.pop("pretrained", None)
    try:
        return TrainConfig.from_json(data), None if pretrained is None else bool(pretrained)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def read_status(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """A run's status; a run whose process died mid-way reads as ``interrupted``."""
    status = read_json(Path(run_dir) / STATUS_FILE, default={"state": "unknown"})
    if status.get("state") in {"running", "caching", "starting"} and not pid_alive(
        status.get("pid")
    ):
        status["state"] = "interrupted"
        status["message"] = "The training process stopped unexpectedly; resume to continue."
    return status


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One row per finished epoch (see :meth:`RunWriter.metrics`); empty before the first."""
    history = read_json(Path(run_dir) / METRICS_JSON, default=[])
    return history if isinstance(history, list) else []


def read_confusion(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run's per-epoch confusion matrices (see :data:`CONFUSION_JSON`); None before the first."""
    data = read_json(Path(run_dir) / CONFUSION_JSON, default=None)
    if not isinstance(data, dict) or not data.get("epochs") or not data.get("classes"):
        return None
    return data


def discard_candidate(
    candidate_dir: str | os.PathLike[str], settings: Settings | None = None
) -> None:
    """Delete a run's candidate model folder; refuses anything outside ``settings.runs_dir``.

    Deleting is irreversible, so the path must be a real (not symlinked)
    folder strictly inside ``runs_dir`` that looks like a model folder, and
    its run must not still be writing it.
    """
    settings = settings or get_settings()
    candidate = Path(candidate_dir)
    runs = settings.runs_dir.resolve()
    if candidate.is_symlink():
        raise ValueError(f"Refusing to discard {candidate}: it is a symbolic link")
    resolved = candidate.resolve()
    if resolved == runs or not resolved.is_relative_to(runs):
        raise ValueError(
            f"Refusing to discard {candidate}: only model folders inside {runs} can be discarded"
        )
    if not resolved.is_dir():
        raise FileNotFoundError(f"No model folder at {candidate}")
    if not ModelFolder(resolved).looks_like_model():
        raise ValueError(f"Refusing to discard {candidate}: it is not a model folder")
    status = _run_state(resolved.parent)
    if status in {"starting", "caching", "running", "finishing"}:
        raise ValueError(f"Refusing to discard {candidate}: its run is still {status}")
    shutil.rmtree(resolved)
    logger.info("Discarded candidate model %s", resolved)


def _run_state(run_dir: Path) -> str | None:
    # fracture.training.trainer imports Keras; only pay for it when a status file exists.
    if not (run_dir / STATUS_FILE).is_file():
        return None
    from fracture.training.runs import read_status

    try:
        return read_status(run_dir).get("state")
    except ValueError:
        return None
