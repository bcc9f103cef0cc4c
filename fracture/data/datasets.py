"""Radiograph datasets: find the images, attach labels and metadata, make leak-free splits.

Three on-disk layouts are recognised, so a dataset can be used as downloaded:

``folders``
    ``ROOT/{train,val,test}/<class>/*`` or ``ROOT/<class>/*``, where ``<class>`` is
    one of :data:`CLASS_SYNONYMS`. Optional side files at ``ROOT``: ``manifest.csv``
    (``path`` relative to ROOT, ``region``, ``hardware`` 0/1, optional ``group``)
    and ``boxes.csv`` (``path,x0,y0,x1,y1`` normalised to [0, 1], one row per box).
    This is the layout :func:`import_fracatlas` and :mod:`fracture.data.phantoms` write.
``fracatlas``
    FracAtlas as published: ``ROOT/images/{Fractured,Non_fractured}/*.jpg``,
    ``ROOT/dataset.csv`` and ``ROOT/Annotations/COCO JSON/COCO_fracture_masks.json``.
    Abedeen I, Rahman MA, Prottyasha FZ et al. "FracAtlas: A Dataset for Fracture
    Classification, Localization and Segmentation of Musculoskeletal Radiographs."
    Scientific Data 10, 521 (2023), doi:10.1038/s41597-023-02432-4. Licence CC BY 4.0:
    cite it wherever a model trained on it is described.
``mura``
    ``ROOT/[train|valid/]XR_<REGION>/patientNNNNN/studyN_positive|negative/*.png``.
    Rajpurkar P, Irvin J, Bagul A et al. "MURA: Large Dataset for Abnormality
    Detection in Musculoskeletal Radiographs." arXiv:1712.06957 (2017).

Why splits are made here rather than by the caller: a split that separates two
views of one patient, or that changes between runs, silently inflates validation
scores. Every split this module makes is seeded, stratified by label, and keeps a
``group`` (patient) on one side.

Listing never decodes an image (it must stay fast on thousands of files), so a
broken file is listed like any other and is skipped, with a warning naming it,
when :func:`image_dataset` decodes it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import os
import shutil
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import cv2
import numpy as np

from fracture.io.files import atomic_write_text
from fracture.io.images import InvalidImageError, iter_image_files, load_image
from fracture.inference.preprocess import PAD_VALUE, letterbox

if TYPE_CHECKING:
    import pandas as pd
    import tensorflow as tf

__all__ = [
    "CLASS_SYNONYMS",
    "LABEL_NAMES",
    "LAYOUTS",
    "SPLITS",
    "Record",
    "Dataset",
    "DatasetLayoutError",
    "label_from_name",
    "make_splits",
    "load_dataset",
    "import_fracatlas",
    "augment_radiograph",
    "load_example",
    "image_dataset",
    "find_duplicates",
    "add_data_parser",
]

logger = logging.getLogger(__name__)

# Folder names accepted for each class, compared case-insensitively with "-" and
# " " read as "_", so "Non-fractured" and "non fractured" work as well.
CLASS_SYNONYMS: dict[str, frozenset[str]] = {
    "fracture": frozenset({"fractured", "fracture", "positive", "abnormal", "1"}),
    "normal": frozenset({"normal", "non_fractured", "negative", "0"}),
}
_LABEL_OF_CLASS = {"fracture": 1, "normal": 0}
# The folder names this package writes; label 1 is always the fracture class.
LABEL_NAMES: dict[int, str] = {1: "fractured", 0: "normal"}
SPLITS: tuple[str, ...] = ("train", "val", "test")
LAYOUTS: tuple[str, ...] = ("folders", "fracatlas", "mura")
# MURA ships "valid"; many Kaggle mirrors use "validation".
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
# macOS and Windows leave these next to real data; they are never classes.
_IGNORED_DIRS = {"__macosx", "$recycle.bin", "system volume information"}
_FRACATLAS_CSV = "dataset.csv"
_FRACATLAS_COCO = Path("Annotations") / "COCO JSON" / "COCO_fracture_masks.json"
_FRACATLAS_REGIONS = ("hand", "leg", "hip", "shoulder")
# Tolerance for boxes that overshoot [0, 1] by rounding only.
_BOX_TOLERANCE = 1e-3
# Decoded images held for shuffling after the cache: 2048 x 224 x 224 x 3 bytes is
# about 300 MB, close to a full shuffle for FracAtlas-sized splits.
_CACHED_SHUFFLE_BUFFER = 2048

_ACCEPTED_LAYOUTS = (
    "Accepted layouts:\n"
    "  folders:   ROOT/{train,val,test}/<class>/*  or  ROOT/<class>/*, with <class> one of "
    + ", ".join(sorted(CLASS_SYNONYMS["fracture"]))
    + " (fracture) or "
    + ", ".join(sorted(CLASS_SYNONYMS["normal"]))
    + " (normal); optional ROOT/manifest.csv and ROOT/boxes.csv\n"
    "  fracatlas: ROOT/images/{Fractured,Non_fractured}/*.jpg with ROOT/dataset.csv "
    "(FracAtlas as published)\n"
    "  mura:      ROOT/[train|valid/]XR_<REGION>/patientNNNNN/studyN_positive|negative/*.png"
)


class DatasetLayoutError(ValueError):
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
    label: int  # 1 = fracture, 0 = normal
    split: str  # "train" | "val" | "test"
    region: str | None = None
    hardware: bool | None = None  # orthopaedic implant visible
    group: str | None = None  # patient/study id; splits never separate a group
    boxes: tuple[tuple[float, float, float, float], ...] = ()  # normalised x0, y0, x1, y1

    @property
    def label_name(self) -> str:
        return LABEL_NAMES[self.label]


@dataclass
class Dataset:
    """All records of one dataset folder, each already assigned to a split."""

    root: Path
    layout: str  # one of LAYOUTS
    records: list[Record]
    # Splits this module carved out (seeded) because the folder had none; callers
    # report them so that nobody mistakes a made split for a published one.
    made_splits: tuple[str, ...] = ()

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
                "rel_path": _relative_posix(record.path, self.root),
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
        columns = ["path", "rel_path", "label", "label_name", "split", "region", "hardware",
                   "group", "n_boxes"]  # fmt: skip
        frame = pd.DataFrame(rows, columns=columns)
        return frame.astype({"label": "int64", "n_boxes": "int64", "hardware": "boolean"})

    def summary(self) -> dict[str, dict[str, int]]:
        """Counts per split and class: ``{"train": {"fractured": n, "normal": n, "total": n}}``."""
        counts: dict[str, dict[str, int]] = {}
        for name in SPLITS:
            records = self.split(name)
            if not records:
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


# --------------------------------------------------------------------------------------
# Loading


@dataclass
class _Found:
    """A listed image before splits are final; ``split`` None means "not assigned yet"."""

    path: Path
    label: int
    split: str | None
    region: str | None = None
    hardware: bool | None = None
    group: str | None = None
    boxes: tuple[tuple[float, float, float, float], ...] = ()


def load_dataset(
    root: str | os.PathLike[str],
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> Dataset:
    """List the dataset at ``root``, detect its layout, and assign every image a split.

    Splits present on disk are used as they are. A missing ``val`` split (and a
    ``test`` split when ``test_fraction`` > 0) is carved from ``train`` (or from
    everything, when the folder has no splits), seeded by ``seed`` and stratified by
    label, keeping each group on one side. Fractions are of the images being split.
    """
    _check_fractions(val_fraction, test_fraction)
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetLayoutError(root, "does not exist or is not a folder")
    layout = _detect_layout(root)
    if layout == "fracatlas":
        found = _list_fracatlas(root)
    elif layout == "mura":
        found = _list_mura(root)
    else:
        found = _list_folders(root)
    if not found:
        raise DatasetLayoutError(root, f"recognised as the {layout!r} layout but holds no images")
    if layout != "fracatlas":
        _apply_side_files(root, found)
    made = _assign_missing_splits(found, val_fraction, test_fraction, seed)
    _warn_split_groups(found)
    found.sort(key=lambda item: (SPLITS.index(item.split or "train"), item.path))
    records = [
        Record(
            path=item.path,
            label=item.label,
            split=item.split or "train",
            region=item.region,
            hardware=item.hardware,
            group=item.group,
            boxes=item.boxes,
        )
        for item in found
    ]
    return Dataset(root=root, layout=layout, records=records, made_splits=made)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must leave images for training, got "
            f"{val_fraction} + {test_fraction}"
        )


def _subdirs(folder: Path) -> list[Path]:
    return sorted(
        child
        for child in folder.iterdir()
        if child.is_dir() and not child.name.startswith(".")
        and child.name.lower() not in _IGNORED_DIRS
    )  # fmt: skip


def _images_in(folder: Path) -> list[Path]:
    # Hidden files include macOS "._IMG.jpg" resource forks, which carry an image
    # suffix but hold no image.
    return sorted(path for path in iter_image_files([folder]) if not path.name.startswith("."))


def _detect_layout(root: Path) -> str:
    images = root / "images"
    if images.is_dir() and any(label_from_name(d.name) is not None for d in _subdirs(images)):
        return "fracatlas"
    top = _subdirs(root)
    if any(_is_mura_region(d) for d in top):
        return "mura"
    for child in top:
        if child.name.lower() in _SPLIT_ALIASES and any(map(_is_mura_region, _subdirs(child))):
            return "mura"
    if any(child.name.lower() in _SPLIT_ALIASES or label_from_name(child.name) is not None
           for child in top):  # fmt: skip
        return "folders"
    names = ", ".join(child.name for child in top[:8]) or "no sub-folders"
    raise DatasetLayoutError(root, f"layout not recognised (found: {names})")


def _is_mura_region(folder: Path) -> bool:
    return folder.name.upper().startswith("XR_") and len(folder.name) > 3


def _split_folders(root: Path) -> dict[str, Path]:
    splits: dict[str, Path] = {}
    for child in _subdirs(root):
        name = _SPLIT_ALIASES.get(child.name.lower())
        if name is None:
            continue
        if name in splits:
            raise DatasetLayoutError(
                root, f"both {splits[name].name!r} and {child.name!r} look like the {name} split"
            )
        splits[name] = child
    return splits


def _list_folders(root: Path) -> list[_Found]:
    splits = _split_folders(root)
    class_dirs = [d for d in _subdirs(root) if label_from_name(d.name) is not None]
    if splits and class_dirs:
        raise DatasetLayoutError(
            root,
            "mixes split folders ("
            + ", ".join(d.name for d in splits.values())
            + ") with class folders ("
            + ", ".join(d.name for d in class_dirs)
            + "); use one or the other",
        )
    if not splits:
        return _list_class_dirs(root, split=None)
    found: list[_Found] = []
    for name, folder in splits.items():
        found.extend(_list_class_dirs(folder, split=name))
    return found


def _list_class_dirs(folder: Path, split: str | None) -> list[_Found]:
    found: list[_Found] = []
    for child in _subdirs(folder):
        label = label_from_name(child.name)
        if label is None:
            if split is None:
                # A flat root may hold unrelated folders (caches, notes); say so but go on.
                logger.warning("Ignoring %s: not a class folder", child)
                continue
            raise DatasetLayoutError(child, "is not a class folder")
        found.extend(_Found(path=path, label=label, split=split) for path in _images_in(child))
    if split is not None:
        loose = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
        if loose:
            logger.warning(
                "Ignoring %d file(s) directly in %s: images must sit in a class folder",
                len(loose),
                folder,
            )
    return found


def _list_mura(root: Path) -> list[_Found]:
    splits = _split_folders(root)
    if splits:
        sources: list[tuple[str | None, Path]] = [(name, folder) for name, folder in splits.items()]
    else:
        sources = [(None, root)]
    found: list[_Found] = []
    for split, folder in sources:
        for region_dir in _subdirs(folder):
            if not _is_mura_region(region_dir):
                logger.warning("Ignoring %s: not an XR_<REGION> folder", region_dir)
                continue
            region = region_dir.name[3:].lower()
            for patient_dir in _subdirs(region_dir):
                for study_dir in _subdirs(patient_dir):
                    label = label_from_name(study_dir.name.rsplit("_", 1)[-1])
                    if label is None or "_" not in study_dir.name:
                        raise DatasetLayoutError(
                            study_dir, "is not a studyN_positive or studyN_negative folder"
                        )
                    found.extend(
                        _Found(
                            path=path,
                            label=label,
                            split=split,
                            region=region,
                            # Patient ids are global in MURA, so a patient with an elbow
                            # and a hand study stays on one side of the split.
                            group=patient_dir.name,
                        )
                        for path in _images_in(study_dir)
                    )
    return found


def _list_fracatlas(root: Path) -> list[_Found]:
    table = _read_fracatlas_table(root)
    boxes = _read_coco_boxes(root / _FRACATLAS_COCO)
    found: list[_Found] = []
    mismatched = 0
    for class_dir in _subdirs(root / "images"):
        label = label_from_name(class_dir.name)
        if label is None:
            logger.warning("Ignoring %s: not a FracAtlas class folder", class_dir)
            continue
        for path in _images_in(class_dir):
            row = table.get(path.name, {})
            if "fractured" in row and _as_int(row["fractured"]) not in (None, label):
                mismatched += 1
            found.append(
                _Found(
                    path=path,
                    label=label,
                    split=None,
                    region=_fracatlas_region(row),
                    hardware=_as_bool(row.get("hardware")),
                    boxes=boxes.get(path.name, ()),
                )
            )
    if mismatched:
        # The folder is what the authors curated; the CSV flag is a copy of it.
        logger.warning(
            "%d image(s) in %s sit in a class folder that disagrees with the 'fractured' "
            "column of %s; the folder wins",
            mismatched,
            root / "images",
            _FRACATLAS_CSV,
        )
    return found


def _read_fracatlas_table(root: Path) -> dict[str, dict[str, str]]:
    path = root / _FRACATLAS_CSV
    if not path.is_file():
        logger.warning("%s is missing: regions and hardware flags will be unknown", path)
        return {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "image_id" not in reader.fieldnames:
            raise DatasetLayoutError(root, f"{_FRACATLAS_CSV} has no image_id column")
        return {row["image_id"].strip(): row for row in reader}


def _fracatlas_region(row: Mapping[str, str]) -> str | None:
    flagged = [name for name in _FRACATLAS_REGIONS if _as_int(row.get(name)) == 1]
    if len(flagged) > 1 or _as_int(row.get("mixed")) == 1:
        return "mixed"
    return flagged[0] if flagged else None


def _read_coco_boxes(path: Path) -> dict[str, tuple[tuple[float, float, float, float], ...]]:
    """Boxes per file name from a COCO file, normalised by each image's size.

    Normalised boxes survive the resizing that any copy of the data may have had.
    """
    if not path.is_file():
        logger.warning("%s is missing: fracture boxes will be unknown", path)
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    images = {image["id"]: image for image in data.get("images", [])}
    boxes: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    for annotation in data.get("annotations", []):
        image = images.get(annotation.get("image_id"))
        bbox = annotation.get("bbox")
        if image is None or not bbox or len(bbox) != 4:
            continue
        width, height = float(image.get("width") or 0), float(image.get("height") or 0)
        x, y, w, h = (float(v) for v in bbox)
        if width <= 0 or height <= 0 or w <= 0 or h <= 0:
            continue
        box = (x / width, y / height, (x + w) / width, (y + h) / height)
        boxes[Path(image["file_name"]).name].append(_clip_box(box))
    return {name: tuple(items) for name, items in boxes.items()}


def _apply_side_files(root: Path, found: list[_Found]) -> None:
    by_rel = {_relative_posix(item.path, root): item for item in found}
    manifest = root / "manifest.csv"
    if manifest.is_file():
        unmatched = 0
        for row in _read_csv(manifest, required=("path",)):
            item = by_rel.get(_clean_rel(row["path"]))
            if item is None:
                unmatched += 1
                continue
            if row.get("region"):
                item.region = row["region"].strip()
            if row.get("hardware", "").strip():
                item.hardware = _as_bool(row["hardware"])
            group = row.get("group") or row.get("patient_id")
            if group and group.strip():
                item.group = group.strip()
        if unmatched:
            logger.warning("%d row(s) of %s name no listed image", unmatched, manifest)
    boxes_file = root / "boxes.csv"
    if boxes_file.is_file():
        boxes: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
        for line, row in enumerate(
            _read_csv(boxes_file, required=("path", "x0", "y0", "x1", "y1")), start=2
        ):
            try:
                box = tuple(float(row[key]) for key in ("x0", "y0", "x1", "y1"))
            except ValueError as exc:
                raise DatasetLayoutError(root, f"boxes.csv line {line}: {exc}") from None
            if any(v < -_BOX_TOLERANCE or v > 1 + _BOX_TOLERANCE for v in box):
                # Pixel coordinates here would silently put every box in a corner.
                raise DatasetLayoutError(
                    root, f"boxes.csv line {line}: coordinates must be normalised to [0, 1]"
                )
            boxes[_clean_rel(row["path"])].append(_clip_box(box))
        unmatched = 0
        for rel, items in boxes.items():
            item = by_rel.get(rel)
            if item is None:
                unmatched += 1
                continue
            item.boxes = tuple(items)
        if unmatched:
            logger.warning("%d image(s) in %s are not listed", unmatched, boxes_file)


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in required if name not in (reader.fieldnames or [])]
        if missing:
            raise DatasetLayoutError(
                path.parent, f"{path.name} lacks column(s) {', '.join(missing)}"
            )
        return [{k: (v or "") for k, v in row.items() if k is not None} for row in reader]


def _clean_rel(value: str) -> str:
    value = value.strip().replace("\\", "/")
    while value.startswith("./"):
        value = value[2:]
    return value


def _clip_box(values: Iterable[float]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (min(1.0, max(0.0, float(v))) for v in values)
    return (x0, y0, x1, y1)


def _relative_posix(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return Path(os.path.relpath(path, root)).as_posix()


def _as_int(value: Any) -> int | None:
    try:
        return int(float(str(value).strip()))
    except (TypeError, ValueError):
        return None


def _as_bool(value: Any) -> bool | None:
    text = str(value).strip().lower() if value is not None else ""
    if text in {"1", "1.0", "true", "yes"}:
        return True
    if text in {"0", "0.0", "false", "no"}:
        return False
    return None


# --------------------------------------------------------------------------------------
# Splitting


def _assign_missing_splits(
    found: list[_Found], val_fraction: float, test_fraction: float, seed: int
) -> tuple[str, ...]:
    present = {item.split for item in found if item.split is not None}
    if not present:
        pool = found
    else:
        pool = [item for item in found if item.split == "train"]
    wanted = []
    if "test" not in present and test_fraction > 0:
        wanted.append(("test", test_fraction))
    if "val" not in present and val_fraction > 0:
        wanted.append(("val", val_fraction))
    for item in pool:
        item.split = "train"
    if not wanted or not pool:
        return ()
    pool.sort(key=lambda item: item.path)
    assigned = make_splits(
        [item.label for item in pool],
        [item.group or str(item.path) for item in pool],
        dict(wanted),
        seed=seed,
    )
    for item, split in zip(pool, assigned):
        item.split = split
    return tuple(name for name, _ in wanted if name in assigned)


def make_splits(
    labels: Sequence[int],
    groups: Sequence[str],
    fractions: Mapping[str, float],
    *,
    seed: int = 0,
) -> list[str]:
    """Assign each item to ``train`` or one of ``fractions``' splits, group by group.

    Groups are split, not images, so one patient's views never straddle a split;
    each group is stratified by its maximum label (a patient with any fracture
    counts as fractured). Fractions are of the groups still unassigned in the
    order given, so ``{"test": 0.1, "val": 0.15}`` takes 10% then 15% of the total.
    Deterministic for a given seed and input order.
    """
    from sklearn.model_selection import train_test_split

    group_label: dict[str, int] = {}
    for label, group in zip(labels, groups):
        group_label[group] = max(label, group_label.get(group, 0))
    remaining = sorted(group_label)
    target: dict[str, str] = {}
    share_left = 1.0
    for name, fraction in fractions.items():
        if fraction <= 0:
            continue
        share = fraction / share_left
        share_left -= fraction
        if len(remaining) < 2:
            logger.warning("Too few groups to make a %s split; it stays empty", name)
            break
        n_take = min(len(remaining) - 1, max(1, round(share * len(remaining))))
        y = [group_label[g] for g in remaining]
        try:
            keep, take = train_test_split(
                remaining, test_size=n_take, stratify=y, random_state=seed
            )
        except ValueError:
            # Stratifying needs two groups per class on each side; a toy dataset has not.
            logger.warning("Too few groups per class to stratify the %s split; splitting at random",
                           name)  # fmt: skip
            keep, take = train_test_split(remaining, test_size=n_take, random_state=seed)
        for group in take:
            target[group] = name
        remaining = sorted(keep)
    return [target.get(group, "train") for group in groups]


def _warn_split_groups(found: Iterable[_Found]) -> None:
    splits_of: dict[str, set[str]] = defaultdict(set)
    for item in found:
        if item.group is not None and item.split is not None:
            splits_of[item.group].add(item.split)
    shared = [group for group, names in splits_of.items() if len(names) > 1]
    if shared:
        logger.warning(
            "%d group(s) appear in more than one split on disk (e.g. %s): validation "
            "scores will be optimistic",
            len(shared),
            shared[0],
        )


# --------------------------------------------------------------------------------------
# Import


def import_fracatlas(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    val_fraction: float = 0.15,
    seed: int = 0,
) -> Dataset:
    """Turn published FracAtlas into the ``folders`` layout with side files.

    Images are hard-linked when ``src`` and ``dest`` share a filesystem (no extra
    disk space), copied otherwise. ``dest/manifest.csv`` keeps the dataset.csv
    columns of each image and ``dest/boxes.csv`` the normalised COCO boxes, so the
    result loads with :func:`load_dataset` and the split is frozen on disk.
    """
    source = load_dataset(src, val_fraction=val_fraction, seed=seed)
    if source.layout != "fracatlas":
        raise DatasetLayoutError(
            source.root, f"is in the {source.layout!r} layout, not FracAtlas as published"
        )
    dest = Path(dest).expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not empty; choose a new folder")
    table = _read_fracatlas_table(source.root)
    header = ["split", "label", "path", "image_id", "region", "hardware"]
    # The remaining dataset.csv columns (region flags, multiscan, views) go along
    # unchanged for subgroup analyses.
    extra_columns = [c for c in next(iter(table.values()), {}) if c not in header]
    manifest_rows: list[list[Any]] = []
    box_rows: list[list[Any]] = []
    # Both class folders of every split exist even when one is empty, so the
    # result always reads back as the same layout.
    for split in {record.split for record in source.records}:
        for name in LABEL_NAMES.values():
            (dest / split / name).mkdir(parents=True, exist_ok=True)
    for record in source.records:
        rel = f"{record.split}/{record.label_name}/{record.path.name}"
        target = dest / rel
        if target.exists():
            raise FileExistsError(f"Two source images map to {target}")
        _link_or_copy(record.path, target)
        row = table.get(record.path.name, {})
        manifest_rows.append(
            [record.split, record.label_name, rel, record.path.name, record.region or "",
             "" if record.hardware is None else int(record.hardware)]
            + [row.get(column, "") for column in extra_columns]
        )  # fmt: skip
        box_rows.extend([rel, *(f"{v:.6f}" for v in box)] for box in record.boxes)
    atomic_write_text(dest / "manifest.csv", _csv_text(header + extra_columns, manifest_rows))
    atomic_write_text(dest / "boxes.csv", _csv_text(["path", "x0", "y0", "x1", "y1"], box_rows))
    atomic_write_text(dest / "README.md", _fracatlas_readme(source, val_fraction, seed))
    return load_dataset(dest, val_fraction=val_fraction, seed=seed)


def _link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.stat().st_dev == dest.parent.stat().st_dev:
        try:
            os.link(src, dest)
            return
        except OSError:
            # Protected hard links (files owned by someone else) or a filesystem
            # without links: a copy is slower but always works.
            pass
    shutil.copy2(src, dest)


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _fracatlas_readme(source: Dataset, val_fraction: float, seed: int) -> str:
    lines = [
        "# FracAtlas (imported)",
        "",
        "Source: Abedeen, I., Rahman, M.A., Prottyasha, F.Z. et al. \"FracAtlas: A Dataset for "
        "Fracture Classification, Localization and Segmentation of Musculoskeletal Radiographs.\" "
        "Scientific Data 10, 521 (2023). doi:10.1038/s41597-023-02432-4. Licence: CC BY 4.0.",
        "",
        f"Imported from `{source.root}` by `fracture.data.datasets.import_fracatlas` with a seeded, "
        f"label-stratified split (val_fraction={val_fraction}, seed={seed}).",
        "",
        "| split | fractured | normal |",
        "|---|---|---|",
    ]
    for split, counts in source.summary().items():
        lines.append(f"| {split} | {counts['fractured']} | {counts['normal']} |")
    lines += ["", "Side files: `manifest.csv` (dataset.csv columns per image), "
              "`boxes.csv` (path, x0, y0, x1, y1 normalised to [0, 1]).", ""]  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Images for training


def augment_radiograph(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random, plausible variation of a radiograph (uint8 H x W x 3 in and out).

    Only what differs between real acquisitions: a small rotation (within 10
    degrees), zoom (0.9 to 1.1, cropping or padding with black) and shift (within
    3% of the side) of the positioning, a horizontal flip (left and right limbs),
    and exposure changes (brightness within 10%, contrast within 15%). No colour jitter, since radiographs have none; a grey image
    stays grey. All random numbers are drawn up front in a fixed order, so the
    result depends on ``rng`` alone.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"augment_radiograph expects uint8 (H, W, 3), got {image.dtype} {image.shape}"
        )
    flip = rng.random() < 0.5
    angle = rng.uniform(-10.0, 10.0)
    zoom = rng.uniform(0.9, 1.1)
    shift = rng.uniform(-0.03, 0.03, size=2)
    contrast = rng.uniform(0.85, 1.15)
    # Multiplicative brightness keeps the air background black, like a change of dose.
    brightness = rng.uniform(0.9, 1.1)

    # Processing one channel keeps a grey image exactly grey, and is 3x cheaper.
    grey = bool(
        np.array_equal(image[..., 0], image[..., 1])
        and np.array_equal(image[..., 1], image[..., 2])
    )
    work = image[..., :1] if grey else image
    height, width = work.shape[:2]
    if flip:
        work = work[:, ::-1]
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), angle, zoom)
    matrix[:, 2] += shift * np.array([width, height])
    warped = cv2.warpAffine(
        np.ascontiguousarray(work),
        matrix,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(PAD_VALUE, PAD_VALUE, PAD_VALUE),
    ).reshape(height, width, -1)
    values = warped.astype(np.float32)
    mean = float(values.mean())
    values = ((values - mean) * contrast + mean) * brightness
    out = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return np.repeat(out, 3, axis=2) if grey else out


def load_example(
    record: Record | str | os.PathLike[str],
    image_size: int,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Decode, optionally augment, and letterbox one image: float32 (S, S, 3) in [0, 255].

    Raises :class:`fracture.io.images.InvalidImageError` for an unreadable file.
    """
    path = record.path if isinstance(record, Record) else Path(record)
    image = load_image(path)
    if rng is not None:
        image = augment_radiograph(image, rng)
    square, _ = letterbox(image, image_size)
    return square


