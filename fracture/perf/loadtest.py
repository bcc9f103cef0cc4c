"""Load test: several real browser sessions against a running ``streamlit run`` server.

``python -m fracture load --url http://localhost:8501 --sessions 4 --requests 3``
opens ``sessions`` Chromium browser contexts at once (each one a separate
Streamlit session, as separate people would be) and has each upload
``requests`` radiographs, one after another, on the Predict page. One request
is what a person does: clear the previous image, upload the next, and wait
until its fracture probability and Grad-CAM overlay are on screen. Its latency
is measured from the upload to the overlay image having decoded pixels, so it
includes the websocket, the script rerun, the model and the browser rendering.

Why a real browser rather than a websocket client: the Streamlit websocket
protocol is internal and changes between releases; Playwright drives the same
page people use, through the same widgets, and needs no knowledge of it.

Bounded by design: it refuses any host but this machine, caps sessions,
requests and total time, and stops by itself when the deadline passes,
counting unfinished requests as errors. A request that fails (timeout, a
Streamlit exception, an error box) is recorded with its reason and the
session goes on with its next request.

With ``server_log`` (the server's stderr, where the dashboard logs one line
per inference batch at the default INFO level), the report also counts the
batches that the shared inference queue formed while the sessions ran: how
many colleagues' images shared one network call.

With ``server_pid`` it also reports what each upload cost the server in CPU
time: user plus system seconds of the server process and all its children
(psutil), over the concurrent phase only, divided by the uploads completed in
it. A browser load test on a small machine measures the browsers as much as the
server; CPU seconds of the server do not depend on the client (issue 25). Set
against the network's own cost, the marginal CPU seconds per image of
``fracture predict`` measured in the same run (``engine_floor``: two runs of
different sizes, so start-up and model loading cancel), the ratio says how much
the page costs beyond the network.

Needs Playwright (``requirements-dev.txt``) and a Chromium (Debian's
``chromium`` package; ``playwright install`` is not required).
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

__all__ = [
    "LoadConfig",
    "LoadReport",
    "Upload",
    "check_local_url",
    "run_load",
    "find_chromium",
    "marginal_cpu_per_image",
    "tree_cpu_seconds",
]

# -- Configurable parameters ---------------------------------------------------------
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_SESSIONS = 16
MAX_REQUESTS_PER_SESSION = 50
MAX_DURATION_S = 1800.0
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
RSS_SAMPLE_S = 0.5
# `fracture predict` on this many images, then this many: the difference is the marginal cost.
FLOOR_SMALL = 4
FLOOR_LARGE = 24
FLOOR_TIMEOUT_S = 600.0

# Streamlit's DOM test ids (stable across releases; the browser test uses them too).
UPLOADER = "[data-testid='stFileUploaderDropzoneInput']"
DELETE_UPLOAD = "[data-testid='stFileChipDeleteBtn'] button"
# The verdict: a probability, or "Not assessed" for an input the model cannot judge.
PROBABILITY = (
    "[data-testid='stMetric']:has-text('Fracture probability'), "
    "[data-testid='stMetric']:has-text('Not assessed')"
)
EXCEPTION = "[data-testid='stException']"
ERROR_BOX = "[data-testid='stAlertContentError']"
# Done: the verdict shown with its picture drawn. The picture is the Where/Why viewer (a
# plotly chart whose radiograph is an SVG <image>), or a drawn Grad-CAM image (pages and
# models from before the viewer), or, for an input flagged out of distribution, the image
# beside its "Not assessed" verdict.
OVERLAY_READY = """() => {
    const drawn = el => Array.from(el.querySelectorAll('img'))
        .some(i => i.complete && i.naturalWidth > 0);
    const images = Array.from(document.querySelectorAll('[data-testid="stImage"]'));
    if (images.some(el => el.innerText.includes('Grad-CAM') && drawn(el))) return true;
    const verdict = Array.from(document.querySelectorAll('[data-testid="stMetric"]'))
        .some(el => /Fracture probability|Not assessed/.test(el.innerText));
    const viewer = Array.from(document.querySelectorAll('[data-testid="stPlotlyChart"]'))
        .some(el => el.querySelector('.main-svg image'));
    return verdict && (viewer || images.some(drawn));
}"""


@dataclass(frozen=True)
class Upload:
    """One file to upload: its name and bytes."""

    name: str
    data: bytes

    @property
    def mime_type(self) -> str:
        suffix = Path(self.name).suffix.lower()
        return {
            ".png": "image/png",
            ".jpg": "image/jpeg",
            ".jpeg": "image/jpeg",
            ".dcm": "application/dicom",
        }.get(suffix, "application/octet-stream")


@dataclass
class LoadConfig:
    """What to run. ``duration_s`` is a hard stop for the whole run, warm-up included."""

    url: str = "http://localhost:8501"
    sessions: int = 4
    requests: int = 3  # uploads per session, one after another
    duration_s: float = 600.0
    request_timeout_s: float = 300.0
    warmup: bool = True  # one untimed request first, so the model load is not in the figures
    server_pid: int | None = None  # sample this process's RSS (and its children's) while running
    # Measure `fracture predict`'s marginal CPU seconds per image after the browsers finish.
    engine_floor: bool = True
    server_log: str | None = None  # the server's log: count the inference batches it reports
    chromium: str | None = None

    def validate(self) -> None:
        check_local_url(self.url)
        if not 1 <= self.sessions <= MAX_SESSIONS:
            raise ValueError(f"sessions must be 1..{MAX_SESSIONS}, got {self.sessions}")
        if not 1 <= self.requests <= MAX_REQUESTS_PER_SESSION:
            raise ValueError(f"requests must be 1..{MAX_REQUESTS_PER_SESSION}, got {self.requests}")
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise ValueError(
                f"duration must be in (0, {MAX_DURATION_S:.0f}] s, got {self.duration_s}"
            )
        if self.request_timeout_s <= 0:
            raise ValueError("request timeout must be positive")
        if self.server_log is not None and not Path(self.server_log).is_file():
            raise ValueError(f"server log {self.server_log} does not exist")


@dataclass
class LoadReport:
    """What happened. Latencies are seconds, one per completed request."""

    url: str
    sessions: int
    requests_planned: int
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warmup_s: float | None = None
    wall_s: float = 0.0  # the concurrent phase, after the warm-up
    server_peak_rss_mib: float | None = None
    stopped_by_deadline: bool = False
    # Inference batches the server logged during the concurrent phase: size -> count
    # (None: no server log was given).
    batch_sizes: dict[int, int] | None = None
    # User + system CPU seconds of the server and its children during the concurrent phase.
    server_cpu_s: float | None = None
    # `fracture predict`'s marginal CPU seconds per image, measured in the same run.
    engine_cpu_per_image_s: float | None = None

    @property
    def requests(self) -> int:
        """Requests attempted (completed or failed)."""
        return len(self.latencies_s) + len(self.errors)

    @property
    def server_cpu_per_upload_s(self) -> float | None:
        """The server's CPU seconds per completed upload of the concurrent phase."""
        if self.server_cpu_s is None or not self.latencies_s:
            return None
        return self.server_cpu_s / len(self.latencies_s)

    @property
    def cpu_ratio(self) -> float | None:
        """Server CPU per upload over the engine's CPU per image: 1 would be the network alone."""
        per_upload = self.server_cpu_per_upload_s
        if per_upload is None or not self.engine_cpu_per_image_s:
            return None
        return per_upload / self.engine_cpu_per_image_s

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies_s:
            return None
        return float(np.percentile(np.asarray(self.latencies_s, np.float64) * 1000.0, q))

    def to_dict(self) -> dict[str, Any]:
        completed = len(self.latencies_s)
        return {
            "url": self.url,
            "sessions": self.sessions,
            "requests_planned": self.requests_planned,
            "requests": self.requests,
            "completed": completed,
            "errors": len(self.errors),
            "error_messages": list(self.errors),
            "p50_ms": self.percentile_ms(50),
            "p95_ms": self.percentile_ms(95),
            "max_ms": self.percentile_ms(100),
            "throughput_per_s": completed / self.wall_s if self.wall_s > 0 else None,
            "warmup_s": self.warmup_s,
            "wall_s": self.wall_s,
            "server_peak_rss_mib": self.server_peak_rss_mib,
            "stopped_by_deadline": self.stopped_by_deadline,
            "server_cpu_s": self.server_cpu_s,
            "server_cpu_per_upload_s": self.server_cpu_per_upload_s,
            "engine_cpu_per_image_s": self.engine_cpu_per_image_s,
            "server_cpu_over_engine": self.cpu_ratio,
            "batch_sizes": None
            if self.batch_sizes is None
            else {str(size): count for size, count in sorted(self.batch_sizes.items())},
            **self._batch_figures(),
            "latencies_ms": [round(s * 1000.0, 1) for s in self.latencies_s],
        }

    def _batch_figures(self) -> dict[str, Any]:
        sizes = self.batch_sizes or {}
        batches = sum(sizes.values())
        images = sum(size * count for size, count in sizes.items())
        return {
            "batches": batches if self.batch_sizes is not None else None,
            "mean_batch_size": images / batches if batches else None,
            "largest_batch": max(sizes) if sizes else None,
        }

    def batch_cell(self) -> str:
        """The batch-size histogram in words, for the table."""
        if self.batch_sizes is None:
            return "- (give --server-log to count them)"
        if not self.batch_sizes:
            return "none in the server log (is it at log level INFO?)"
        figures = self._batch_figures()
        histogram = ", ".join(
            f"{count} of {size}" for size, count in sorted(self.batch_sizes.items())
        )
        return (
            f"{histogram} ({figures['batches']} batches, "
            f"{figures['mean_batch_size']:.1f} images per batch on average)"
        )

    def table(self) -> str:
        figures = self.to_dict()

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:,.0f} ms"

        def seconds(value: float | None, note: str = "") -> str:
            return "-" if value is None else f"{value:.3f} CPU s {note}".rstrip()

        rows = [
            ("server", self.url),
            ("sessions at once", str(self.sessions)),
            ("requests (done / planned)", f"{figures['requests']} / {self.requests_planned}"),
            ("errors", str(figures["errors"])),
            ("latency p50", ms(figures["p50_ms"])),
            ("latency p95", ms(figures["p95_ms"])),
            ("latency max", ms(figures["max_ms"])),
            (
                "throughput",
                "-"
                if not figures["throughput_per_s"]
                else f"{figures['throughput_per_s']:.2f} requests/s",
            ),
            ("warm-up request", "-" if self.warmup_s is None else f"{self.warmup_s:.1f} s"),
            ("wall time", f"{self.wall_s:.1f} s"),
            (
                "server peak RSS",
                "-" if self.server_peak_rss_mib is None else f"{self.server_peak_rss_mib:,.0f} MiB",
            ),
            ("inference batches", self.batch_cell()),
            ("server CPU per upload", seconds(self.server_cpu_per_upload_s)),
            ("engine CPU per image", seconds(self.engine_cpu_per_image_s, "(fracture predict)")),
            (
                "server ÷ engine",
                "-" if self.cpu_ratio is None else f"{self.cpu_ratio:.1f} × the network's own cost",
            ),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        lines += [f"  error: {message}" for message in self.errors[:10]]
        if len(self.errors) > 10:
            lines.append(f"  … and {len(self.errors) - 10} more")
        return "\n".join(lines)


def check_local_url(url: str) -> None:
    """Refuse anything but an http(s) URL on this machine: a load test is not for other hosts."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOCAL_HOSTS:
        raise ValueError(
            f"{url!r} is not a local server: the load script only drives "
            f"http://localhost, 127.0.0.1 or [::1]"
        )


def find_chromium(explicit: str | None = None) -> str:
    """A Chromium executable: the explicit one, $CHROMIUM, or the usual Debian paths."""
    candidates = (
        explicit,
        os.environ.get("CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        shutil.which("google-chrome"),
    )
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    raise FileNotFoundError("no Chromium found: apt-get install chromium, or set $CHROMIUM")


def generated_uploads(count: int, size: int = 384, seed: int = 0) -> list[Upload]:
    """Synthetic phantom radiographs as PNG bytes, for a machine with no real images."""
    from PIL import Image

    from fracture.data.phantoms import render_phantom

    rng = np.random.default_rng(seed)
    uploads = []
    for index in range(count):
        phantom = render_phantom(rng, size, fractured=index % 2 == 0)
        buffer = io.BytesIO()
        Image.fromarray(phantom.image).save(buffer, format="PNG")
        uploads.append(Upload(f"phantom_{index:03d}.png", buffer.getvalue()))
    return uploads


def uploads_from_paths(paths: Sequence[str | os.PathLike[str]], limit: int) -> list[Upload]:
    """Up to ``limit`` image files from the given files and folders (searched recursively)."""
    from fracture.io.images import iter_image_files

    files = iter_image_files(paths)[:limit]
    if not files:
        raise FileNotFoundError(f"no image files found in {', '.join(map(str, paths))}")
    return [Upload(path.name, path.read_bytes()) for path in files]


class _RssSampler:
    """Peak resident memory of a process and its children, sampled on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> "_RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, _tree_rss_kib(self.pid))
            self._stop.wait(RSS_SAMPLE_S)


def _tree_rss_kib(pid: int) -> int:
    total = 0
    for process in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    found = [int(child) for child in text.split()]
    return found + [grandchild for child in found for grandchild in _children(child)]


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children, so far.

    Live children (at any depth) count with their own times; children that have
    exited and been waited for are in the parent's ``children_user`` and
    ``children_system``, so a worker that ends between two readings is not lost.
    Raises ``psutil.NoSuchProcess`` when ``pid`` is gone.
    """
    import psutil

    process = psutil.Process(pid)
    times = process.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in process.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # exited between the listing and the reading: in its parent's count
        total += child_times.user + child_times.system
    return float(total)


def child_cpu_seconds(
    argv: Sequence[str], timeout_s: float, env: dict[str, str] | None = None
) -> float:
    """Run ``argv`` to the end and return its user + system CPU seconds (its children included).

    ``os.wait4`` reads the rusage of exactly this child, so other work on the
    machine does not count. Raises ``RuntimeError`` on a non-zero exit or a timeout.
    """
    import subprocess

    process = subprocess.Popen(
        list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RuntimeError(f"{argv[0]} took longer than {timeout_s:.0f} s")
        time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)
    error = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode != 0:
        raise RuntimeError(f"exit status {process.returncode}: {error.strip()[-300:]}")
    return float(usage.ru_utime + usage.ru_stime)


def predict_command(folder: Path, out: Path) -> list[str]:
    """``fracture predict`` on a folder, as this interpreter runs it."""
    import sys

    return [sys.executable, "-m", "fracture", "predict", str(folder), "--out", str(out)]


def marginal_cpu_per_image(
    uploads: Sequence[Upload],
    small: int = FLOOR_SMALL,
    large: int = FLOOR_LARGE,
    command: Any = predict_command,
    timeout_s: float = FLOOR_TIMEOUT_S,
) -> float:
    """CPU seconds per extra image of ``command`` (default ``fracture predict``).

    Two runs, of ``small`` and ``large`` images (the uploads, repeated under
    new names), and the difference divided by the extra images: starting Python,
    importing TensorFlow and loading the model cost the same in both and cancel,
    leaving what one more image costs, the network's floor for a server.
    """
    import tempfile

    if not uploads:
        raise ValueError("no images to measure the engine on")
    if not 0 < small < large:
        raise ValueError(f"need 0 < small < large, not {small} and {large}")
    cpu = {}
    with tempfile.TemporaryDirectory(prefix="fracture-floor-") as tmp:
        for count in (small, large):
            folder = Path(tmp) / f"images-{count}"
            folder.mkdir()
            for index in range(count):
                upload = uploads[index % len(uploads)]
                (folder / f"{index:04d}-{upload.name}").write_bytes(upload.data)
            cpu[count] = child_cpu_seconds(
                command(folder, Path(tmp) / f"out-{count}.csv"), timeout_s
            )
    return max(cpu[large] - cpu[small], 0.0) / (large - small)


def run_load(config: LoadConfig, uploads: Sequence[Upload]) -> LoadReport:
    """Run the load test and return its report; never raises for a failed request."""
    config.validate()
    if not uploads:
        raise ValueError("no files to upload")
    chromium = find_chromium(config.chromium)
    report = LoadReport(config.url, config.sessions, config.sessions * config.requests)
    start = time.monotonic()
    deadline = start + config.duration_s
    if config.server_pid:
        with _RssSampler(config.server_pid) as sampler:
            _run_in_own_loop(_run(config, list(uploads), chromium, report, deadline))
        report.server_peak_rss_mib = sampler.peak_kib / 1024.0 or None
    else:
        _run_in_own_loop(_run(config, list(uploads), chromium, report, deadline))
    if not report.wall_s:  # the concurrent phase never started (warm-up failed)
        report.wall_s = time.monotonic() - start
    if config.engine_floor and report.latencies_s:
        # After the browsers, so that it neither competes with nor is slowed by them.
        try:
            report.engine_cpu_per_image_s = marginal_cpu_per_image(uploads)
        except (RuntimeError, OSError) as error:
            report.errors.append(f"the engine floor (fracture predict) failed: {error}")
    return report


def _run_in_own_loop(coroutine: Any) -> None:
    # On a thread of its own: the caller's thread may already run an event loop
    # (a notebook, a sync Playwright session), where asyncio.run refuses to start.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, coroutine).result()


async def _run(
    config: LoadConfig, uploads: list[Upload], chromium: str, report: LoadReport, deadline: float
) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, args=list(CHROMIUM_ARGS)
        )
        try:
            if config.warmup:
                outcome = await _session(browser, config, [uploads[0]], deadline, "warm-up")
                if outcome.errors:
                    # A server that cannot answer one request will not answer many.
                    reason = f"not run, the warm-up request failed: {outcome.errors[0]}"
                    report.errors.extend([reason] * report.requests_planned)
                    return
                report.warmup_s = outcome.latencies_s[0]
            # The warm-up's image comes last in the rotation: the server answers an image it
            # has scored from its cache, so a repeat would measure the cache, not the network.
            plans = [
                [
                    uploads[(1 + s * config.requests + r) % len(uploads)]
                    for r in range(config.requests)
                ]
                for s in range(config.sessions)
            ]
            log_offset = _size(config.server_log)
            cpu_before = _server_cpu(config.server_pid)
            started = time.monotonic()
            outcomes = await asyncio.gather(
                *(
                    _session(browser, config, plan, deadline, f"session {index + 1}")
                    for index, plan in enumerate(plans)
                )
            )
            for outcome in outcomes:
                report.latencies_s.extend(outcome.latencies_s)
                report.errors.extend(outcome.errors)
                report.stopped_by_deadline |= outcome.stopped_by_deadline
            report.wall_s = time.monotonic() - started
            cpu_after = _server_cpu(config.server_pid)
            if cpu_before is not None and cpu_after is not None:
                report.server_cpu_s = cpu_after - cpu_before
            if config.server_log:
                report.batch_sizes = dict(_logged_batches(config.server_log, log_offset))
        finally:
            await browser.close()


@dataclass
class _Outcome:
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stopped_by_deadline: bool = False


async def _session(
    browser: Any, config: LoadConfig, plan: list[Upload], deadline: float, label: str
) -> _Outcome:
    """One browser context = one Streamlit session, uploading ``plan`` in turn."""
    outcome = _Outcome()
    context = await browser.new_context(viewport={"width": 1280, "height": 1600})
    try:
        page = await context.new_page()
        try:
            await page.goto(config.url, timeout=_timeout_ms(config, deadline))
            await page.locator(UPLOADER).wait_for(
                state="attached", timeout=_timeout_ms(config, deadline)
            )
        except Exception as error:  # noqa: BLE001 - any failure is a reported error, not a crash
            outcome.errors.extend(f"{label}: page did not load: {_reason(error)}" for _ in plan)
            return outcome
        for number, upload in enumerate(plan, start=1):
            if time.monotonic() >= deadline:
                outcome.stopped_by_deadline = True
                remaining = len(plan) - number + 1
                outcome.errors.extend(
                    f"{label}: not run, deadline reached" for _ in range(remaining)
                )
                break
            try:
                outcome.latencies_s.append(await _one_request(page, config, upload, deadline))
            except Exception as error:  # noqa: BLE001
                outcome.errors.append(
                    f"{label}, request {number} ({upload.name}): {_reason(error)}"
                )
    finally:
        await context.close()
    return outcome


async def _one_request(page: Any, config: LoadConfig, upload: Upload, deadline: float) -> float:
    """Replace the session's upload with ``upload``; seconds until its overlay is drawn."""
    timeout = _timeout_ms(config, deadline)
    delete = page.locator(DELETE_UPLOAD)
    for remaining in range(await delete.count(), 0, -1):
        await delete.first.click(timeout=timeout)
        await page.wait_for_function(
            "([selector, n]) => document.querySelectorAll(selector).length < n",
            arg=[DELETE_UPLOAD, remaining],
            timeout=timeout,
        )
    await page.locator(PROBABILITY).wait_for(state="detached", timeout=timeout)
    start = time.perf_counter()
    await page.locator(UPLOADER).set_input_files(
        [{"name": upload.name, "mimeType": upload.mime_type, "buffer": upload.data}],
        timeout=timeout,
    )
    # Done is the overlay on screen; an exception or error box ends the wait early.
    done = page.wait_for_function(OVERLAY_READY, timeout=timeout)
    failed = page.locator(f"{EXCEPTION}, {ERROR_BOX}").first.wait_for(timeout=timeout)
    finished, pending = await asyncio.wait(
        [asyncio.ensure_future(done), asyncio.ensure_future(failed)],
        return_when=asyncio.FIRST_COMPLETED,
    )
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    elapsed = time.perf_counter() - start
    problem = page.locator(f"{EXCEPTION}, {ERROR_BOX}")
    if await problem.count():
        raise RuntimeError(f"the page showed an error: {(await problem.first.inner_text())[:200]}")
    for task in finished:
        task.result()  # a timeout surfaces here
    return elapsed


def _server_cpu(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return tree_cpu_seconds(pid)
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess or AccessDenied: no figure
        return None


def _size(path: str | None) -> int:
    try:
        return Path(path).stat().st_size if path else 0
    except OSError:
        return 0


def _logged_batches(path: str, offset: int) -> dict[int, int]:
    """Batch sizes the server logged after ``offset`` bytes (this run's concurrent phase)."""
    from fracture.inference.batching import batch_sizes_in_log

    with open(path, "rb") as log:
        log.seek(offset)
        text = log.read().decode("utf-8", errors="replace")
    return dict(batch_sizes_in_log(text.splitlines()))


def _timeout_ms(config: LoadConfig, deadline: float) -> float:
    left = max(deadline - time.monotonic(), 0.001)
    return 1000.0 * min(config.request_timeout_s, left)


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]
