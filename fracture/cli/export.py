"""``python -m fracture export``: write the model as SavedModel, ONNX or TFLite for other runtimes."""

from __future__ import annotations

import argparse

__all__ = ["add_export_parser"]


def add_export_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from fracture.inference.export import FORMATS

    p = sub.add_parser(
        "export",
        help="export a model for TF Serving/Triton, ONNX Runtime or TFLite",
        description="Write the model with its preprocessing config: outputs are the calibrated "
        "probability, the logit and the Grad-CAM heat map (see README, 'Deploy elsewhere').",
    )
    p.add_argument(
        "model", nargs="?", default=None, help="model folder (default: the active model)"
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="export format")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="folder to write (created if missing)")
    where.add_argument(
        "--into-model-folder",
        action="store_true",
        help="ONNX only: write the export into the model folder, checksummed, where the "
        "dashboard's ONNX runtime (FRACTURE_RUNTIME=onnx) serves it from",
    )
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fracture.config import get_settings
    from fracture.inference.engine import configure_threads
    from fracture.inference.export import export_into_model_folder, export_model
    from fracture.model.folder import load_model
    from fracture.model.imagenet import resolve_imagenet_weights
    from fracture.model.registry import active_model_dir

    if args.into_model_folder and args.format != "onnx":
        raise ValueError("--into-model-folder writes the ONNX export only; use --out for others")
    configure_threads()
    settings = get_settings()
    directory = Path(args.model) if args.model else active_model_dir(settings)
    loaded = load_model(directory, resolve_imagenet_weights(settings).path)
    if args.into_model_folder:
        print(f"onnx: {export_into_model_folder(loaded)} (checksummed in the model folder)")
        return 0
    result = export_model(loaded, args.format, args.out)
    print(f"{args.format}: {result.network}")
    print(f"config: {result.config}")
    return 0
