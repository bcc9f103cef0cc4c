"""``python -m fracture``: the command line over the core package.

Subcommands import their heavy dependencies only when they run, so
``python -m fracture --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]


def _quiet_tensorflow() -> None:
    # Only TensorFlow's C++ start-up chatter; Python warnings stay visible.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _progress(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="img", disable=not sys.stderr.isatty())


# ---------------------------------------------------------------------------
# predict


def cmd_predict(args: argparse.Namespace) -> int:
    from fracture.inference.gradcam import overlay_heatmap
    from fracture.io.images import iter_image_files
    from fracture.model.folder import ModelLoadError
    from fracture.inference.predictor import CSV_COLUMNS, Predictor
    from fracture.model.imagenet import WeightsError

    files = iter_image_files(args.paths)
    if not files:
        print(f"error: no image files found in {', '.join(args.paths)}", file=sys.stderr)
        return 2
    try:
        predictor = Predictor(args.model, batch_size=args.batch_size)
    except (ModelLoadError, WeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    gradcam_dir = Path(args.gradcam_dir) if args.gradcam_dir else None
    if gradcam_dir:
        gradcam_dir.mkdir(parents=True, exist_ok=True)
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    ok_count = ood_count = 0
    try:
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        with _progress(len(files), "predict") as bar:
            for index, result in enumerate(
                predictor.iter_predict(files, with_cam=gradcam_dir is not None)
            ):
                # One row per file, flushed as it comes: an interrupted run keeps its work.
                writer.writerow(result.row())
                out.flush()
                if result.ok:
                    ok_count += 1
                    ood_count += result.in_distribution is False
                    if gradcam_dir and result.heatmap is not None:
                        _write_overlay(gradcam_dir, index, files[index], result, overlay_heatmap)
                else:
                    bar.write(f"skipped {result.source}: {result.error}")
                bar.update(1)
    finally:
        if out is not sys.stdout:
            out.close()
    failed = len(files) - ok_count
    print(f"{ok_count} scored, {failed} failed" + (f"; results in {args.out}" if args.out else ""),
          file=sys.stderr)
    if ood_count:
        print(f"warning: {ood_count} image(s) do not look like the bone radiographs the model "
              f"was trained on (in_distribution=false); treat their predictions as unreliable",
              file=sys.stderr)
    if ok_count == 0:
        print("error: no image could be processed", file=sys.stderr)
        return 1
    return 0


def _write_overlay(directory: Path, index: int, path: Path, result, overlay_heatmap) -> None:
    from PIL import Image

    overlay = overlay_heatmap(result.image, result.heatmap, alpha=0.4)
    # The index keeps names unique when two folders hold the same file name.
    Image.fromarray(overlay).save(directory / f"{index:05d}_{path.stem}_gradcam.png")


# ---------------------------------------------------------------------------
# train / evaluate


def cmd_train(args: argparse.Namespace) -> int:
    from fracture.training.config import TrainConfig
    from fracture.training.trainer import configure_logical_cpus, train

    if args.strategy == "mirrored" and args.logical_cpus:
        configure_logical_cpus(args.logical_cpus)
    if args.resume:
        config = TrainConfig()
    else:
        defaults = TrainConfig()
        config = TrainConfig(
            image_size=args.image_size or defaults.image_size,
            fine_tune_from=args.fine_tune_from or defaults.fine_tune_from,
            head_epochs=defaults.head_epochs if args.head_epochs is None else args.head_epochs,
            epochs=defaults.epochs if args.epochs is None else args.epochs,
            batch_size=args.batch_size or defaults.batch_size,
            lr=args.lr or defaults.lr,
            seed=args.seed,
            strategy=args.strategy,
            augment=not args.no_augment,
            views=args.views or defaults.views,
            **{
                name: getattr(args, name)
                for name in ("head_lr", "weight_decay", "dropout", "patience", "val_fraction")
                if getattr(args, name) is not None
            },
        )
    model_dir = train(args.data, args.out, config, pretrained=not args.no_pretrained,
                      resume=args.resume)
    print(f"model saved to {model_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fracture.evaluation.evaluate import evaluate_model
    from fracture.io.files import atomic_write_json
    from fracture.evaluation.metrics import format_report

    report = evaluate_model(args.data, model_dir=args.model, split=args.split,
                            pointing_game=not args.no_cam)
    print(format_report(report))
    if args.json:
        atomic_write_json(args.json, report)
        print(f"full report written to {args.json}", file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from fracture.model import registry
    from fracture.model.folder import ModelLoadError

    try:
        if args.models_command == "list":
            for v in registry.list_versions():
                auroc = "n/a" if v.val_auroc is None else f"{v.val_auroc:.3f}"
                state = "ok" if v.valid else f"INVALID: {v.error}"
                print(f"{'*' if v.active else ' '} {v.name:<32} {v.version or '-':<16} "
                      f"{v.created or '-':<21} auroc={auroc}  {state}")
            return 0
        if args.models_command == "cleanup":
            for path in registry.cleanup_staging():
                print(f"removed {path}")
            return 0
        if args.models_command == "promote":
            version = registry.promote(Path(args.candidate), name=args.name)
        else:  # rollback
            version = registry.set_active(args.to) if args.to else registry.rollback()
    except (ModelLoadError, ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"active model: {version.name} ({version.path})")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from fracture.evaluation.evaluate import calibrate_model
    from fracture.evaluation.metrics import format_report

    report = calibrate_model(args.model, args.data)
    print(format_report(report))
    print(f"calibration and thresholds rewritten in {args.model}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fracture",
        description="Bone-fracture detection on radiographs (research demo, not a medical device).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    from fracture.cli.weights import add_weights_parser

    add_weights_parser(sub)

    p = sub.add_parser("predict", help="score images or folders and write a CSV")
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--out", help="CSV to write (default: standard output)")
    p.add_argument("--model", help="model folder (default: the active model, models/ACTIVE)")
    p.add_argument("--gradcam-dir", help="write one Grad-CAM overlay PNG per image here")
    p.add_argument("--batch-size", type=int, default=None)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("train", help="fine-tune ResNet-50 on a dataset")
    p.add_argument("data", help="dataset folder (image folders, FracAtlas or MURA layout)")
    p.add_argument("--out", required=True, help="run folder, e.g. runs/my-run")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs")
    p.add_argument("--head-epochs", type=int, default=None, help="head-only epochs first")
    p.add_argument("--fine-tune-from", default=None, help="freeze up to this layer")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--views", type=int, default=None, help="cached augmented views per image")
    p.add_argument("--head-lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--val-fraction", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--no-pretrained", action="store_true", help="random init instead of ImageNet")
    p.add_argument("--strategy", choices=["default", "mirrored", "multiworker"], default="default")
    p.add_argument("--logical-cpus", type=int, default=0,
                   help="with --strategy mirrored on a CPU: split it into N logical devices")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a model on a dataset split")
    p.add_argument("data")
    p.add_argument("--model", default=None)
    p.add_argument("--split", default="val")
    p.add_argument("--json", default=None, help="write every number here")
    p.add_argument("--no-cam", action="store_true", help="skip the Grad-CAM pointing game")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("calibrate", help="refit a model's calibration and thresholds on val")
    p.add_argument("data")
    p.add_argument("--model", required=True, help="model folder to rewrite")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("models", help="list, promote or roll back model versions")
    models = p.add_subparsers(dest="models_command", required=True)
    models.add_parser("list", help="model versions, newest first (* = served)")
    q = models.add_parser("promote", help="copy a trained model into models/ and activate it")
    q.add_argument("candidate", help="model folder, e.g. runs/NAME/model")
    q.add_argument("--name", default=None, help="version name (default: <name>-<version>)")
    q = models.add_parser("rollback", help="re-activate the previous version")
    q.add_argument("--to", default=None, help="activate this version instead")
    models.add_parser("cleanup", help="remove leftovers of interrupted promotions")
    p.set_defaults(func=cmd_models)

    from fracture.cli.data import add_data_parser
    from fracture.cli.ood import add_ood_parser

    add_data_parser(sub)
    add_ood_parser(sub)

    from fracture.perf.bench import add_bench_parser
    from fracture.perf.loadtest import add_load_parser

    add_bench_parser(sub)
    add_load_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_tensorflow()
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
