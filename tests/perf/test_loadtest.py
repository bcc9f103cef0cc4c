"""The load script's guards and arithmetic (the run against a real server is in test_browser.py)."""

from __future__ import annotations

import socket
import time

import pytest

from fracture.cli.main import main
from fracture.perf.loadtest import (
    MAX_SESSIONS,
    LoadConfig,
    LoadReport,
    Upload,
    check_local_url,
    generated_uploads,
    run_load,
)


@pytest.mark.parametrize(
    "url", ["http://localhost:8501", "http://127.0.0.1:9000/", "https://[::1]:8501"]
)
def test_local_urls_are_accepted(url):
    check_local_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com:8501",
        "http://10.0.0.5:8501",
        "ftp://localhost/",
        "localhost:8501",
        "http://localhost.example.com/",
    ],
)
def test_other_hosts_are_refused(url):
    with pytest.raises(ValueError, match="not a local server"):
        check_local_url(url)


@pytest.mark.parametrize(
    "field, value",
    [
        ("sessions", 0),
        ("sessions", MAX_SESSIONS + 1),
        ("requests", 0),
        ("duration_s", 0.0),
        ("duration_s", 10_000.0),
        ("request_timeout_s", -1.0),
    ],
)
def test_unbounded_runs_are_refused(field, value):
    config = LoadConfig(**{field: value})
    with pytest.raises(ValueError):
        config.validate()


def test_cli_refuses_a_remote_server_before_starting_a_browser(capsys):
    assert main(["load", "--url", "http://example.com:8501"]) == 2
    assert "not a local server" in capsys.readouterr().err


def test_report_percentiles_come_from_its_own_latencies():
    report = LoadReport(
        "http://localhost:1",
        sessions=2,
        requests_planned=5,
        latencies_s=[0.4, 0.1, 0.3, 0.2],
        errors=["boom"],
        wall_s=2.0,
    )
    figures = report.to_dict()
    assert figures["requests"] == 5 and figures["completed"] == 4 and figures["errors"] == 1
    # Linear interpolation over 100..400 ms: the median is 250 ms, p95 is 385 ms.
    assert figures["p50_ms"] == pytest.approx(250.0)
    assert figures["p95_ms"] == pytest.approx(385.0)
    assert figures["throughput_per_s"] == pytest.approx(2.0)
    assert "boom" in report.table()
    empty = LoadReport("http://localhost:1", sessions=1, requests_planned=1)
    assert empty.to_dict()["p50_ms"] is None


def test_the_report_counts_the_batches_the_server_logged(tmp_path):
    """Only the lines written during the run count; the histogram reaches the JSON and table."""
    from fracture.inference import batching
    from fracture.perf.loadtest import _logged_batches

    def line(size: int) -> str:
        message = batching._BATCH_LOG % ("fracture-inference", size, 120.0)
        return f"2026-12-02 01:00:00,000 INFO fracture.inference.batching: {message}\n"

    log = tmp_path / "server.log"
    log.write_text(line(5) + "Loading model…\n")  # before the run: the warm-up
    offset = log.stat().st_size
    with log.open("a") as handle:
        handle.write(line(1) + line(3) + "an unrelated warning\n" + line(1) + line(2))
    sizes = _logged_batches(str(log), offset)
    assert sizes == {1: 2, 3: 1, 2: 1}

    report = LoadReport("http://localhost:1", 3, 6, latencies_s=[0.5] * 7, batch_sizes=sizes)
    figures = report.to_dict()
    assert figures["batch_sizes"] == {"1": 2, "2": 1, "3": 1}
    assert figures["batches"] == 4 and figures["largest_batch"] == 3
    assert figures["mean_batch_size"] == pytest.approx(7 / 4)
    assert "2 of 1, 1 of 2, 1 of 3 (4 batches, 1.8 images per batch" in report.table()
    assert "--server-log" in LoadReport("http://localhost:1", 1, 1).table()
    silent = LoadReport("http://localhost:1", 1, 1, batch_sizes={})
    assert "none in the server log" in silent.table()
    with pytest.raises(ValueError, match="does not exist"):
        LoadConfig(server_log=str(tmp_path / "missing.log")).validate()


def test_generated_uploads_are_distinct_pngs():
    uploads = generated_uploads(3, size=64)
    assert [u.name for u in uploads] == ["phantom_000.png", "phantom_001.png", "phantom_002.png"]
    assert all(u.data.startswith(b"\x89PNG") and u.mime_type == "image/png" for u in uploads)
    assert len({u.data for u in uploads}) == 3
    assert Upload("x.dcm", b"").mime_type == "application/dicom"


