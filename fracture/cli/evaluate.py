"""``python -m fracture evaluate`` and ``calibrate``: measure a model, refit its calibration."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_evaluate_parser", "add_calibrate_parser"]


def add_evaluate_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("evaluate", help="evaluate a model on a dataset split")
    p.add_argument("data")
    p.add_argument("--model", default=None)
    p.add_argument("--split", default="val")
    p.add_argument("--json", default=None, help="write every number here")
    p.add_argument("--no-cam", action="store_true", help="skip the Grad-CAM pointing game")
    p.set_defaults(func=cmd_evaluate)


def add_calibrate_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("calibrate", help="refit a model's calibration and thresholds on val")
    p.add_argument("data")
    p.add_argument("--model", required=True, help="model folder to rewrite")
    p.set_defaults(func=cmd_calibrate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fracture.evaluation.evaluate import evaluate_model, format_evaluation
    from fracture.io.files import atomic_write_json

    report = evaluate_model(
        args.data, model_dir=args.model, split=args.split, pointing_game=not args.no_cam
    )
    print(format_evaluation(report))
    if args.json:
        atomic_write_json(args.json, report)
        print(f"full report written to {args.json}", file=sys.stderr)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from fracture.evaluation.calibrate import calibrate_model
    from fracture.evaluation.metrics import format_report

    report = calibrate_model(args.model, args.data)
    print(format_report(report))
    print(f"calibration and thresholds rewritten in {args.model}", file=sys.stderr)
    return 0
