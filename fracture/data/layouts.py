"""Radiograph datasets: find the images, attach labels and metadata, make leak-free splits.

Three on-disk layouts are recognised, so a dataset can be used as downloaded:

``folders``
    ``ROOT/{train,val,test}/<class>/*`` or ``ROOT/<class>/*``. When every ``<class>``
    is one of :data:`CLASS_SYNONYMS` the dataset is the binary fracture dataset;
    folders named anything else (fracture types, a hospital's own classes) make a
    K-class dataset whose classes are all the folder names, sorted
    (:func:`fracture.data.records.class_sort_key`). Optional side files at ``ROOT``: ``manifest.csv``
    (``path`` relative to ROOT, ``region``, ``hardware`` 0/1, optional ``group`` and
    ``split``, which applies where the folders give none)
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
when training or prediction decodes it.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from fracture.data.records import (
    SPLITS,
    Dataset,
    DatasetLayoutError,
    Record,
    class_sort_key,
    label_from_name,
    relative_posix,
)
from fracture.data.splits import make_splits
from fracture.io.images import iter_image_files

__all__ = ["load_dataset", "mura_study"]

logger = logging.getLogger(__name__)

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
    classes: list[str] | None = None
    if layout == "fracatlas":
        found = _list_fracatlas(root)
    elif layout == "mura":
        found = _list_mura(root)
    else:
        found, classes = _list_folders(root)
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
            class_name=None if classes is None else classes[item.label],
        )
        for item in found
    ]
    return Dataset(root=root, layout=layout, records=records, made_splits=made, classes=classes)


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
        if child.is_dir()
        and not child.name.startswith(".")
        and child.name.lower() not in _IGNORED_DIRS
    )


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
    if any(
        child.name.lower() in _SPLIT_ALIASES or label_from_name(child.name) is not None
        for child in top
    ):
        return "folders"
    # ROOT/<class>/* with classes of any name: at least two folders holding images.
    if sum(1 for child in top if _holds_images(child)) >= 2:
        return "folders"
    names = ", ".join(child.name for child in top[:8]) or "no sub-folders"
    raise DatasetLayoutError(root, f"layout not recognised (found: {names})")


def _holds_images(folder: Path) -> bool:
    return bool(_images_in(folder))


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


def _list_folders(root: Path) -> tuple[list[_Found], list[str] | None]:
    """The images of a folders-layout dataset, and its K classes (None: binary)."""
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
    sources: list[tuple[str | None, list[Path]]]
    if splits:
        sources = [(name, _class_folders(folder, split=name)) for name, folder in splits.items()]
    else:
        sources = [(None, _class_folders(root, split=None))]
    names = {_class_name(d) for _, dirs in sources for d in dirs}
    # A flat root with fracture/normal folders stays binary, as it always was; its
    # other folders (caches, notes) are ignored below. Without a split folder or a
    # synonym, every folder that holds images is a class.
    binary = all(label_from_name(name) is not None for name in names) or (
        not splits and any(label_from_name(name) is not None for name in names)
    )
    classes = None if binary else _check_classes(root, names)
    found: list[_Found] = []
    for split, dirs in sources:
        found.extend(_list_class_dirs(dirs, split, classes))
    if classes is not None:
        _check_class_images(root, classes, found)
    return found, classes


def _class_name(folder: Path) -> str:
    # NFC: macOS writes "Grünstick" decomposed (u + combining diaeresis); one class, one spelling.
    return unicodedata.normalize("NFC", folder.name)


def _class_folders(folder: Path, split: str | None) -> list[Path]:
    """The class folders of one split (or of a flat root), warning about loose files."""
    if split is not None:
        loose = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
        if loose:
            logger.warning(
                "Ignoring %d file(s) directly in %s: images must sit in a class folder",
                len(loose),
                folder,
            )
    return _subdirs(folder)


def _check_classes(root: Path, names: set[str]) -> list[str]:
    """The K classes, sorted, or a clear error for a set of folders that cannot train."""
    classes = sorted(names, key=class_sort_key)
    if len(classes) < 2:
        found = f"only the class folder {classes[0]!r}" if classes else "no class folders"
        raise DatasetLayoutError(
            root, f"found {found}: a classifier needs at least two classes, one folder each"
        )
    by_case: dict[str, list[str]] = defaultdict(list)
    for name in classes:
        by_case[name.casefold()].append(name)
    clashes = [spellings for spellings in by_case.values() if len(spellings) > 1]
    if clashes:
        raise DatasetLayoutError(
            root,
            f"class folders {' and '.join(repr(n) for n in clashes[0])} differ only in case; "
            "name each class the same way in every split",
        )
    normals = [name for name in classes if label_from_name(name) == 0]
    if len(normals) > 1:
        raise DatasetLayoutError(
            root,
            f"class folders {' and '.join(repr(n) for n in normals)} both mean normal; "
            "merge them into one folder",
        )
    if "total" in by_case:
        raise DatasetLayoutError(root, "a class cannot be called 'total'; rename that folder")
    return classes


def _check_class_images(root: Path, classes: list[str], found: list[_Found]) -> None:
    counts = np.bincount([item.label for item in found], minlength=len(classes))
    empty = [name for name, count in zip(classes, counts) if count == 0]
    if empty:
        raise DatasetLayoutError(
            root,
            f"class folder(s) {', '.join(repr(n) for n in empty)} hold no images; add images "
            "or remove the folder",
        )


def _list_class_dirs(
    class_dirs: list[Path], split: str | None, classes: list[str] | None
) -> list[_Found]:
    found: list[_Found] = []
    for child in class_dirs:
        name = _class_name(child)
        if classes is not None:
            found.extend(
                _Found(path=path, label=classes.index(name), split=split)
                for path in _images_in(child)
            )
            continue
        label = label_from_name(name)
        if label is None:
            # Binary: a flat root may hold unrelated folders (caches, notes); say so but go on.
            logger.warning("Ignoring %s: not a class folder", child)
            continue
        found.extend(_Found(path=path, label=label, split=split) for path in _images_in(child))
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


def mura_study(path: str | os.PathLike[str]) -> str:
    """The MURA study an image belongs to, ``XR_<REGION>/patientNNNNN/studyN_<label>``.

    MURA labels studies, not images (its study-level figures aggregate over a study's
    views). The region is part of the id: one patient can have a ``study1`` in several
    region folders.
    """
    return "/".join(Path(path).parent.parts[-3:])


def _list_fracatlas(root: Path) -> list[_Found]:
    table = read_fracatlas_table(root)
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


def read_fracatlas_table(root: Path) -> dict[str, dict[str, str]]:
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
    by_rel = {relative_posix(item.path, root): item for item in found}
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
            # The manifest's own split, where the folders do not give one: a folder of
            # test images must not be re-split into train and val here.
            split = _SPLIT_ALIASES.get((row.get("split") or "").strip().lower())
            if split is not None and item.split is None:
                item.split = split
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
# Splits missing on disk


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
# Images for training


# --------------------------------------------------------------------------------------
# Command line
