"""Import FracAtlas as published into the ``folders`` layout, with its side files.

Abedeen I, Rahman MA, Prottyasha FZ et al. "FracAtlas: A Dataset for Fracture
Classification, Localization and Segmentation of Musculoskeletal Radiographs."
Scientific Data 10, 521 (2023), doi:10.1038/s41597-023-02432-4. Licence CC BY 4.0.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

from fracture.data.layouts import load_dataset, read_fracatlas_table
from fracture.data.records import LABEL_NAMES, Dataset, DatasetLayoutError
from fracture.io.files import atomic_write_text

__all__ = ["import_fracatlas"]


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
    table = read_fracatlas_table(source.root)
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
            [
                record.split,
                record.label_name,
                rel,
                record.path.name,
                record.region or "",
                "" if record.hardware is None else int(record.hardware),
            ]
            + [row.get(column, "") for column in extra_columns]
        )
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
        'Source: Abedeen, I., Rahman, M.A., Prottyasha, F.Z. et al. "FracAtlas: A Dataset for '
        'Fracture Classification, Localization and Segmentation of Musculoskeletal Radiographs." '
        "Scientific Data 10, 521 (2023). doi:10.1038/s41597-023-02432-4. Licence: CC BY 4.0.",
        "",
        f"Imported from `{source.root}` by `fracture.data.fracatlas.import_fracatlas` with a seeded, "
        f"label-stratified split (val_fraction={val_fraction}, seed={seed}).",
        "",
        "| split | fractured | normal |",
        "|---|---|---|",
    ]
    for split, counts in source.summary().items():
        lines.append(f"| {split} | {counts['fractured']} | {counts['normal']} |")
    lines += [
        "",
        "Side files: `manifest.csv` (dataset.csv columns per image), "
        "`boxes.csv` (path, x0, y0, x1, y1 normalised to [0, 1]).",
        "",
    ]
    return "\n".join(lines)
