"""Time the Predict page's batch path against the engine, on real radiographs (issue 25).

Not a test: a measurement to run by hand on a quiet machine, before and after a change
to the batch view, and to copy into BENCHMARKS.md::

    nice -n 19 .venv/bin/python tools/perf/batch_page.py --images 20 \
        --val /path/to/fracatlas/val [--root CHECKOUT]

It prints, for one sitting:

* **engine**: the seconds ``python -m fracture bench`` gives 20 images: its
  "project predict" path (``Predictor.predict`` at the configured batch size, no heat
  maps) over 64 val radiographs, scaled to the batch;
* **page, first / repeat**: the Predict page, driven by Streamlit's AppTest (the
  server side of a browser: the script run, the network, every table and chart
  built; not the browser's drawing), from the upload of the batch to the full table,
  on a warm model: the first batch of the process, then a second batch of other images;
* **ZIP**: the seconds from a click on "Download overlays (ZIP)" to its bytes. Where
  the page has encoded the ZIP while the table was drawn (``--root`` at a checkout
  with it), the click costs only what is still running then, measured as the time
  the page waits for it; the old path's cost (score every image again with maps,
  then encode) is measured too, on any checkout.

``--root`` picks the checkout whose page and package are measured (default: this
one), so the same script measures the code before a change from a plain copy of it
(``git archive <commit> | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=HERE, help="checkout to measure")
    parser.add_argument("--val", type=Path, default=HERE.parent / "shared/data/fracatlas/val")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument(
        "--repeats", type=int, default=3, help="page and engine timings, interleaved"
    )
    return parser.parse_args()


def main() -> None:
    args = _args()
    root = args.root.resolve()
    sys.path.insert(0, str(root))
    os.chdir(root)
    weights = HERE.parent / "shared/weights/resnet50_imagenet_notop.h5"
    if weights.exists():
        os.environ.setdefault("FRACTURE_IMAGENET_WEIGHTS", str(weights))
    os.environ.setdefault("FRACTURE_MODELS_DIR", str(root / "models"))

    from streamlit.testing.v1 import AppTest

    files = sorted(args.val.glob("*/*.jpg"))
    needed = (args.repeats + 1) * args.images + 64
    if len(files) < needed:
        raise SystemExit(f"need {needed} val images under {args.val}")
    # Interleave the classes: the first 20 files of one folder would all be fractures.
    files = files[::7] + [f for i, f in enumerate(files) if i % 7]
    engine_set = files[:64]
    sets = [
        files[64 + i * args.images : 64 + (i + 1) * args.images] for i in range(args.repeats + 1)
    ]

    def batch_page(batch: list[Path]) -> tuple[AppTest, float]:
        at = AppTest.from_file(str(root / "app.py"), default_timeout=600)
        at.run()
        uploader = at.file_uploader[0]
        for path in batch:
            uploader.upload(path.name, path.read_bytes(), "image/jpeg")
        started = time.perf_counter()
        at.run()
        seconds = time.perf_counter() - started
        if at.exception:
            raise SystemExit([e.value for e in at.exception])
        rows = len(at.dataframe[0].value)
        if rows != len(batch):
            raise SystemExit(f"the table has {rows} rows for {len(batch)} images")
        return at, seconds

    # Warm: the model loads in the background; one batch of its own, never timed.
    batch_page(sets[0][:4])

    from app_pages import _common
    from fracture.config import get_settings
    from fracture.inference.predictor import Predictor
    from fracture.model.registry import active_model_dir
    from fracture.views import results

    directory = active_model_dir(get_settings())
    served = _common._load_served_model(str(directory), _common._fingerprint(directory))
    # bench's "project predict": the configured batch, no heat maps, 64 radiographs.
    engine = Predictor(served.batch.loaded, batch_size=get_settings().batch_size)
    jpegs = [path.read_bytes() for path in engine_set]
    engine.predict(jpegs)  # warm, as bench does

    def engine_seconds() -> float:
        started = time.perf_counter()
        engine.predict(jpegs)
        return (time.perf_counter() - started) * args.images / len(jpegs)

    # Interleaved, engine then page, so a load that drifts hits both alike.
    engine_runs, page_runs, loads = [], [], []
    for batch in sets[1:]:
        loads.append(os.getloadavg()[0])
        engine_runs.append(engine_seconds())
        at, seconds = batch_page(batch)
        page_runs.append(seconds)
    engine_s, first = statistics.median(engine_runs), page_runs[0]
    repeat = statistics.median(page_runs[1:]) if len(page_runs) > 1 else first

    # The ZIP the page encoded while drawing the table (absent before issue 25's change):
    # what a click waits for is what is still encoding once the page is drawn.
    zip_wait = prepared_zip = None
    prepared = at.session_state["batch_results"].get("archive")
    if prepared is not None:
        started = time.perf_counter()
        prepared_zip = prepared.bytes()
        zip_wait = time.perf_counter() - started

    sources = [path.read_bytes() for path in sets[-1]]
    names = [path.name for path in sets[-1]]
    config = served.config
    threshold = config.thresholds[config.operating_point]
    zip_settings = {
        "model_name": config.name or "",
        "model_version": str(config.version or ""),
        "thresholds": config.thresholds,
    }
    started = time.perf_counter()
    old_zip = results.overlay_zip(
        served.batch.iter_predict(sources, names=names, with_cam=True),
        0.45,
        threshold,
        **zip_settings,
    )
    old_zip_s = time.perf_counter() - started
    encode_only = None
    if hasattr(results, "OverlayArchive"):
        # The encoding alone, from predictions already made with maps (the pool's share).
        with_maps = served.single.predict(sources, names=names, with_cam=True)
        started = time.perf_counter()
        results.overlay_zip(iter(with_maps), 0.45, threshold, **zip_settings)
        encode_only = time.perf_counter() - started

    def listed(values: list[float]) -> str:
        return ", ".join(f"{value:.2f}" for value in values)

    print(f"checkout: {root}")
    print(f"load average (1 min) at each repeat: {listed(loads)}")
    print(
        f"engine (bench's project predict): {args.images / engine_s:.2f} img/s, "
        f"{engine_s:.2f} s for {args.images} (median; each: {listed(engine_runs)})"
    )
    print(
        f"page, upload to full table: first {first:.2f} s, repeat {repeat:.2f} s "
        f"(median; each: {listed(page_runs)})"
    )
    ratios = [page / engine for page, engine in zip(page_runs, engine_runs)]
    print(
        f"ratio page / engine: first {first / engine_s:.2f}, repeat {repeat / engine_s:.2f} "
        f"(each pair: {listed(ratios)})"
    )
    print(
        f"ZIP, old path (score again with maps, then encode): {old_zip_s:.2f} s, "
        f"{len(old_zip) / 1e6:.1f} MB"
    )
    if zip_wait is not None and prepared_zip is not None:
        print(
            f"ZIP, click to bytes on the page (what was still encoding): {zip_wait:.2f} s, "
            f"{len(prepared_zip) / 1e6:.1f} MB"
        )
    if encode_only is not None:
        print(
            f"ZIP, encoding {args.images} overlays in the worker pool, maps already made: "
            f"{encode_only:.2f} s"
        )


if __name__ == "__main__":
    main()
