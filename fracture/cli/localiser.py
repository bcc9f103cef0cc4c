"""``python -m fracture localiser fit``: train a model folder's localisation head on boxes."""

from __future__ import annotations

import argparse

from fracture.cli.common import model_dir_or_active, stage_progress

__all__ = ["add_localiser_parser"]


def add_localiser_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    """Register ``localiser fit DATA``."""
    from fracture.training.localiser import LocaliserTraining

    defaults = LocaliserTraining()
    group = subparsers.add_parser(
        "localiser",
        help="train the localisation head (where the fracture is: a map and boxes) on a "
        "dataset's fracture boxes, beside a model's classifier",
    )
    commands = group.add_subparsers(dest="localiser_command", required=True, metavar="COMMAND")
    fit = commands.add_parser(
        "fit",
        help="train the head on the boxes (boxes.csv) of a dataset's train split, store it in "
        "the model folder and report the pointing game and box AP50 on val",
    )
    fit.add_argument("data", help="dataset folder with train and val splits and fracture boxes")
    fit.add_argument("--model", default=None, help="model folder (default: the active model)")
    fit.add_argument("--epochs", type=int, default=defaults.epochs, help="training epochs")
    fit.add_argument(
        "--normals-per-epoch",
        type=int,
        default=defaults.normals_per_epoch,
        help="normal images sampled as negatives each epoch",
    )
    fit.add_argument("--seed", type=int, default=defaults.seed, help="seed of sampling and init")
    fit.add_argument(
        "--levels",
        type=int,
        choices=(1, 2),
        default=2,
        help="2 (default): read conv3 and conv4, for a grid of 8-pixel cells; 1: conv4 alone, "
        "16-pixel cells, half the feature cache",
    )
    fit.set_defaults(func=cmd_localiser_fit)


def cmd_localiser_fit(args: argparse.Namespace) -> int:
    from fracture.model.localiser import INPUT_LAYER, PYRAMID_LAYERS
    from fracture.training.localiser import LocaliserTraining, fit_for_model

    model_dir = model_dir_or_active(args.model)
    settings = LocaliserTraining(
        epochs=args.epochs, normals_per_epoch=args.normals_per_epoch, seed=args.seed
    )
    update, close = stage_progress("features")
    try:
        fit = fit_for_model(
            model_dir,
            args.data,
            settings=settings,
            on_progress=update,
            input_layers=PYRAMID_LAYERS if args.levels == 2 else (INPUT_LAYER,),
        )
    finally:
        close()
    print(f"Localisation head written to {model_dir}")
    for epoch in fit.history:
        pointing = "-" if epoch.pointing is None else f"{epoch.pointing:.3f}"
        ap50 = "-" if epoch.ap50 is None else f"{epoch.ap50:.3f}"
        print(f"  epoch {epoch.epoch:>2}: held-out pointing {pointing}, AP50 {ap50}")
    grid = fit.report.get("val_grid") or {}
    if grid:
        print(
            f"Val, {grid['n']} fractured images: pointing {grid['pointing']:.3f}, "
            f"box AP50 {grid['ap50']:.3f}; boxes shown from a score of "
            f"{fit.localiser.box_threshold:.2f}"
        )
    print(
        "The calibration was refitted on val, with the head's peak in the probability only "
        "where it raised the out-of-fold AUROC (see the model card)."
    )
    print("Measure the folder as served with: python -m fracture evaluate DATA --model DIR")
    return 0
