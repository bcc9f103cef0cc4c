"""What the Train and Model pages show about runs and models: progress, durations, card headlines, comparisons."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fracture.model.reports import EvaluationReport, ModelCard

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "RunProgress",
    "card_headline",
    "compare_metrics",
    "demote_headings",
    "hardware_free_subgroup",
    "metric_title",
    "same_dataset",
    "format_duration",
    "run_progress",
]


@dataclass(frozen=True)
class RunProgress:
    """A run's ``status.json`` read for display."""

    state: str  # the run's own state name, for the page's logic
    phase: str  # in plain words
    fraction: float | None  # overall progress in [0, 1], None when unknown
    text: str  # in plain words
    eta: str | None  # None until the first epoch has a measured rate
    finished: bool
    label: str = ""  # the state in plain words, for people


_FINISHED_STATES = frozenset({"completed", "failed", "cancelled", "interrupted", "error"})
# The trainer's state and phase names in the words a new user reads on the page.
_PLAIN_STATES = {
    "starting": "starting",
    "caching": "preparing images",
    "running": "training",
    "finishing": "saving the model",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "interrupted": "interrupted",
    "error": "failed",
}
_PLAIN_PHASES = {
    "setup": "loading the data and the network",
    "caching features": "preparing images",
    "calibrating": "calibrating the probabilities",
    "ood": "learning what the training radiographs look like",
    "done": "done",
}
_PLAIN_MESSAGES = {
    "ood": "Learning what the training radiographs look like, to flag other images",
}


