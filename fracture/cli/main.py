"""``python -m fracture``: the command line over the core package.

Subcommands import their heavy dependencies only when they run, so
``python -m fracture --help`` answers instantly. Every command's handler is
``cmd_<name>(args) -> int`` in the module of its group, and every one runs
through :func:`main`'s one error wrapper.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from fracture.cli.common import configure_logging
from fracture.errors import FractureError

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
    from fracture.cli.localiser import add_localiser_parser
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
    add_localiser_parser(sub)
    add_bench_parser(sub)
    add_load_parser(sub)
    add_dicom_parser(sub)
    add_export_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; an expected error becomes ``error: ...`` on stderr, not a traceback.

    Exit status 2 for errors fracture reports on purpose (a bad model folder,
    dataset layout, weights, ...), 1 for a bad value or a missing file.
    """
    _quiet_tensorflow()
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FractureError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
