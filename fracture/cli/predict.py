"""``python -m fracture predict``: score images or folders and write a CSV."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

__all__ = ["add_predict_parser"]


def add_predict_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("predict", help="score images or folders and write a CSV")
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--out", help="CSV to write (default: standard output)")
    p.add_argument("--model", help="model folder (default: the active model, models/ACTIVE)")
    p.add_argument("--gradcam-dir", help="write one Grad-CAM overlay PNG per image here")
    p.add_argument(
        "--heatmap-dir",
        help="write each raw heat map (Grad-CAM evidence, original image size) as float32 .npy here",
    )
    p.add_argument("--batch-size", type=int, default=None)
    p.set_defaults(func=cmd_predict)


def _progress(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="img", disable=not sys.stderr.isatty())


def cmd_predict(args: argparse.Namespace) -> int:
    from fracture.inference.gradcam import overlay_heatmap
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
    gradcam_dir = Path(args.gradcam_dir) if args.gradcam_dir else None
    heatmap_dir = Path(args.heatmap_dir) if args.heatmap_dir else None
    for directory in (gradcam_dir, heatmap_dir):
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
                    if gradcam_dir and result.heatmap is not None:
                        _write_overlay(gradcam_dir, index, files[index], result, overlay_heatmap)
                    if heatmap_dir and result.evidence is not None:
                        _write_raw_heatmap(heatmap_dir, index, files[index], result)
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


def _write_overlay(directory: Path, index: int, path: Path, result, overlay_heatmap) -> None:
    from PIL import Image

    # No box on an image the model cannot judge: a box reads as a finding.
    assessed = result.verdict().assessed
    overlay = overlay_heatmap(
        result.image,
        result.heatmap,
        alpha=0.4,
        box=result.box if assessed else None,
        style=result.box_style if assessed else None,
    )
    # The index keeps names unique when two folders hold the same file name.
    Image.fromarray(overlay).save(directory / f"{index:05d}_{path.stem}_gradcam.png")


# ---------------------------------------------------------------------------
# train / evaluate


def _write_raw_heatmap(directory: Path, index: int, path: Path, result) -> None:
    """The raw Grad-CAM evidence at the original image size, float32 ``.npy``, for scoring."""
    import numpy as np

    from fracture.io.files import atomic_write_bytes

    buffer = io.BytesIO()
    np.save(buffer, result.evidence_image().astype(np.float32))
    # The index keeps names unique when two folders hold the same file name.
    atomic_write_bytes(directory / f"{index:05d}_{path.stem}_heatmap.npy", buffer.getvalue())