def test_a_server_that_is_not_there_gives_errors_not_a_crash():
    pytest.importorskip("playwright.async_api")
    from fracture.perf.loadtest import find_chromium

    try:
        chromium = find_chromium()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = LoadConfig(
        url=f"http://127.0.0.1:{port}",
        sessions=2,
        requests=2,
        duration_s=60,
        request_timeout_s=10,
        chromium=chromium,
    )
    started = time.monotonic()
    report = run_load(config, generated_uploads(1, size=64))
    assert time.monotonic() - started < 60
    assert report.latencies_s == [] and report.requests == 4
    assert all("page did not load" in message for message in report.errors)


# --------------------------------------------------------------------------------------
# CPU seconds per upload, against a fake server and a fake `fracture predict`

_BURN = "import time\ndef burn(s):\n    t = time.process_time()\n    while time.process_time() - t < s: pass\n"

# A fake server: idle until told to go, then burns known CPU in itself (0.4 s), in a
# child that exits and is waited for (0.4 s), and in a child that stays alive (0.3 s).
_FAKE_SERVER = (
    _BURN
    + """
import subprocess, sys
sys.stdin.readline()
burn(0.4)
quick = [sys.executable, "-I", "-S", "-c", {burn!r} + "burn(0.4)"]
subprocess.run(quick, check=True)
live = subprocess.Popen(
    [sys.executable, "-I", "-S", "-c", {burn!r} + "burn(0.3); print('burnt', flush=True); time.sleep(60)"],
    stdout=subprocess.PIPE, text=True,
)
live.stdout.readline()
print("done", flush=True)
time.sleep(60)
"""
).replace("{burn!r}", repr(_BURN))


def test_the_server_cpu_counts_the_process_and_all_its_children():
    import subprocess
    import sys

    from fracture.perf.loadtest import tree_cpu_seconds

    server = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _FAKE_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)  # past its own start-up, now waiting for "go"
        before = tree_cpu_seconds(server.pid)
        server.stdin.write("go\n")
        server.stdin.flush()
        assert server.stdout.readline().strip() == "done"
        used = tree_cpu_seconds(server.pid) - before
    finally:
        for child in __import__("psutil").Process(server.pid).children(recursive=True):
            child.kill()
        server.kill()
        server.wait()
    # 1.1 s burnt; the two children's own interpreter start-up adds a little. /proc
    # reports user and system time in whole clock ticks (10 ms), truncated, so each of
    # the three processes can read up to 20 ms short (seen: 1.08 on a busy machine).
    # Missing either child would read 0.8 or less.
    assert 1.1 - 3 * 0.02 <= used <= 1.5, used


def test_the_engine_floor_is_the_marginal_cost_per_image():
    import sys

    from fracture.perf.loadtest import marginal_cpu_per_image

    def fake_predict(folder, out):
        # 0.3 s of start-up whatever the size, then 0.05 s per image.
        code = _BURN + f"import os\nburn(0.3 + 0.05 * len(os.listdir({str(folder)!r})))\n"
        return [sys.executable, "-I", "-S", "-c", code]

    uploads = generated_uploads(2, size=32)
    per_image = marginal_cpu_per_image(uploads, small=2, large=10, command=fake_predict)
    assert per_image == pytest.approx(0.05, abs=0.015)


def test_a_failing_engine_run_says_why():
    import sys

    from fracture.perf.loadtest import marginal_cpu_per_image

    def broken(folder, out):
        return [sys.executable, "-c", "import sys; sys.exit('no model here')"]

    with pytest.raises(RuntimeError, match="no model here"):
        marginal_cpu_per_image(generated_uploads(1, size=32), small=1, large=2, command=broken)


def test_the_report_sets_server_cpu_per_upload_against_the_engine():
    report = LoadReport("http://localhost:8501", 2, 4, latencies_s=[1.0] * 4)
    assert report.server_cpu_per_upload_s is None and report.cpu_ratio is None
    report.server_cpu_s = 2.0
    report.engine_cpu_per_image_s = 0.1
    figures = report.to_dict()
    assert figures["server_cpu_per_upload_s"] == pytest.approx(0.5)
    assert figures["server_cpu_over_engine"] == pytest.approx(5.0)
    table = report.table()
    assert "0.500 CPU s" in table and "5.0 ×" in table
