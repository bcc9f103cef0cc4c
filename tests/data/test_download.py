"""``fracture data download fracatlas`` against a local HTTP server serving a small archive
in FracAtlas's published layout (no network needed)."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from fracture.data.download import DownloadError, download_fracatlas
from fracture.data.provenance import describe_dataset

from conftest import radiograph_like

COUNTS = {"fractured": 4, "normal": 6}


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(radiograph_like(seed)).save(buffer, format="JPEG")
    return buffer.getvalue()


def fracatlas_zip(layout_ok: bool = True) -> bytes:
    """A ZIP shaped like the published one: images/{Fractured,Non_fractured}, CSV, COCO."""
    buffer = io.BytesIO()
    rows = ["image_id,hand,leg,hip,shoulder,mixed,hardware,multiscan,fractured"]
    images, annotations = [], []
    with zipfile.ZipFile(buffer, "w") as archive:
        if not layout_ok:
            archive.writestr("Dataset/readme.txt", "not FracAtlas")
            archive.writestr("Dataset/pictures/a.jpg", _jpeg(0))
            rows, images = [], []  # nothing more: no images/ folder, no dataset.csv
        index = 0
        classes = (("Fractured", 1, COUNTS["fractured"]), ("Non_fractured", 0, COUNTS["normal"]))
        for folder, label, n in classes if layout_ok else ():
            for _ in range(n):
                index += 1
                name = f"IMG{index:07d}.jpg"
                archive.writestr(f"FracAtlas/images/{folder}/{name}", _jpeg(index))
                rows.append(f"{name},1,0,0,0,0,{int(index == 1)},0,{label}")
                images.append({"id": index, "file_name": name, "width": 80, "height": 96})
                if label:
                    annotations.append({"image_id": index, "bbox": [10, 20, 30, 40]})
        if layout_ok:
            archive.writestr("FracAtlas/dataset.csv", "\n".join(rows) + "\n")
            archive.writestr(
                "FracAtlas/Annotations/COCO JSON/COCO_fracture_masks.json",
                json.dumps({"images": images, "annotations": annotations}),
            )
    return buffer.getvalue()


class Publisher:
    """A figshare-like API and file server on localhost, with faults on request."""

    def __init__(self, archive: bytes, md5: str | None = None):
        self.archive = archive
        self.md5 = md5 if md5 is not None else hashlib.md5(archive).hexdigest()
        self.cut_after: int | None = None  # serve only this many bytes, once
        self.ranges: list[str | None] = []
        publisher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                if self.path == "/api":
                    body = json.dumps(
                        {
                            "files": [
                                {
                                    "name": "FracAtlas.zip",
                                    "size": len(publisher.archive),
                                    "download_url": f"{publisher.base}/file",
                                    "computed_md5": publisher.md5,
                                }
                            ]
                        }
                    ).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data = publisher.archive
                wanted = self.headers.get("Range")
                publisher.ranges.append(wanted)
                start = int(wanted.split("=")[1].rstrip("-")) if wanted else 0
                self.send_response(206 if wanted else 200)
                if wanted:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                chunk = data[start:]
                if publisher.cut_after is not None:
                    chunk, publisher.cut_after = chunk[: publisher.cut_after], None
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.api = f"{self.base}/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def publisher():
    server = Publisher(fracatlas_zip())
    yield server
    server.close()


def _download(dest: Path, api: str, **kwargs):
    return download_fracatlas(dest, api_url=api, expected_counts=COUNTS, val_fraction=0.3, **kwargs)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_download_imports_the_published_layout_with_manifest_and_boxes(publisher, tmp_path):
    seen = []
    dataset = _download(
        tmp_path / "fracatlas",
        publisher.api,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert sum(c["total"] for c in dataset.summary().values()) == 10
    assert (tmp_path / "fracatlas" / "manifest.csv").is_file()
    boxes = (tmp_path / "fracatlas" / "boxes.csv").read_text().splitlines()
    assert len(boxes) == 1 + COUNTS["fractured"]
    assert seen[-1] == (len(publisher.archive), len(publisher.archive))
    described = describe_dataset(dataset)
    assert described["name"] == "FracAtlas" and described["licence"] == "CC BY 4.0"
    assert _leftovers(tmp_path) == ["fracatlas"]  # no archive or staging left behind


def test_a_checksum_mismatch_is_refused_and_nothing_is_imported(tmp_path):
    server = Publisher(fracatlas_zip(), md5="0" * 32)
    try:
        with pytest.raises(DownloadError, match="Checksum mismatch"):
            _download(tmp_path / "fracatlas", server.api)
    finally:
        server.close()
    assert not (tmp_path / "fracatlas").exists()
    # The corrupt file is gone, so the next run starts afresh instead of resuming it.
    assert not list(tmp_path.rglob("*.part"))


def test_an_interrupted_transfer_resumes_where_it_stopped(publisher, tmp_path):
    cut = len(publisher.archive) // 3
    publisher.cut_after = cut
    with pytest.raises(DownloadError, match="resume"):
        _download(tmp_path / "fracatlas", publisher.api)
    assert not (tmp_path / "fracatlas").exists()  # never a half-imported dataset
    (part,) = tmp_path.rglob("*.part")
    assert part.stat().st_size == cut
    dataset = _download(tmp_path / "fracatlas", publisher.api)
    assert publisher.ranges == [None, f"bytes={cut}-"]
    assert sum(c["total"] for c in dataset.summary().values()) == 10
    assert _leftovers(tmp_path) == ["fracatlas"]


def test_an_unexpected_layout_is_refused_and_leaves_no_dataset(tmp_path):
    server = Publisher(fracatlas_zip(layout_ok=False))
    try:
        with pytest.raises(DownloadError, match="published layout"):
            _download(tmp_path / "fracatlas", server.api)
    finally:
        server.close()
    assert not (tmp_path / "fracatlas").exists()
    assert not any(p.name.endswith(".importing") for p in tmp_path.iterdir())


def test_wrong_image_counts_are_refused(publisher, tmp_path):
    with pytest.raises(DownloadError, match="not the published FracAtlas"):
        download_fracatlas(
            tmp_path / "fracatlas",
            api_url=publisher.api,
            expected_counts={"fractured": 717, "normal": 3366},
        )
    assert not (tmp_path / "fracatlas").exists()


def test_no_network_says_so_and_names_the_manual_route(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with pytest.raises(DownloadError) as caught:
        _download(tmp_path / "fracatlas", f"http://127.0.0.1:{closed}/api")
    message = str(caught.value)
    assert "no network" in message and "data import fracatlas" in message
    assert _leftovers(tmp_path) == []


def test_an_existing_dataset_is_never_overwritten(publisher, tmp_path):
    (tmp_path / "fracatlas").mkdir()
    (tmp_path / "fracatlas" / "mine.txt").write_text("keep")
    with pytest.raises(DownloadError, match="not empty"):
        _download(tmp_path / "fracatlas", publisher.api)
    assert (tmp_path / "fracatlas" / "mine.txt").read_text() == "keep"


def test_the_cli_reports_a_missing_network_plainly(tmp_path, monkeypatch, capsys):
    from fracture.cli.main import main

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("FRACTURE_FRACATLAS_API", f"http://127.0.0.1:{closed}/api")
    assert main(["data", "download", "fracatlas", str(tmp_path / "fa")]) == 2
    assert "Manual route" in capsys.readouterr().err
