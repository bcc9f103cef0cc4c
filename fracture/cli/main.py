"""``python -m fracture``: the command line over the core package.

Subcommands import their heavy dependencies only when they run, so
``python -m fracture --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

from fracture.cli.common import configure_logging

__all__ = ["main", "build_parser"]


def _quiet_tensorflow() -> None:
    # Only TensorFlow's C++ start-up chatter; Python warnings stay visible.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fracture",
        description="Bone-fracture detection on radiographs (research demo, not a medical device).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    # Imported here, not at the top: each module pulls in its own dependencies,
    # and --help should answer without them.
    from fracture.cli.bench import add_bench_parser
    from fracture.cli.data import add_data_parser
    from fracture.cli.dicom import add_dicom_parser
    from fracture.cli.evaluate import add_calibrate_parser, add_evaluate_parser
    from fracture.cli.export import add_export_parser
    from fracture.cli.load import add_load_parser
    from fracture.cli.models import add_models_parser
    from fracture.cli.ood import add_ood_parser
    from fracture.cli.predict import add_predict_parser
    from fracture.cli.region import add_region_parser
    from fracture.cli.train import add_train_parser
    from fracture.cli.weights import add_weights_parser

    add_weights_parser(sub)
    add_predict_parser(sub)
    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_calibrate_parser(sub)
    add_models_parser(sub)
    add_data_parser(sub)
    add_ood_parser(sub)
    add_region_parser(sub)
    add_bench_parser(sub)
    add_load_parser(sub)
    add_dicom_parser(sub)
    add_export_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_tensorflow()
    configure_logging()
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