def image_dataset(
    records: Sequence[Record],
    image_size: int,
    batch_size: int,
    *,
    augment: bool = False,
    shuffle: bool = False,
    seed: int | None = 0,
    cache: bool = False,
) -> "tf.data.Dataset":
    """A ``tf.data`` pipeline of ``(x, y)``: x float32 [B, S, S, 3] in [0, 255], y float32 [B].

    Decoding goes through :func:`fracture.io.images.load_image` and
    :func:`fracture.inference.preprocess.letterbox`, the same path prediction uses. An
    unreadable file is skipped with a warning naming it rather than ending a
    training run hours in. With ``seed`` set, order and augmentation are
    reproducible (and still differ from epoch to epoch); ``seed=None`` trades that
    for speed. ``cache`` keeps decoded images in memory; it applies only without
    augmentation, whose output must change every epoch.
    """
    import tensorflow as tf

    if not records:
        raise ValueError("image_dataset needs at least one record")
    if image_size < 1 or batch_size < 1:
        raise ValueError("image_size and batch_size must be positive")
    paths = [str(record.path) for record in records]
    labels = np.asarray([record.label for record in records], dtype=np.float32)
    deterministic = seed is not None

    def decode(path: bytes, example_seed: np.int64) -> tuple[np.ndarray, np.bool_]:
        name = path.decode("utf-8")
        rng = np.random.default_rng(int(example_seed) & 0xFFFFFFFFFFFFFFFF) if augment else None
        try:
            square = load_example(name, image_size, rng)
        except (InvalidImageError, OSError) as exc:
            logger.warning("Skipping unreadable image %s: %s", name, exc)
            return np.zeros((image_size, image_size, 3), np.uint8), np.bool_(False)
        # letterbox fills its canvas from a uint8 resize, so the values are whole
        # numbers: uint8 is exact and a quarter of the memory in the cache.
        return np.clip(np.rint(square), 0, 255).astype(np.uint8), np.bool_(True)

    def tf_decode(
        path: tf.Tensor, label: tf.Tensor, example_seed: tf.Tensor
    ) -> tuple[tf.Tensor, ...]:
        image, ok = tf.numpy_function(
            decode, [path, example_seed], [tf.uint8, tf.bool], stateful=False
        )
        image.set_shape([image_size, image_size, 3])
        ok.set_shape([])
        return image, label, ok

    dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
    if augment:
        # One seed per example per epoch, drawn in the pipeline so that parallel
        # decoding cannot reorder the random stream.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    else:
        seeds = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).repeat()
    dataset = tf.data.Dataset.zip(dataset, seeds).map(lambda pair, s: (pair[0], pair[1], s))
    use_cache = cache and not augment
    if cache and augment:
        logger.info("image_dataset: cache ignored because augmentation is on")
    if shuffle and not use_cache:
        # Shuffling paths before decoding keeps the buffer tiny.
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(
        tf_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    )
    if use_cache:
        dataset = dataset.cache()
        if shuffle:
            # After the cache, or every epoch would replay the first epoch's order.
            dataset = dataset.shuffle(
                min(len(paths), _CACHED_SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True
            )
    dataset = dataset.filter(lambda image, label, ok: ok)
    dataset = dataset.map(lambda image, label, ok: (tf.cast(image, tf.float32), label))
    dataset = dataset.batch(batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------------------
# Leakage check


def find_duplicates(records: Iterable[Record]) -> list[tuple[Path, Path]]:
    """Pairs of files with identical content (SHA-256) that sit in different splits.

    A copy of a training image in validation or test inflates every score
    computed there; published datasets do contain such copies. Only files whose
    size matches a file in another split are hashed, so the check stays fast.
    """
    records = list(records)
    by_size: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        try:
            by_size[record.path.stat().st_size].append(record)
        except OSError as exc:
            logger.warning("Cannot read %s: %s", record.path, exc)
    by_digest: dict[str, list[Record]] = defaultdict(list)
    for same_size in by_size.values():
        if len({record.split for record in same_size}) < 2:
            continue
        for record in same_size:
            try:
                digest = hashlib.sha256(record.path.read_bytes()).hexdigest()
            except OSError as exc:
                logger.warning("Cannot read %s: %s", record.path, exc)
                continue
            by_digest[digest].append(record)
    pairs: list[tuple[Path, Path]] = []
    for same in by_digest.values():
        same.sort(key=lambda r: (SPLITS.index(r.split) if r.split in SPLITS else 99, r.path))
        for i, first in enumerate(same):
            for second in same[i + 1 :]:
                if first.split != second.split:
                    pairs.append((first.path, second.path))
    return sorted(pairs)


# --------------------------------------------------------------------------------------
# Command line


def add_data_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``data import fracatlas``, ``data synth`` and ``data info``."""
    data = subparsers.add_parser("data", help="import, synthesise and inspect datasets")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    importer = commands.add_parser("import", help="convert a downloaded dataset")
    sources = importer.add_subparsers(dest="import_source", required=True, metavar="SOURCE")
    fracatlas = sources.add_parser(
        "fracatlas", help="FracAtlas as published (Abedeen et al., Sci Data 2023)"
    )
    fracatlas.add_argument("src", type=Path, help="unpacked FracAtlas folder (holds images/)")
    fracatlas.add_argument("dest", type=Path, help="new folder for the train/val layout")
    fracatlas.add_argument("--val-fraction", type=float, default=0.15)
    fracatlas.add_argument("--seed", type=int, default=0)
    fracatlas.set_defaults(func=_cmd_import_fracatlas)

    synth = commands.add_parser("synth", help="write synthetic phantom radiographs (not clinical)")
    synth.add_argument("dest", type=Path, help="new folder for the phantoms")
    synth.add_argument("--n", type=int, required=True, help="number of images, half fractured")
    synth.add_argument("--size", type=int, default=256, help="image side in pixels")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--val-fraction", type=float, default=0.2)
    synth.set_defaults(func=_cmd_synth)

    info = commands.add_parser("info", help="layout and counts of a dataset folder")
    info.add_argument("root", type=Path, nargs="?", default=None,
                      help="dataset folder (default: the data_dir setting)")  # fmt: skip
    info.add_argument("--val-fraction", type=float, default=0.15,
                      help="for folders without a val split")  # fmt: skip
    info.add_argument("--test-fraction", type=float, default=0.0)
    info.add_argument("--seed", type=int, default=0)
    info.add_argument(
        "--duplicates",
        action="store_true",
        help="also hash the files and list copies shared between splits",
    )
    info.set_defaults(func=_cmd_info)


def _cmd_import_fracatlas(args: argparse.Namespace) -> int:
    def run() -> int:
        dataset = import_fracatlas(
            args.src, args.dest, val_fraction=args.val_fraction, seed=args.seed
        )
        print(f"Imported FracAtlas into {dataset.root}")
        _print_counts(dataset)
        return 0

    return _guarded(run)


def _cmd_synth(args: argparse.Namespace) -> int:
    def run() -> int:
        from fracture.data.phantoms import synthesize_phantoms

        dataset = synthesize_phantoms(
            args.dest, args.n, size=args.size, seed=args.seed, val_fraction=args.val_fraction
        )
        print(f"Wrote {len(dataset.records)} SYNTHETIC phantom images to {dataset.root}")
        print("They are not clinical data: use them for smoke tests and demos only.")
        _print_counts(dataset)
        return 0

    return _guarded(run)


def _cmd_info(args: argparse.Namespace) -> int:
    def run() -> int:
        root = args.root
        if root is None:
            from fracture.config import get_settings

            root = get_settings().data_dir
        dataset = load_dataset(
            root, val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed
        )
        print(f"Dataset: {dataset.root}")
        print(f"Layout:  {dataset.layout}")
        _print_counts(dataset)
        if dataset.made_splits:
            print(
                f"Split(s) made here, not on disk: {', '.join(dataset.made_splits)} "
                f"(seed {args.seed}, val fraction {args.val_fraction}, "
                f"test fraction {args.test_fraction})"
            )
        regions = Counter(record.region or "unknown" for record in dataset.records)
        print("Regions: " + ", ".join(f"{name} {count}" for name, count in regions.most_common()))
        hardware = [r.hardware for r in dataset.records if r.hardware is not None]
        if hardware:
            print(f"Hardware: {sum(hardware)} of {len(hardware)} images show an implant")
        with_boxes = [r for r in dataset.records if r.boxes]
        if with_boxes:
            total = sum(len(r.boxes) for r in with_boxes)
            print(f"Boxes:   {total} on {len(with_boxes)} images")
        groups = {r.group for r in dataset.records if r.group is not None}
        if groups:
            print(f"Groups:  {len(groups)} (patients/studies; kept within one split)")
        if args.duplicates:
            pairs = find_duplicates(dataset.records)
            print(f"Duplicates across splits: {len(pairs)}")
            for first, second in pairs:
                print(f"  {first}  ==  {second}")
        return 0

    return _guarded(run)


def _guarded(run: Any) -> int:
    try:
        return int(run())
    except DatasetLayoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _print_counts(dataset: Dataset) -> None:
    summary = dataset.summary()
    print(f"{'split':<8}{'fractured':>11}{'normal':>9}{'total':>8}")
    for split, counts in summary.items():
        print(f"{split:<8}{counts['fractured']:>11}{counts['normal']:>9}{counts['total']:>8}")
    fractured = sum(c["fractured"] for c in summary.values())
    normal = sum(c["normal"] for c in summary.values())
    print(f"{'all':<8}{fractured:>11}{normal:>9}{fractured + normal:>8}")
