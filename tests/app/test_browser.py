"""The dashboard in a real browser: ``streamlit run app.py`` driven by Playwright and Chromium.

AppTest (test_app.py) runs page scripts in-process; this test covers what only
a browser shows: the upload widget, images and plotly charts actually
rendering, and navigation between pages through the sidebar. Full-page
screenshots land in ``test-artifacts/`` for a person to look at.

Needs the real ImageNet weights (``../shared`` or CI) because the server is a
separate process where nothing can be patched, and Chromium; skips with the
reason otherwise. The server always gets its own temporary models, runs and
cache folders, so the test never touches the checkout's ``runs/``.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from fracture.perf.loadtest import CHROMIUM_ARGS, find_chromium

from conftest import SHARED, radiograph_like

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
# Generous: the server loads TensorFlow and builds ResNet-50 on a busy 2-core CPU.
SERVER_START_S = 180
# The shared inference worker waits this long for other sessions' requests (the
# default is 5 ms): the load test's few browser sessions then reliably share a
# batch even when Chromium staggers their uploads on a busy machine.
BATCH_WAIT_MS = 250
MODEL_READY_MS = 300_000
PAGE_READY_MS = 120_000


def _chromium() -> str:
    try:
        return find_chromium()
    except FileNotFoundError as error:
        pytest.skip(f"{error} (CI installs it)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _valid_model(directory: Path) -> bool:
    from fracture.model.folder import ModelLoadError, read_config

    try:
        read_config(directory)
    except (ModelLoadError, OSError, ValueError):
        return False
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, dataset folder, pid, log file) of a Streamlit server with the real weights;
    always stopped."""
    pytest.importorskip("playwright.sync_api")
    weights = SHARED / "weights" / "resnet50_imagenet_notop.h5"
    if not weights.is_file():
        pytest.skip(
            "needs ../shared/weights/resnet50_imagenet_notop.h5 (the server cannot be "
            "patched to use fake weights)"
        )
    base = tmp_path_factory.mktemp("browser")
    models = base / "models"
    if _valid_model(ROOT / "models" / "default"):
        shutil.copytree(ROOT / "models" / "default", models / "default")
    else:
        # No shipped model in this checkout: an untrained one with the real backbone
        # exercises every page just the same (its scores mean nothing).
        from app_helpers import make_model

        make_model(models / "default", weights, image_size=64)
    fracatlas = SHARED / "data" / "fracatlas"
    if fracatlas.is_dir():
        data = fracatlas
    else:
        from fracture.data.phantoms import synthesize_phantoms

        data = base / "phantoms"
        synthesize_phantoms(data, 24, size=96, seed=0)

    env = {key: value for key, value in os.environ.items() if not key.startswith("FRACTURE_")}
    env.update(
        {
            "FRACTURE_CONFIG": str(base / "no-such-config.toml"),
            "FRACTURE_MODELS_DIR": str(models),
            "FRACTURE_DATA_DIR": str(data),
            "FRACTURE_RUNS_DIR": str(base / "runs"),
            "FRACTURE_CACHE_DIR": str(base / "cache"),
            "FRACTURE_IMAGENET_WEIGHTS": str(weights),
            "FRACTURE_DICOM_SPOOL": str(base / "dicom-spool"),
            "FRACTURE_BATCH_WAIT_MS": str(BATCH_WAIT_MS),
            "FRACTURE_LOG_LEVEL": "INFO",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
    )
    port = _free_port()
    log_path = base / "streamlit.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                str(ROOT / "app.py"),
                "--server.port",
                str(port),
                "--server.headless",
                "true",
                "--server.fileWatcherType",
                "none",
                "--browser.gatherUsageStats",
                "false",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"streamlit exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not become healthy:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url, data, process.pid, log_path
    finally:
        # Its own session: signal the whole group so no helper outlives the test.
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def page(server):  # noqa: ARG001 - starts the server before the browser
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
        try:
            # Tall, because Streamlit scrolls inside its main container: a full-page
            # screenshot only holds what fits in the viewport.
            yield browser.new_page(viewport={"width": 1400, "height": 2400})
        finally:
            browser.close()


def _upload(data_dir: Path) -> dict:
    """A real fractured radiograph when the dataset has one, else a generated image."""
    real = next(iter(sorted((data_dir / "val" / "fractured").glob("*.jpg"))), None)
    if real is not None:
        return {"name": real.name, "mimeType": "image/jpeg", "buffer": real.read_bytes()}
    return {"name": "radiograph.png", "mimeType": "image/png", "buffer": _generated_png(4)}


def _generated_png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(radiograph_like(seed, height=384, width=320)).save(buffer, format="PNG")
    return buffer.getvalue()


def _images_loaded(page, minimum: int) -> None:
    """Wait until ``minimum`` images in st.image elements have decoded pixels."""
    page.wait_for_function(
        """(n) => Array.from(document.querySelectorAll('[data-testid="stImage"] img'))
                 .filter(img => img.complete && img.naturalWidth > 0).length >= n""",
        arg=minimum,
        timeout=MODEL_READY_MS,
    )


def _charts_rendered(page, minimum: int) -> None:
    """Wait until ``minimum`` plotly charts have drawn their SVG."""
    page.wait_for_function(
        """(n) => document.querySelectorAll(
                 '[data-testid="stPlotlyChart"] .js-plotly-plot .main-svg').length >= n""",
        arg=minimum,
        timeout=PAGE_READY_MS,
    )


def _idle(page) -> None:
    """Wait until the script run is over (the header's running indicator is gone)."""
    page.wait_for_function(
        """() => !document.querySelector('[data-testid="stStatusWidgetRunningIcon"],'
                 + '[data-testid="stStatusWidgetRunningManIcon"]')""",
        timeout=MODEL_READY_MS,
    )


def _no_exception(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0, page.locator(
        "[data-testid='stException']"
    ).first.inner_text()


def _shown_result(page) -> str:
    """Wait for the verdict of one upload: its probability, or "Not assessed"; return its text."""
    metric = page.locator(
        "[data-testid='stMetric']", has_text=re.compile("Fracture probability|Result")
    )
    metric.first.wait_for(timeout=MODEL_READY_MS)
    value = metric.first.locator("[data-testid='stMetricValue']").inner_text()
    # Whole percent, never 0 % or 100 %; or no number at all for an input the model cannot judge.
    assert re.fullmatch(r"< 1%|> 99%|[1-9][0-9]?%|Not assessed", value), value
    return value


def _visit_pages(page, width: int) -> None:
    """Dataset, Model, Train and Inbox at the current viewport, a screenshot of each."""
    for name, ready, charts in (
        ("Dataset", "Images", 3),
        ("Model", "Stored versions", 5),
        ("Train", None, 0),
        ("Inbox", None, 0),
    ):
        if width < 600:
            # A phone folds the sidebar away: open the page by its address instead.
            origin = "/".join(page.url.split("/")[:3])  # scheme://host:port
            page.goto(f"{origin}/{name.lower()}", timeout=PAGE_READY_MS)
        else:
            page.get_by_role("link", name=name).click()
        if name == "Train":
            page.get_by_role("button", name="Start training").wait_for(
                state="attached", timeout=PAGE_READY_MS
            )
        elif name == "Inbox":
            page.get_by_text("No DICOM node has run with this folder yet").wait_for(
                timeout=PAGE_READY_MS
            )
        else:
            page.get_by_role("heading", name=ready).wait_for(timeout=PAGE_READY_MS)
        if charts:
            _charts_rendered(page, charts)
        _idle(page)
        _no_exception(page)
        # Streamlit's own toolbar keeps no Deploy button (client.toolbarMode).
        assert page.get_by_role("button", name="Deploy").count() == 0
        page.screenshot(path=ARTIFACTS / f"browser-{name.lower()}-{width}.png", full_page=True)


def test_predict_dataset_model_train_and_inbox_pages_in_a_browser(server, page):
    url, data, _, _ = server
    page.goto(url, timeout=PAGE_READY_MS)
    uploader = page.locator("[data-testid='stFileUploaderDropzoneInput']")
    try:
        uploader.wait_for(state="attached", timeout=MODEL_READY_MS)
    except Exception:
        # What the page showed instead (a model error, a spinner) is the clue.
        page.screenshot(path=ARTIFACTS / "browser-failure.png", full_page=True)
        raise
    sidebar = page.locator("[data-testid='stSidebar']")
    assert "not for diagnosis" in sidebar.inner_text()

    uploader.set_input_files([_upload(data)])
    if _shown_result(page) != "Not assessed":
        _charts_rendered(page, 2)  # the viewer (radiograph and its map) and the gauge
        assert page.get_by_text(
            re.compile(r"(Where \(localisation\)|Why \(Grad-CAM\)), .* from 0 to 1")
        ).first.is_visible()
    _idle(page)
    _no_exception(page)
    page.screenshot(path=ARTIFACTS / "browser-predict-1400.png", full_page=True)

    # A batch: two more images and a broken file join the first upload.
    extra = [
        {"name": "second.png", "mimeType": "image/png", "buffer": _generated_png(5)},
        {"name": "broken.png", "mimeType": "image/png", "buffer": b"not an image"},
    ]
    uploader.set_input_files(extra)
    page.locator("[data-testid='stDataFrame']").wait_for(timeout=MODEL_READY_MS)
    _idle(page)
    _no_exception(page)
    with page.expect_download(timeout=PAGE_READY_MS) as csv_download:
        page.get_by_role("button", name="Download results (CSV)").click()
    rows = Path(csv_download.value.path()).read_text().splitlines()
    assert rows[0].startswith("path,probability,prediction") and len(rows) == 4
    assert rows[0].endswith(",model_name,model_version,operating_point")
    assert any(row.startswith("broken.png,") and ",error," in row for row in rows)
    with page.expect_download(timeout=MODEL_READY_MS) as zip_download:
        page.get_by_role("button", name="Download overlays with boxes (ZIP)").click()
    with zipfile.ZipFile(zip_download.value.path()) as archive:
        names = set(archive.namelist())
        overlay = Image.open(io.BytesIO(archive.read("second_gradcam.png")))
    assert {"second_gradcam.png", "errors.txt"} <= names and len(names) == 3
    assert overlay.width > 320 and overlay.height > 384  # colour bar and caption added
    _charts_rendered(page, 2)
    page.screenshot(path=ARTIFACTS / "browser-predict-batch-1400.png", full_page=True)
    # Another operating point reruns only the results fragment (its picker sits at the top
    # of the page, outside it): the batch and the sidebar both follow, with no error.
    page.get_by_text("High specificity", exact=True).first.click()
    page.get_by_text(re.compile("Labels at the high specificity operating point")).wait_for(
        timeout=PAGE_READY_MS
    )
    page.locator("[data-testid='stSidebar']").get_by_text(
        re.compile("Operating point: high specificity")
    ).wait_for(timeout=PAGE_READY_MS)
    _idle(page)
    _no_exception(page)
    page.get_by_text("High sensitivity", exact=True).first.click()
    page.get_by_text(re.compile("Labels at the high sensitivity operating point")).wait_for(
        timeout=PAGE_READY_MS
    )
    _idle(page)
    _no_exception(page)
    _visit_pages(page, 1400)

    # Phone width: the verdict and the overlay come before the gauge, and the operating
    # point is on the page, not only in the folded sidebar.
    page.set_viewport_size({"width": 390, "height": 4000})
    page.goto(url, timeout=PAGE_READY_MS)
    uploader = page.locator("[data-testid='stFileUploaderDropzoneInput']")
    uploader.wait_for(state="attached", timeout=MODEL_READY_MS)
    assert page.get_by_text("Operating point").first.is_visible()
    uploader.set_input_files([_upload(data)])
    verdict = _shown_result(page)
    _idle(page)
    _no_exception(page)
    if verdict != "Not assessed":
        _charts_rendered(page, 2)
        charts = page.locator("[data-testid='stPlotlyChart']")
        top_of = {
            "probability": page.locator("[data-testid='stMetric']").first.bounding_box()["y"],
            "overlay": charts.nth(0).bounding_box()["y"],  # the viewer
            "gauge": charts.nth(1).bounding_box()["y"],
        }
        assert top_of["probability"] < top_of["overlay"] < top_of["gauge"], top_of
    page.screenshot(path=ARTIFACTS / "browser-predict-390.png", full_page=True)
    # Dataset, Model, Train and the Inbox again, opened by address (the sidebar is folded).
    _visit_pages(page, 390)


def test_load_script_drives_concurrent_sessions(server):
    """``python -m fracture load``'s core against the real server: every request answered,
    and the sessions' images shared network calls (read back from the server's log)."""
    from fracture.perf.loadtest import LoadConfig, generated_uploads, run_load

    url, _, pid, log_path = server
    config = LoadConfig(
        url=url,
        sessions=3,
        requests=2,
        duration_s=600,
        request_timeout_s=MODEL_READY_MS / 1000,
        server_pid=pid,
        server_log=str(log_path),
        chromium=_chromium(),
    )
    # Seven different images (the warm-up's and six): the server scores a repeat from its cache.
    report = run_load(config, generated_uploads(7, size=256))
    assert report.errors == []
    assert len(report.latencies_s) == report.requests == 6
    assert report.warmup_s is not None and report.warmup_s > 0
    assert 0 < report.percentile_ms(50) <= report.percentile_ms(95)
    # The server really held the model: far more than an idle Python process.
    assert report.server_peak_rss_mib is not None and report.server_peak_rss_mib > 300
    # Every upload went through the shared queue (a rerun that Streamlit restarts
    # mid-request may score one twice, hence at least) ...
    sizes = report.batch_sizes
    assert sizes, f"no inference batches in the server log:\n{log_path.read_text()[-2000:]}"
    assert sum(size * count for size, count in sizes.items()) >= 6, sizes
    # ... and concurrent sessions shared a network call.
    assert max(sizes) > 1, sizes
    figures = report.to_dict()
    assert figures["largest_batch"] == max(sizes) and figures["batches"] == sum(sizes.values())
    assert "inference batches" in report.table()


def test_load_script_reports_a_page_error_as_a_failed_request(server):
    """A file the app cannot read shows an error box: one failed request, with the reason."""
    from fracture.perf.loadtest import LoadConfig, Upload, run_load

    url, _, _, _ = server
    config = LoadConfig(
        url=url,
        sessions=1,
        requests=1,
        warmup=False,
        duration_s=300,
        request_timeout_s=120,
        chromium=_chromium(),
    )
    report = run_load(config, [Upload("broken.png", b"this is not an image")])
    assert report.latencies_s == [] and len(report.errors) == 1
    assert "showed an error" in report.errors[0] and "broken.png" in report.errors[0]
