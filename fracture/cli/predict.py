"""``python -m fracture predict``: score images or folders and write a CSV."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

__all__ = ["add_predict_parser", "HEATMAP_KINDS"]

# What --heatmap-dir writes: the overlay's default map, or the classifier's Grad-CAM.
HEATMAP_KINDS = ("default", "gradcam")


def add_predict_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("predict", help="score images or folders and write a CSV")
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--out", help="CSV to write (default: standard output)")
    p.add_argument("--model", help="model folder (default: the active model, models/ACTIVE)")
    p.add_argument(
        "--gradcam-dir",
        "--overlay-dir",
        dest="overlay_dir",
        help="write one overlay PNG per image here: the default map (the localisation head's "
        "'where' map, or Grad-CAM for a model without one) and every drawn box with its score",
    )
    p.add_argument(
        "--heatmap-dir",
        help="write each raw heat map (original image size) as float32 .npy here: by default "
        "the map the overlay shows (see --heatmap-kind)",
    )
    p.add_argument(
        "--heatmap-kind",
        choices=HEATMAP_KINDS,
        default="default",
        help="which map --heatmap-dir writes: 'default' is the localisation head's centre "
        "probability in [0, 1] where the model has the head, else the Grad-CAM; 'gradcam' is "
        "always the classifier's Grad-CAM evidence (logit units, unclipped)",
    )
    p.add_argument("--batch-size", type=int, default=None)
    p.set_defaults(func=cmd_predict)


def _progress(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="img", disable=not sys.stderr.isatty())


def cmd_predict(args: argparse.Namespace) -> int:
    from fracture.inference.predictor import load_predictor
    from fracture.io.images import iter_image_files
    from fracture.model.folder import ModelLoadError
    from fracture.model.imagenet import WeightsError

    files = iter_image_files(args.paths)
    if not files:
        print(f"error: no image files found in {', '.join(args.paths)}", file=sys.stderr)
        return 2
    try:
        predictor = load_predictor(args.model, batch_size=args.batch_size)
    except (ModelLoadError, WeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    overlay_dir = Path(args.overlay_dir) if args.overlay_dir else None
    heatmap_dir = Path(args.heatmap_dir) if args.heatmap_dir else None
    for directory in (overlay_dir, heatmap_dir):
        if directory:
            directory.mkdir(parents=True, exist_ok=True)
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    ok_count = ood_count = 0
    try:
        # A K-class model adds one probability column per class.
        writer = csv.DictWriter(out, fieldnames=predictor.csv_columns)
        writer.writeheader()
        with _progress(len(files), "predict") as bar:
            for index, result in enumerate(
                # Always with the heat map: the CSV carries the drawn box's coordinates.
                predictor.iter_predict(files, with_cam=True)
            ):
                # One row per file, flushed as it comes: an interrupted run keeps its work.
                writer.writerow(result.row())
                out.flush()
                if result.ok:
                    ok_count += 1
                    ood_count += result.in_distribution is False
                    if overlay_dir and result.default_map() is not None:
                        _write_overlay(overlay_dir, index, files[index], result)
                    if heatmap_dir:
                        _write_raw_heatmap(
                            heatmap_dir, index, files[index], result, args.heatmap_kind
                        )
                else:
                    bar.write(f"skipped {result.source}: {result.error}")
                bar.update(1)
    finally:
        if out is not sys.stdout:
            out.close()
    failed = len(files) - ok_count
    print(
        f"{ok_count} scored, {failed} failed" + (f"; results in {args.out}" if args.out else ""),
        file=sys.stderr,
    )
    if ood_count:
        print(
            f"note: {ood_count} image(s) do not look like the bone radiographs the model "
            f"was trained on (in_distribution=false): they are not assessed "
            f"(prediction=not_assessed, no box)",
            file=sys.stderr,
        )
    if ok_count == 0:
        print("error: no image could be processed", file=sys.stderr)
        return 1
    return 0


def _write_overlay(directory: Path, index: int, path: Path, result) -> None:
    """The default map with the drawn boxes: every head box with its score, else the
    strongest-region box of a model without the head; none on an image not labelled fracture."""
    from PIL import Image

    from fracture.inference.gradcam import draw_scored_boxes, overlay_heatmap

    # No box on an image the model cannot judge: a box reads as a finding.
    assessed = result.verdict().assessed
    boxes = result.drawn_boxes
    overlay = overlay_heatmap(
        result.image,
        result.default_map(),
        alpha=0.4,
        box=result.box if assessed and not boxes else None,
        style=result.box_style if assessed and not boxes else None,
    )
    overlay = draw_scored_boxes(overlay, boxes, result.box_style)
    # The index keeps names unique when two folders hold the same file name.
    Image.fromarray(overlay).save(directory / f"{index:05d}_{path.stem}_gradcam.png")


# ---------------------------------------------------------------------------
# train / evaluate


def _write_raw_heatmap(directory: Path, index: int, path: Path, result, kind: str) -> None:
    """A raw map at the original image size, float32 ``.npy``, for anyone to score.

    ``kind`` "default": the localisation head's centre probability where the model has
    the head (the map the overlay shows), else the Grad-CAM evidence; "gradcam": always
    the Grad-CAM evidence in logit units. Nothing is written where there is no map.
    """
    import numpy as np

    from fracture.io.files import atomic_write_bytes

    heat = result.location_image() if kind == "default" else None
    if heat is None:
        heat = result.evidence_image()
    if heat is None:
        return
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(heat, np.float32))
    # The index keeps names unique when two folders hold the same file name.
    atomic_write_bytes(directory / f"{index:05d}_{path.stem}_heatmap.npy", buffer.getvalue())
