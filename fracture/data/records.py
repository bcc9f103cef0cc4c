"""What a dataset is made of: records, labels and their one spelling, splits, layout errors.

A binary (fracture) dataset: label 1 is always the fracture class; its folder
name, and its name in every summary, is ``fractured`` (:data:`LABEL_NAMES`).
:data:`CLASS_SYNONYMS` lists the folder names accepted when reading a dataset.

A K-class dataset (folders named anything else, e.g. fracture types): the label
is an index into :attr:`Dataset.classes`, the class folder names in a stable
sorted order, which is also the order of the trained model's outputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from fracture.errors import FractureError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CLASS_SYNONYMS",
    "LABEL_NAMES",
    "LAYOUTS",
    "SPLITS",
    "Record",
    "Dataset",
    "DatasetLayoutError",
    "label_from_name",
    "relative_posix",
    "region_words",
    "class_sort_key",
    "summary_classes",
]

# Folder names accepted for each class, compared case-insensitively with "-" and
# " " read as "_", so "Non-fractured" and "non fractured" work as well.
CLASS_SYNONYMS: dict[str, frozenset[str]] = {
    "fracture": frozenset({"fractured", "fracture", "positive", "abnormal", "1"}),
    "normal": frozenset({"normal", "non_fractured", "negative", "0"}),
}
_LABEL_OF_CLASS = {"fracture": 1, "normal": 0}
# The folder names this package writes; label 1 is always the fracture class.
LABEL_NAMES: dict[int, str] = {1: "fractured", 0: "normal"}
# Region labels that do not read well on a page (FracAtlas's "mixed": several regions).
_REGION_WORDS = {"mixed": "several regions"}
SPLITS: tuple[str, ...] = ("train", "val", "test")
LAYOUTS: tuple[str, ...] = ("folders", "fracatlas", "mura")
_ACCEPTED_LAYOUTS = (
    "Accepted layouts:\n"
    "  folders:   ROOT/{train,val,test}/<class>/*  or  ROOT/<class>/*, with <class> one of "
    + ", ".join(sorted(CLASS_SYNONYMS["fracture"]))
    + " (fracture) or "
    + ", ".join(sorted(CLASS_SYNONYMS["normal"]))
    + " (normal) for a fracture model, or any other names (at least two) for a model of "
    "those classes; optional ROOT/manifest.csv and ROOT/boxes.csv\n"
    "  fracatlas: ROOT/images/{Fractured,Non_fractured}/*.jpg with ROOT/dataset.csv "
    "(FracAtlas as published)\n"
    "  mura:      ROOT/[train|valid/]XR_<REGION>/patientNNNNN/studyN_positive|negative/*.png"
)


class DatasetLayoutError(FractureError, ValueError):
    """The folder is not in any layout this module recognises.

    The message names the folder at fault and lists the accepted layouts, because
    the person who sees it is usually pointing the tool at a freshly unpacked
    download and needs to know what to move where.
    """

    def __init__(self, folder: str | os.PathLike[str], reason: str) -> None:
        self.folder = Path(folder)
        self.reason = reason
        super().__init__(f"{self.folder}: {reason}\n{_ACCEPTED_LAYOUTS}")


@dataclass(frozen=True)
class Record:
    """One radiograph: where it is, its label and what is known about it."""

    path: Path  # absolute
    label: int  # binary: 1 = fracture, 0 = normal; K classes: index into Dataset.classes
    split: str  # "train" | "val" | "test"
    region: str | None = None
    hardware: bool | None = None  # orthopaedic implant visible
    group: str | None = None  # patient/study id; splits never separate a group
    boxes: tuple[tuple[float, float, float, float], ...] = ()  # normalised x0, y0, x1, y1
    class_name: str | None = None  # K classes: the class folder's name; None when binary

    @property
    def label_name(self) -> str:
        return self.class_name if self.class_name is not None else LABEL_NAMES[self.label]


@dataclass
class Dataset:
    """All records of one dataset folder, each already assigned to a split."""

    root: Path
    layout: str  # one of LAYOUTS
    records: list[Record]
    # Splits this module carved out (seeded) because the folder had none; callers
    # report them so that nobody mistakes a made split for a published one.
    made_splits: tuple[str, ...] = ()
    # None: the binary fracture dataset. A list: the K class names, sorted
    # (:func:`class_sort_key`); each record's label indexes it.
    classes: list[str] | None = None

    @property
    def label_names(self) -> list[str]:
        """The name of each label, in label order (binary: ``["normal", "fractured"]``)."""
        return list(self.classes) if self.classes is not None else [LABEL_NAMES[0], LABEL_NAMES[1]]

    def split(self, name: str) -> list[Record]:
        """The records of one split, in a stable order."""
        if name not in SPLITS:
            raise ValueError(f"Unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return [record for record in self.records if record.split == name]

    def to_frame(self) -> "pd.DataFrame":
        """One row per record, for browsing, reports and subgroup metrics."""
        import pandas as pd

        rows = [
            {
                "path": str(record.path),
                "rel_path": relative_posix(record.path, self.root),
                "label": record.label,
                "label_name": record.label_name,
                "split": record.split,
                "region": record.region,
                "hardware": record.hardware,
                "group": record.group,
                "n_boxes": len(record.boxes),
            }
            for record in self.records
        ]
        columns = [
            "path",
            "rel_path",
            "label",
            "label_name",
            "split",
            "region",
            "hardware",
            "group",
            "n_boxes",
        ]
        frame = pd.DataFrame(rows, columns=columns)
        return frame.astype({"label": "int64", "n_boxes": "int64", "hardware": "boolean"})

    def summary(self) -> dict[str, dict[str, int]]:
        """Counts per split and class: ``{"train": {"fractured": n, "normal": n, "total": n}}``.

        A K-class dataset has one entry per class name instead of fractured and normal.
        """
        counts: dict[str, dict[str, int]] = {}
        for name in SPLITS:
            records = self.split(name)
            if not records:
                continue
            if self.classes is not None:
                # K classes: every class, in class order, zeros included.
                per_class = [0] * len(self.classes)
                for record in records:
                    per_class[record.label] += 1
                counts[name] = {**dict(zip(self.classes, per_class)), "total": len(records)}
                continue
            fractured = sum(record.label for record in records)
            counts[name] = {
                LABEL_NAMES[1]: fractured,
                LABEL_NAMES[0]: len(records) - fractured,
                "total": len(records),
            }
        return counts


def label_from_name(name: str) -> int | None:
    """The label a folder name stands for (1 fracture, 0 normal), or None."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    for class_name, synonyms in CLASS_SYNONYMS.items():
        if key in synonyms:
            return _LABEL_OF_CLASS[class_name]
    return None


def class_sort_key(name: str) -> tuple[str, str]:
    """The order of K classes: case-insensitive, ties broken by the exact spelling.

    Stable on every machine (it does not depend on the order folders are listed),
    because it fixes which output of the model means which class.
    """
    return (name.casefold(), name)


def summary_classes(summary: Mapping[str, Mapping[str, int]]) -> list[str]:
    """The class columns of a :meth:`Dataset.summary`: fractured and normal, or the K classes."""
    names: list[str] = []
    for row in summary.values():
        names += [name for name in (row or {}) if name != "total" and name not in names]
    return [LABEL_NAMES[1], LABEL_NAMES[0]] if set(names) <= set(LABEL_NAMES.values()) else names


def relative_posix(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return Path(os.path.relpath(path, root)).as_posix()


def region_words(region: str) -> str:
    """A body-region label in plain words ("mixed" -> "several regions", "lower_leg" -> "lower leg")."""
    return _REGION_WORDS.get(region, region.replace("_", " "))
