"""``python -m fracture load``: browser sessions against a running dashboard (see :mod:`fracture.perf.loadtest`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from fracture.io.files import atomic_write_json
from fracture.perf.loadtest import (
    MAX_REQUESTS_PER_SESSION,
    MAX_SESSIONS,
    LoadConfig,
    generated_uploads,
    run_load,
    uploads_from_paths,
)

__all__ = ["add_load_parser"]


def add_load_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "load",
        help="load-test a running `streamlit run app.py` on this machine with browser sessions",
        description="Drive a running dashboard with several Chromium sessions at once, each "
        "uploading radiographs on the Predict page; report errors and latency.",
    )
    p.add_argument("--url", default=LoadConfig.url, help="the server (localhost only)")
    p.add_argument(
        "--sessions",
        type=int,
        default=LoadConfig.sessions,
        help=f"browser sessions at once (1..{MAX_SESSIONS})",
    )
    p.add_argument(
        "--requests",
        type=int,
        default=LoadConfig.requests,
        help=f"uploads per session, one after another (1..{MAX_REQUESTS_PER_SESSION})",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=LoadConfig.duration_s,
        help="hard stop for the whole run, seconds",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=LoadConfig.request_timeout_s,
        help="per-request timeout, seconds",
    )
    p.add_argument(
        "--images",
        nargs="*",
        default=None,
        help="image files or folders to upload (default: generated phantoms)",
    )
    p.add_argument(
        "--no-warmup",
        action="store_true",
        help="time the first request too (it may include the model load)",
    )
    p.add_argument(
        "--server-pid",
        type=int,
        default=None,
        help="the server's process id: sample its resident memory and count its CPU seconds "
        "(and its children's) per upload while the sessions run",
    )
    p.add_argument(
        "--no-engine-floor",
        action="store_true",
        help="skip timing `fracture predict` afterwards (its marginal CPU seconds per image, "
        "the figure the server's CPU per upload is compared with)",
    )
    p.add_argument(
        "--server-log",
        default=None,
        help="the server's log file (its stderr, e.g. `streamlit run app.py 2> server.log`): "
        "report the inference batches it formed during the test",
    )
    p.add_argument("--chromium", default=None, help="Chromium executable")
    p.add_argument("--json", default=None, help="write every figure here")
    p.set_defaults(func=cmd_load)


def cmd_load(args: argparse.Namespace) -> int:
    config = LoadConfig(
        url=args.url,
        sessions=args.sessions,
        requests=args.requests,
        duration_s=args.duration,
        request_timeout_s=args.timeout,
        warmup=not args.no_warmup,
        server_pid=args.server_pid,
        engine_floor=not args.no_engine_floor,
        server_log=args.server_log,
        chromium=args.chromium,
    )
    try:
        config.validate()
        needed = config.sessions * config.requests
        uploads = (
            uploads_from_paths(args.images, needed)
            if args.images
            # One more than the requests, all different: the server's content-hash cache
            # would answer a repeated image without the network.
            else generated_uploads(needed + 1)
        )
        report = run_load(config, uploads)
    except ImportError:
        print(
            "error: the load test needs Playwright: pip install -r requirements-dev.txt",
            file=sys.stderr,
        )
        return 2
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.table())
    if args.json:
        atomic_write_json(
            Path(args.json), {"config": dataclasses.asdict(config), **report.to_dict()}
        )
    return 1 if report.errors else 0
