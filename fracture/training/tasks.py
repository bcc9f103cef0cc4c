"""What a run learns from a dataset: the model's classes and each image's label.

Two tasks (:data:`TASKS`):

``classes``
    One output per class the folders give: the binary fracture model when they are
    fracture and normal synonyms, a K-class softmax model otherwise (fracture types,
    MURA-like body parts, a hospital's own classes).
``fracture``
    Fracture or not, from a K-class folder set that has a normal class: every other
    class counts as a fracture and the binary model is trained (with its box loss
    and Grad-CAM scale), the types merged.

Both the trainer and the Train page's folder check use :func:`resolve_task`, so
a run never starts on data that the trainer would then refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fracture.data.records import LABEL_NAMES, SPLITS, Dataset, Record, label_from_name

__all__ = ["TASKS", "Task", "resolve_task", "check_splits"]

# Task name -> what it means, in plain words (the Train page's picker shows these).
TASKS: dict[str, str] = {
    "classes": "One class per folder",
    "fracture": "Fracture or not (fracture types merged)",
}


@dataclass(frozen=True)
class Task:
    """The model a run trains on a dataset: its classes, and how records map to labels."""

    name: str
    # ModelConfig.classes: None for the binary model, else the K class names.
    classes: list[str] | None
    # The dataset label that becomes "normal" under the fracture task (K-class data only).
    merged_normal: int | None = None

    @property
    def label_names(self) -> list[str]:
        """Names of the training labels 0..K-1 (binary: normal, fractured)."""
        return list(self.classes) if self.classes is not None else [LABEL_NAMES[0], LABEL_NAMES[1]]

    def labels(self, records: Sequence[Record]) -> np.ndarray:
        """Each record's training label."""
        raw = np.array([record.label for record in records], dtype=np.int64)
        if self.merged_normal is None:
            return raw
        return (raw != self.merged_normal).astype(np.int64)

    def label_counts(self, labels: np.ndarray) -> dict[str, int]:
        """Images per training label, by name, and their total."""
        counts = np.bincount(labels, minlength=len(self.label_names))
        return {
            **{name: int(count) for name, count in zip(self.label_names, counts)},
            "total": int(len(labels)),
        }

    def summary(self, dataset: Dataset) -> dict[str, dict[str, int]]:
        """Like :meth:`Dataset.summary`, in this task's labels (types merged under "fracture")."""
        return {
            split: self.label_counts(self.labels(records))
            for split in SPLITS
            if (records := dataset.split(split))
        }


def resolve_task(dataset: Dataset, task: str = "classes") -> Task:
    """The :class:`Task` ``task`` means on ``dataset``, or a ValueError saying why it cannot."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "classes" or dataset.classes is None:
        return Task(name=task, classes=dataset.classes)
    normals = [i for i, name in enumerate(dataset.classes) if label_from_name(name) == 0]
    if not normals:
        raise ValueError(
            "'Fracture or not' needs a normal class folder (normal, negative, non_fractured, "
            f"...); this dataset's classes are {', '.join(dataset.classes)}"
        )
    return Task(name=task, classes=None, merged_normal=normals[0])


def check_splits(dataset: Dataset, task: Task) -> None:
    """Raise a ValueError unless the train and val splits each hold every class of ``task``."""
    for split in ("train", "val"):
        records = dataset.split(split)
        counts = np.bincount(task.labels(records), minlength=len(task.label_names))
        missing = [name for name, count in zip(task.label_names, counts) if count == 0]
        if missing and task.classes is None:
            raise ValueError(
                f"The {split} split of {dataset.root} needs both fractured and normal images; "
                f"it has {counts[1]} fractured and {counts[0]} normal"
            )
        if missing:
            present = ", ".join(
                f"{count} {name}" for name, count in zip(task.label_names, counts) if count
            )
            raise ValueError(
                f"The {split} split of {dataset.root} needs images of every class; it has none "
                f"of {', '.join(missing)} (it has {present or 'no images'})"
            )
