"""``python -m fracture models``: list, promote, roll back and clean up model versions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_models_parser"]


def add_models_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
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


def cmd_models(args: argparse.Namespace) -> int:
    from fracture.model import registry
    from fracture.model.folder import ModelLoadError

    try:
        if args.models_command == "list":
            for v in registry.list_versions():
                auroc = "n/a" if v.val_auroc is None else f"{v.val_auroc:.3f}"
                state = "ok" if v.valid else f"INVALID: {v.error}"
                print(
                    f"{'*' if v.active else ' '} {v.name:<32} {v.version or '-':<16} "
                    f"{v.created or '-':<21} auroc={auroc}  {state}"
                )
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
