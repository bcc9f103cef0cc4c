"""``python -m fracture bench``: how fast the project serves and trains (see :mod:`fracture.perf.bench`).

Also the entry point of the benchmark's child processes
(``python -m fracture.cli.bench --child serving|training --config JSON``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from fracture.cli.common import configure_logging
from fracture.errors import BenchError
from fracture.perf.bench import apply_precision_verdict, run_bench
from fracture.perf.config import DEFAULT_VAL_ROOT, RESULT_MARKER, BenchConfig
from fracture.perf.measure import measure_serving, measure_training
from fracture.perf.report import format_machine, format_table

__all__ = ["add_bench_parser", "cmd_bench", "config_from_args", "main"]


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench`` to the ``python -m fracture`` subcommands."""
    parser = subparsers.add_parser(
        "bench", help="measure throughput, latency, cold start, memory and training speed"
    )
    _add_arguments(parser)
    parser.set_defaults(func=cmd_bench)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats and a 120-image val subset (under 3 minutes idle)",
    )
    parser.add_argument("--json", help="write every figure and raw timing here")
    parser.add_argument("--markdown", help="write the table as Markdown here")
    parser.add_argument("--model", help="trained model folder (default: the active model if any)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="benchmark ImageNet ResNet-50 with a random head at this size "
        "instead of a trained model (same speed)",
    )
    parser.add_argument(
        "--val-root",
        default=None,
        help=f"dataset for the bfloat16 AUROC check (default {DEFAULT_VAL_ROOT})",
    )
    parser.add_argument(
        "--no-onnx",
        action="store_true",
        help="leave out ONNX Runtime float32 and int8 (measured by default when "
        "onnxruntime and tf2onnx are installed)",
    )
    parser.add_argument(
        "--apply",
        action="store_true",
        help="record the bfloat16 verdict in the trained model's config, so "
        "predictions use bfloat16 by default only where it passed (full run)",
    )


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    if args.model and args.image_size:
        raise BenchError(
            "--image-size builds an untrained model; it cannot be combined with --model"
        )
    if getattr(args, "apply", False) and (args.quick or args.image_size):
        raise BenchError(
            "--apply needs a full run on a trained model: the bfloat16 check must "
            "cover the whole val split"
        )
    changes = {
        "model_dir": args.model,
        "image_size": args.image_size,
        "val_root": args.val_root,
        "onnx": not getattr(args, "no_onnx", False),
    }
    return BenchConfig.quick_config(**changes) if args.quick else BenchConfig.full(**changes)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table, optionally write JSON and Markdown."""
    from fracture.io.files import atomic_write_json, atomic_write_text

    try:
        config = config_from_args(args)
        result = run_bench(
            config, progress=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True)
        )
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    model = result["model"]
    print(
        f"Model: {model['name']} ({model['kind']}, {model['image_size']} px)"
        + ("  [--quick]" if config.quick else "")
    )
    print(format_machine(result["machine"]))
    print()
    print(format_table(result))
    seconds = result["section_seconds"]
    cores = result["machine"]["cores"] or 1
    print(
        f"\nbf16 recommended: {'yes' if result['bf16']['recommended'] else 'no'}; run took "
        f"{seconds['total']:.0f} s, {seconds.get('children_cpu_seconds', 0):.0f} CPU-s "
        f"(about {seconds.get('children_cpu_seconds', 0) / cores:.0f} s on an idle machine)"
    )
    onnx = result["onnx"]
    if onnx["available"]:
        verdicts = ", ".join(
            f"{name} {'adopt' if v['adopt'] else 'do not adopt'}"
            for name, v in onnx["variants"].items()
        )
        print(f"ONNX Runtime for the dashboard: {verdicts}")
    else:
        print(f"ONNX Runtime: {onnx['reason']}")
    if args.json:
        atomic_write_json(args.json, result)
        print(f"JSON written to {args.json}", file=sys.stderr)
    if args.apply:
        if model["kind"] != "trained":
            print("error: --apply: no trained model was benchmarked", file=sys.stderr)
            return 2
        precision = apply_precision_verdict(model["directory"], result["bf16"])
        print(f"{model['directory']}: serves {precision} by default from now on", file=sys.stderr)
    if args.markdown:
        atomic_write_text(
            args.markdown,
            format_machine(result["machine"]) + "\n\n" + format_table(result, markdown=True) + "\n",
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fracture.cli.bench``: as ``python -m fracture bench``, plus the child entry."""
    configure_logging()
    parser = argparse.ArgumentParser(prog="python -m fracture.cli.bench")
    _add_arguments(parser)
    parser.add_argument("--child", choices=["serving", "training"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.child:
        config = BenchConfig.from_json(json.loads(args.config))
        measure = measure_serving if args.child == "serving" else measure_training
        print(RESULT_MARKER + json.dumps(measure(config)), flush=True)
        return 0
    return cmd_bench(args)


if __name__ == "__main__":
    raise SystemExit(main())
