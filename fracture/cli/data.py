"""``python -m fracture data``: import, synthesise and inspect datasets."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from fracture.data.fracatlas import import_fracatlas
from fracture.data.layouts import load_dataset
from fracture.data.records import Dataset
from fracture.data.splits import find_duplicates

__all__ = ["add_data_parser"]


def add_data_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``data import fracatlas``, ``data download fracatlas``, ``data synth`` and
    ``data info``."""
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
    fracatlas.set_defaults(func=cmd_import_fracatlas)

    download = commands.add_parser("download", help="fetch a public dataset from its publisher")
    remote = download.add_subparsers(dest="download_source", required=True, metavar="SOURCE")
    fetch = remote.add_parser(
        "fracatlas", help="FracAtlas (Abedeen et al., Sci Data 2023; CC BY 4.0) from figshare"
    )
    fetch.add_argument(
        "dest",
        type=Path,
        nargs="?",
        default=None,
        help="new folder for the dataset (default: DATA_DIR/fracatlas)",
    )
    fetch.add_argument("--val-fraction", type=float, default=0.15)
    fetch.add_argument("--seed", type=int, default=0)
    fetch.set_defaults(func=cmd_download_fracatlas)

    synth = commands.add_parser("synth", help="write synthetic phantom radiographs (not clinical)")
    synth.add_argument("dest", type=Path, help="new folder for the phantoms")
    synth.add_argument(
        "--n", type=int, required=True, help="number of images, split evenly over the classes"
    )
    synth.add_argument(
        "--classes",
        default=None,
        help="comma-separated fracture types and normal, e.g. transverse,oblique,comminuted,"
        "normal (default: fractured and normal)",
    )
    synth.add_argument("--size", type=int, default=256, help="image side in pixels")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--val-fraction", type=float, default=0.2)
    synth.set_defaults(func=cmd_synth)

    info = commands.add_parser("info", help="layout and counts of a dataset folder")
    info.add_argument(
        "root",
        type=Path,
        nargs="?",
        default=None,
        help="dataset folder (default: the data_dir setting)",
    )
    info.add_argument(
        "--val-fraction", type=float, default=0.15, help="for folders without a val split"
    )
    info.add_argument("--test-fraction", type=float, default=0.0)
    info.add_argument("--seed", type=int, default=0)
    info.add_argument(
        "--duplicates",
        action="store_true",
        help="also hash the files and list copies shared between splits",
    )
    info.set_defaults(func=cmd_info)


def cmd_import_fracatlas(args: argparse.Namespace) -> int:
    dataset = import_fracatlas(args.src, args.dest, val_fraction=args.val_fraction, seed=args.seed)
    print(f"Imported FracAtlas into {dataset.root}")
    _print_counts(dataset)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from fracture.data.phantoms import synthesize_phantoms

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    dataset = synthesize_phantoms(
        args.dest,
        args.n,
        size=args.size,
        seed=args.seed,
        val_fraction=args.val_fraction,
        classes=classes,
    )
    print(f"Wrote {len(dataset.records)} SYNTHETIC phantom images to {dataset.root}")
    print("They are not clinical data: use them for smoke tests and demos only.")
    _print_counts(dataset)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
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


def _print_progress(done: int, total: int | None) -> None:
    text = (
        f"\r  {done / 1e6:,.1f} of {total / 1e6:,.1f} MB ({done / total:.0%})"
        if total
        else f"\r  {done / 1e6:,.1f} MB"
    )
    print(text, end="", file=sys.stderr, flush=True)


def cmd_download_fracatlas(args: argparse.Namespace) -> int:
    from fracture.data.download import FIGSHARE_DOI, download_fracatlas

    dest = args.dest
    if dest is None:
        from fracture.config import get_settings

        dest = get_settings().data_dir / "fracatlas"
    print(f"Downloading FracAtlas (doi:{FIGSHARE_DOI}, CC BY 4.0) into {dest}", file=sys.stderr)
    try:
        dataset = download_fracatlas(
            dest, progress=_print_progress, val_fraction=args.val_fraction, seed=args.seed
        )
    finally:
        print("", file=sys.stderr)  # end the progress line
    print(f"Imported FracAtlas into {dataset.root}")
    _print_counts(dataset)
    print(
        "Cite: Abedeen et al., Scientific Data 10, 521 (2023), "
        "doi:10.1038/s41597-023-02432-4 (CC BY 4.0)"
    )
    return 0


def _print_counts(dataset: Dataset) -> None:
    """Images per split and class: fractured and normal, or each of K classes."""
    summary = dataset.summary()
    names = dataset.label_names[::-1] if dataset.classes is None else dataset.label_names
    widths = [max(len(name), 6) + 2 for name in names]
    print(f"{'split':<8}" + "".join(f"{n:>{w}}" for n, w in zip(names, widths)) + f"{'total':>8}")
    rows = [*summary.items(), ("all", _totals(summary, names))]
    for split, counts in rows:
        cells = "".join(f"{counts.get(n, 0):>{w}}" for n, w in zip(names, widths))
        print(f"{split:<8}{cells}{counts['total']:>8}")


def _totals(summary: dict[str, dict[str, int]], names: list[str]) -> dict[str, int]:
    totals = {name: sum(c.get(name, 0) for c in summary.values()) for name in names}
    return {**totals, "total": sum(c["total"] for c in summary.values())}
