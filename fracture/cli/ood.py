"""``python -m fracture ood``: fit or measure the out-of-distribution gate."""

from __future__ import annotations

import argparse
import sys

from fracture.cli.common import model_dir_or_active, stage_progress
from fracture.evaluation.ood_fit import extract_features, fit_for_model, measure, ood_probe_images
from fracture.inference.ood import (
    DEFAULT_COMPONENTS,
    DEFAULT_FALSE_ALARM_RATE,
)
from fracture.model.folder import ModelFolder

__all__ = ["add_ood_parser"]


def add_ood_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``ood fit DATA`` and ``ood measure DATA``."""
    ood = subparsers.add_parser("ood", help="fit or measure the out-of-distribution gate")
    commands = ood.add_subparsers(dest="ood_command", required=True, metavar="COMMAND")

    fit = commands.add_parser(
        "fit", help="fit the gate on a dataset's train/val splits and store it in the model folder"
    )
    fit.add_argument("data", help="dataset folder with train and val splits")
    fit.add_argument("--model", default=None, help="model folder (default: the active model)")
    fit.add_argument(
        "--max-train",
        type=int,
        default=None,
        help="fit on at most this many train images (seeded subset)",
    )
    fit.add_argument(
        "--false-alarm-rate",
        type=float,
        default=DEFAULT_FALSE_ALARM_RATE,
        help=f"share of held-out radiographs to flag (default {DEFAULT_FALSE_ALARM_RATE})",
    )
    fit.add_argument("--components", type=int, default=DEFAULT_COMPONENTS)
    fit.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the train subset and, without a val split on disk, of the "
        "split (use the training run's)",
    )
    fit.add_argument(
        "--val-fraction",
        type=float,
        default=0.15,
        help="without a val split on disk: the training val fraction",
    )
    fit.set_defaults(func=cmd_ood_fit)

    meas = commands.add_parser(
        "measure", help="AUROC and false-alarm rate: val split vs probe images"
    )
    meas.add_argument("data", help="dataset folder; its val split is the in-distribution set")
    meas.add_argument("--model", default=None, help="model folder (default: the active model)")
    meas.add_argument("--split", default="val", help="in-distribution split (default: val)")
    meas.add_argument("--json", default=None, help="write every number here")
    meas.set_defaults(func=cmd_ood_measure)


def cmd_ood_fit(args: argparse.Namespace) -> int:
    model_dir = model_dir_or_active(args.model)
    update, close = stage_progress("ood")
    try:
        gate = fit_for_model(
            model_dir,
            args.data,
            max_train=args.max_train,
            false_alarm_rate=args.false_alarm_rate,
            n_components=args.components,
            seed=args.seed,
            val_fraction=args.val_fraction,
            on_progress=update,
        )
    finally:
        close()
    thresholds = ", ".join(
        f"{part.layer} {part.threshold:.4f} ({part.n_components} axes)" for part in gate.parts
    )
    print(
        f"OOD gate written to {ModelFolder(model_dir).ood_path}: fitted on {gate.n_train} "
        f"train images; thresholds set on {gate.n_heldout} val images for a "
        f"{gate.false_alarm_rate:.0%} false-alarm rate per layer: {thresholds}"
    )
    return 0


def cmd_ood_measure(args: argparse.Namespace) -> int:
    from fracture.data.layouts import load_dataset
    from fracture.inference.predictor import load_predictor
    from fracture.io.files import atomic_write_json

    model_dir = model_dir_or_active(args.model)
    folder = ModelFolder(model_dir)
    if not folder.has_ood_gate():  # before the minute a Predictor takes to load
        print(
            f"error: {model_dir} has no {folder.ood_path.name}; run 'python -m fracture ood fit DATA "
            f"--model {model_dir}' first",
            file=sys.stderr,
        )
        return 2
    predictor = load_predictor(model_dir)
    gate = predictor.ood_gate
    assert gate is not None  # the file exists and read_config verified it
    records = load_dataset(args.data).split(args.split)
    if not records:
        raise ValueError(f"{args.data} has no {args.split!r} split")
    update, close = stage_progress("ood")
    try:
        in_features, _ = extract_features(
            predictor,
            [r.path for r in records],
            on_progress=lambda done, total: update(args.split, done, total),
        )
    finally:
        close()
    probes = ood_probe_images()
    out_features, kept = extract_features(predictor, list(probes.values()), names=list(probes))
    report = measure(gate, in_features, out_features)
    names = list(probes)
    probe_scores = gate.score(out_features)
    report["probes"] = {
        names[i]: {"score": float(s), "flagged": bool(s > gate.threshold)}
        for i, s in zip(kept, probe_scores)
    }
    report["model"] = str(model_dir)
    report["in_distribution_split"] = args.split
    print(
        f"OOD gate of {model_dir} ({', '.join(gate.layers)}): threshold {gate.threshold:.4f} "
        f"(set for a {gate.false_alarm_rate:.0%} false-alarm rate"
        f"{' per layer; the score is the largest distance relative to its layer threshold' if len(gate.layers) > 1 else ''})"
    )
    print(f"AUROC (ID {args.split} vs {report['n_out']} probe images): {report['auroc']:.4f}")
    print(
        f"False-alarm rate on {report['n_in']} {args.split} radiographs: "
        f"{report['false_alarm_rate']:.2%}"
    )
    print(f"Detection rate on probe images: {report['detection_rate']:.2%}")
    width = max(len(name) for name in report["probes"])
    for name, entry in report["probes"].items():
        verdict = "flagged" if entry["flagged"] else "MISSED (looks in distribution)"
        print(f"  {name:<{width}}  {entry['score']:10.3f}  {verdict}")
    if args.json:
        atomic_write_json(args.json, report)
        print(f"full report written to {args.json}", file=sys.stderr)
    return 0