def format_duration(seconds: float | None) -> str | None:
    """``3 h 05 min``, ``12 min 30 s`` or ``45 s``; None for a missing or negative value."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def run_progress(status: Mapping[str, Any]) -> RunProgress:
    """Overall progress of a run from its status, for a progress bar and a caption.

    Preparing images (the feature cache) reports ``done``/``total`` images;
    epochs report ``epoch``/``epochs`` and ``batch``/``batches``. Preparing is
    counted as a phase of its own: its fraction is of the preparing, not of the
    whole run. The time left is shown only once the first epoch is done: before
    that the rate covers start-up and preparing, not training, and read "2 s"
    with most of the run ahead.
    """
    state = str(status.get("state", "unknown"))
    raw_phase = str(status.get("phase") or state)
    phase = _PLAIN_PHASES.get(raw_phase, raw_phase)
    message = _PLAIN_MESSAGES.get(raw_phase, str(status.get("message") or ""))
    finished = state in _FINISHED_STATES
    fraction: float | None = None
    epoch = status.get("epoch")
    if state == "completed":
        fraction = 1.0
    elif isinstance(epoch, int) and status.get("epochs"):
        epochs = int(status["epochs"])
        within = 0.0
        if status.get("batches"):
            within = min(1.0, int(status.get("batch") or 0) / int(status["batches"]))
        fraction = min(1.0, (epoch - 1 + within) / epochs)
    elif status.get("total"):
        fraction = min(1.0, int(status.get("done") or 0) / int(status["total"]))
    if state == "caching" and status.get("total"):
        message = f"Preparing images ({int(status.get('done') or 0):,} of {int(status['total']):,})"
    batches = status.get("batches")
    first_epoch_done = (
        state == "running"
        and isinstance(epoch, int)
        and (epoch > 1 or (bool(batches) and status.get("batch") == batches))
    )
    eta = format_duration(status.get("eta_seconds")) if first_epoch_done else None
    return RunProgress(
        state=state,
        phase=phase,
        fraction=fraction,
        text=message or phase,
        eta=eta,
        finished=finished,
        label=_PLAIN_STATES.get(state, state),
    )


def card_headline(card: ModelCard | None) -> dict[str, Any]:
    """Name, version and validation AUROC (with its interval) from a model card."""
    card = card or {}
    metrics = card.get("val_metrics") or {}
    return {
        "name": card.get("name"),
        "version": card.get("version"),
        "val_auroc": metrics.get("auroc"),
        "val_auroc_ci": metrics.get("auroc_ci"),
    }


_COMPARED = (
    ("auroc", "Area under the ROC curve (AUROC)"),
    ("macro_auroc", "Macro AUROC (each class against the rest, averaged)"),
    ("class_accuracy", "Accuracy over the classes (most likely class)"),
    ("accuracy", "Accuracy, fracture against normal (default operating point)"),
    ("pr_auc", "Area under the precision-recall curve"),
    ("sensitivity", "Sensitivity (default operating point)"),
    ("specificity", "Specificity (default operating point)"),
    ("hardware_free_auroc", "AUROC on images without hardware"),
    ("brier", "Brier score (lower is better)"),
    ("ece", "Expected calibration error (lower is better)"),
)


def metric_title(key: str, card: ModelCard, default: str = "") -> str:
    """What a validation figure of ``card`` is, in words: AUROC and accuracy mean
    different things for a fracture model and for a K-class one.

    A K-class model with a normal class reports any fracture against normal as
    ``auroc`` and ``accuracy``; without one, ``auroc`` is the macro average and
    ``accuracy`` the K-class accuracy (see :func:`fracture.model.card.headline`).
    """
    classes = card.get("classes") or []
    k = len(classes)
    if not card.get("multiclass"):
        return {
            "auroc": "AUROC, fracture against normal",
            "accuracy": "Accuracy, fracture against normal (default operating point)",
        }.get(key, default)
    with_normal = bool(card.get("normal_class"))
    titles = {
        "auroc": "AUROC, any fracture against normal"
        if with_normal
        else f"Macro AUROC (each of the {k} classes against the rest, averaged)",
        "macro_auroc": f"Macro AUROC (each of the {k} classes against the rest, averaged)",
        "class_accuracy": f"Accuracy over {k} classes (most likely class)",
        "accuracy": "Accuracy, any fracture against normal (default operating point)"
        if with_normal
        else f"Accuracy over {k} classes (most likely class)",
    }
    return titles.get(key, default)


def same_dataset(card: ModelCard | None, other: ModelCard | None) -> bool:
    """Whether two models were trained and validated on the same data (same fingerprint).

    Only then do their validation figures compare like with like; a card
    without a fingerprint (written before they were recorded) matches nothing.
    """
    first = ((card or {}).get("training_data") or {}).get("fingerprint")
    second = ((other or {}).get("training_data") or {}).get("fingerprint")
    return bool(first) and first == second


def compare_metrics(candidate: ModelCard | None, active: ModelCard | None) -> "pd.DataFrame":
    """Validation metrics of a new model next to the active one's, from their cards.

    Each model is judged on its own validation split, so the comparison is only
    fair when both were trained on the same dataset; the page says so.
    """
    import pandas as pd

    new = (candidate or {}).get("val_metrics") or {}
    old = (active or {}).get("val_metrics") or {}
    rows = []
    for key, title in _COMPARED:
        if key not in new and key not in old:
            continue
        title = metric_title(key, candidate or active or {}, title)
        a, b = new.get(key), old.get(key)
        rows.append(
            {
                "metric": title,
                "new model": a,
                "active model": b,
                "difference": a - b
                if isinstance(a, (int, float)) and isinstance(b, (int, float))
                else None,
            }
        )
    frame = pd.DataFrame(rows, columns=["metric", "new model", "active model", "difference"])
    return frame.astype(
        {column: "Float64" for column in ("new model", "active model", "difference")}
    )


def hardware_free_subgroup(report: EvaluationReport | None) -> Mapping[str, Any] | None:
    """The report's images-without-hardware subgroup; None when the dataset has no hardware.

    A dataset without any implant (phantoms, most external sets) makes the
    subgroup equal to the whole split: showing it would suggest a check that
    was never made.
    """
    report = report or {}
    free = (report.get("subgroups") or {}).get("hardware_free")
    if not free or free.get("n") is None or report.get("n") is None:
        return None
    return free if int(free["n"]) < int(report["n"]) else None


def demote_headings(markdown: str, levels: int = 1) -> str:
    """``markdown`` with every heading ``levels`` deeper (at most ``######``), code left alone.

    A document shown inside a page (a model card) must not outrank the page's own title.
    """
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("#"):
            hashes = len(line) - len(line.lstrip("#"))
            if line[hashes : hashes + 1] in (" ", ""):
                line = "#" * min(6, hashes + levels) + line[hashes:]
        out.append(line)
    return "\n".join(out) + ("\n" if markdown.endswith("\n") else "")
