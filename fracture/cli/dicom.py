"""``fracture dicom``: the hospital-facing commands (a DICOM node, a DICOMweb route)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_dicom_parser"]


def cmd_listen(args: argparse.Namespace) -> int:
    from fracture.dicom.node import Destination, DicomNode, NodeConfig

    try:
        forward = Destination.parse(args.forward) if args.forward else None
    except ValueError as error:
        print(f"error: --forward {error}", file=sys.stderr)
        return 2
    if forward is None and args.store is None:
        print(
            "error: give --forward AET@HOST:PORT, --store DIR or both: results need a destination",
            file=sys.stderr,
        )
        return 2
    callers = None if args.allow_any else frozenset(a.strip() for a in args.allow if a.strip())
    if callers is not None and not callers:
        print(
            "error: no calling AE title allowed; give --allow AET (repeatable) or --allow-any",
            file=sys.stderr,
        )
        return 2
    from fracture.config import get_settings

    spool = Path(args.spool) if args.spool else get_settings().dicom_spool
    config = NodeConfig(
        spool=spool,
        ae_title=args.ae_title,
        host=args.host,
        port=args.port,
        allowed_callers=callers,
        forward=forward,
        store=Path(args.store) if args.store else None,
        quiet_seconds=args.quiet_seconds,
        retry_seconds=args.retry_seconds,
    )
    predictor = _load_predictor(args.model)
    if predictor is None:
        return 2
    node = DicomNode(config, predictor)
    try:
        node.start()
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port}: {error.strerror}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: Any) -> None:
        print(
            f"received {signal.Signals(signum).name}: finishing current work, then stopping",
            file=sys.stderr,
        )
        node.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        f"{args.ae_title} listening on {args.host}:{args.port}; results to "
        f"{', '.join(config.destinations())}; health in {spool / 'health.json'}",
        file=sys.stderr,
        flush=True,
    )
    node.wait()
    node.stop()
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from fracture.dicom.web import DicomWebError, score_study

    predictor = _load_predictor(args.model)
    if predictor is None:
        return 2
    try:
        report = score_study(args.url, args.study, predictor, send=not args.no_send)
    except DicomWebError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    scored = f" over {report['images']} image(s)"
    if report["assessed"]:
        scored = f": probability {report['probability']:.3f}" + scored
    print(
        f"{report['verdict']}{scored}"
        + (
            f" ({report['not_assessed_images']} image(s) not assessed: they do not look like "
            "the radiographs the model was trained on)"
            if report["assessed"] and report["not_assessed_images"]
            else ""
        )
        + (f"; {report['caution']}" if report.get("caution") else "")
        + ("" if args.no_send else f"; {report['sent']} result object(s) stored back")
    )
    return 0


def _load_predictor(model: str | None):
    from fracture.errors import FractureError
    from fracture.inference.predictor import load_predictor

    try:
        return load_predictor(model)
    except FractureError as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def add_dicom_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("dicom", help="connect to a PACS: DICOM node and DICOMweb route")
    commands = parser.add_subparsers(dest="dicom_command", required=True)

    p = commands.add_parser(
        "listen",
        help="receive studies by C-STORE, score them, send "
        "results back (Secondary Capture + Structured Report)",
    )
    p.add_argument("--ae-title", default="FRACTURE", help="this node's AE title")
    p.add_argument("--port", type=int, default=11112)
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--forward", metavar="AET@HOST:PORT", help="send results here by C-STORE")
    p.add_argument("--store", metavar="DIR", help="write results into this folder")
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="AET",
        help="calling AE title allowed to send (repeatable)",
    )
    p.add_argument(
        "--allow-any",
        action="store_true",
        help="accept any calling AE title (only on a closed network)",
    )
    p.add_argument(
        "--spool",
        default=None,
        help="folder for received instances and undelivered results (default: the "
        "dicom_spool setting, which the dashboard's Inbox reads)",
    )
    p.add_argument(
        "--quiet-seconds",
        type=float,
        default=10.0,
        help="score a study once no instance arrived for this long",
    )
    p.add_argument(
        "--retry-seconds",
        type=float,
        default=30.0,
        help="wait between delivery attempts to an unreachable destination",
    )
    p.add_argument("--model", help="model folder (default: the active model)")
    p.set_defaults(func=cmd_listen)

    p = commands.add_parser("score", help="score one study over DICOMweb (WADO-RS in, STOW-RS out)")
    p.add_argument(
        "--url", required=True, help="DICOMweb base URL, e.g. http://pacs:8042/dicom-web"
    )
    p.add_argument("--study", required=True, help="Study Instance UID")
    p.add_argument("--no-send", action="store_true", help="score only; store nothing back")
    p.add_argument("--model", help="model folder (default: the active model)")
    p.set_defaults(func=cmd_score)
