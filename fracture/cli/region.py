"""``python -m fracture region fit`` and ``hardware fit``: fit a model folder's small heads.

Both heads share one fitting path (:mod:`fracture.evaluation.region_fit`); the
``hardware`` group is registered here beside ``region`` for that reason.
"""

from __future__ import annotations

import argparse
from typing import Callable

from fracture.cli.common import model_dir_or_active, stage_progress
from fracture.data.records import region_words
from fracture.evaluation.region_fit import fit_for_model, fit_hardware_for_model

__all__ = ["add_region_parser"]


def add_region_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``region fit DATA`` and ``hardware fit DATA``."""
    _add_head_group(
        subparsers,
        "region",
        "fit the body-region head (which body part a radiograph shows)",
        "per-region accuracy",
        cmd_region_fit,
    )
    _add_head_group(
        subparsers,
        "hardware",
        "fit the hardware head (metal implant visible), which adds a caution to results",
        "its accuracy and AUROC",
        cmd_hardware_fit,
    )


def _add_head_group(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
    labels: str,
    help_text: str,
    reported: str,
    handler: Callable[[argparse.Namespace], int],
) -> None:
    """``LABELS fit DATA``: both small heads take the same arguments."""
    group = subparsers.add_parser(labels, help=help_text)
    commands = group.add_subparsers(dest=f"{labels}_command", required=True, metavar="COMMAND")
    fit = commands.add_parser(
        "fit",
        help=f"fit the head on a dataset's {labels} labels (manifest.csv) and store it in the "
        f"model folder; report {reported} on val",
    )
    fit.add_argument("data", help=f"dataset folder with train and val splits and {labels} labels")
    fit.add_argument("--model", default=None, help="model folder (default: the active model)")
    fit.add_argument("--seed", type=int, default=0, help="the training run's seed")
    fit.add_argument(
        "--val-fraction",
        type=float,
        default=0.15,
        help="without a val split on disk: the training val fraction",
    )
    fit.set_defaults(func=handler)


def cmd_hardware_fit(args: argparse.Namespace) -> int:
    model_dir = model_dir_or_active(args.model)
    update, close = stage_progress("hardware")
    try:
        _, report = fit_hardware_for_model(
            model_dir,
            args.data,
            seed=args.seed,
            val_fraction=args.val_fraction,
            on_progress=update,
        )
    finally:
        close()
    accuracy = report["accuracy"]
    low, high = accuracy["ci"]
    print(f"Hardware head written to {model_dir}")
    print(
        f"Fitted on {report['n_train']} train images; on {report['n']} val images "
        f"({report['n_hardware']} with metal): accuracy {accuracy['rate']:.1%} "
        f"(95% CI {low:.1%}-{high:.1%})"
        + (f", AUROC {report['auroc']:.3f}" if report["auroc"] is not None else "")
    )
    return 0


def cmd_region_fit(args: argparse.Namespace) -> int:
    model_dir = model_dir_or_active(args.model)
    update, close = stage_progress("region")
    try:
        head, report = fit_for_model(
            model_dir,
            args.data,
            seed=args.seed,
            val_fraction=args.val_fraction,
            on_progress=update,
        )
    finally:
        close()
    print(f"Region head written to {model_dir}: {', '.join(map(region_words, head.classes))}")
    print(f"Fitted on {report['n_train']} train images; accuracy on {report['n']} val images:")
    for region, rate in report["per_region"].items():
        if rate["n"]:
            low, high = rate["ci"]
            print(
                f"  {region_words(region):<16} {rate['rate']:6.1%} "
                f"({rate['hits']}/{rate['n']}, 95% CI {low:.1%}-{high:.1%})"
            )
    single = report["single_region_accuracy"]
    if single["n"]:
        print(f"  single-region images: {single['rate']:.1%} ({single['hits']}/{single['n']})")
    if report["unsure"]:
        print(f"  unsure (no region named): {report['unsure']}")
    return 0
