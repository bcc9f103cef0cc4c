"""Hostile and broken inputs through every layer: load_image, the Predictor batch and the CLI.

The catalogue lives in ``tests/hostile.py`` so that the dashboard's uploader
tests use the same table. Each kind must either decode correctly or be refused
with a specific message, never crash a batch, and never write anything
outside the test's temporary folder.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from fracture.config import PROJECT_ROOT
from fracture.inference.prediction import CSV_COLUMNS
from fracture.inference.predictor import Predictor
from fracture.io.images import InvalidImageError, load_image

from hostile import KINDS, PATIENT_NAME, HostileFile, build_hostile_files, radiograph

# Written by processes outside these tests (the training job, caches), or by
# pytest itself; everything else in the repository must stay as it was.
_IGNORED_DIRS = {".git", ".venv", "runs", "__pycache__", ".pytest_cache", ".hypothesis"}
# Kinds a folder walk does not pick up by itself (not an image suffix): passed explicitly.
_NOT_WALKED = {"zip_upload"}


def _tree(root: Path) -> set[str]:
    listing: set[str] = set()
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in _IGNORED_DIRS]
        listing.update(os.path.join(directory, name) for name in subdirs + files)
    return listing


@pytest.fixture(autouse=True)
def nothing_written_outside_tmp():
    """Snapshot the repository and the working directory; they must be unchanged after each test."""
    roots = {PROJECT_ROOT.resolve(), Path.cwd().resolve()}
    before = {root: _tree(root) for root in roots}
    yield
    for root in roots:
        after = _tree(root)
        assert after == before[root], (
            f"files appeared or vanished under {root}: {sorted(after ^ before[root])[:10]}"
        )


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> list[HostileFile]:
    return build_hostile_files(tmp_path_factory.mktemp("hostile") / "batch")


def test_catalogue_covers_the_required_kinds(catalogue: list[HostileFile]) -> None:
    kinds = {entry.kind for entry in catalogue}
    required = {
        "zero_byte",
        "truncated_jpeg",
        "png_bad_crc",
        "html_as_jpg",
        "one_pixel",
        "decompression_bomb_40000px",
        "png_16bit",
        "cmyk_jpeg",
        "rgba_png",
        "palette_gif",
        "animated_gif",
        "exif_rotated_jpeg",
        "float_tiff_nan",
        "dicom_monochrome1",
        "dicom_no_pixel_data",
        "dicom_compressed_no_decoder",
        "dicom_multiframe",
        "dotdot_name",
        "unicode_name",
        "zip_upload",
    }
    if os.name == "posix":
        required |= {"newline_name", "symlink_to_device"}
    assert required <= kinds, required - kinds
    assert len(catalogue) >= 20 and len(kinds) == len(catalogue)
    assert all(entry.expected_ok or entry.message for entry in catalogue)
    # The bomb is a header, not a gigabyte.
    bomb = next(e for e in catalogue if e.kind == "decompression_bomb_40000px")
    assert bomb.path.stat().st_size < 10_000


def _entry(catalogue: list[HostileFile], kind: str) -> HostileFile:
    for entry in catalogue:
        if entry.kind == kind:
            return entry
    pytest.skip(f"{kind} cannot be made on this platform")


def _printable(name: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in name)


def _assert_refused_well(message: str, entry: HostileFile, label: str) -> None:
    assert entry.message in message, (entry.kind, message)
    assert _printable(label) in message  # says which file
    assert "\n" not in message and "\r" not in message  # cannot forge log lines
    assert PATIENT_NAME not in message and "HOSTILE-0001" not in message


# --------------------------------------------------------------------------- (a) core API


@pytest.mark.parametrize("kind", KINDS)
def test_load_image_from_path(catalogue: list[HostileFile], kind: str) -> None:
    entry = _entry(catalogue, kind)
    if entry.expected_ok:
        rgb = load_image(entry.path)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert rgb.flags.c_contiguous
        if entry.check:
            entry.check(rgb)
    else:
        with pytest.raises(InvalidImageError) as info:
            load_image(entry.path)
        _assert_refused_well(str(info.value), entry, Path(entry.path).name)
        # Only the name, never the folder: messages reach people and reports.
        assert str(entry.path.parent.resolve()) not in str(info.value)


@pytest.mark.parametrize("kind", KINDS)
def test_load_image_from_upload_bytes(catalogue: list[HostileFile], kind: str) -> None:
    """What the dashboard does: the file's bytes and the name the browser claims."""
    entry = _entry(catalogue, kind)
    if not entry.path.is_file():  # a link to a device has no bytes to upload
        pytest.skip("not a regular file")
    data = entry.path.read_bytes()
    if entry.expected_ok:
        rgb = load_image(data, name=entry.upload_name)
        np.testing.assert_array_equal(rgb, load_image(entry.path))
    else:
        with pytest.raises(InvalidImageError) as info:
            load_image(data, name=entry.upload_name)
        _assert_refused_well(str(info.value), entry, entry.upload_name)


# --------------------------------------------------------------------------- (b) Predictor batch


def _check_results(results, entries: list[HostileFile], names: list[str]) -> None:
    assert [r.source for r in results] == names
    good_first, *middle, good_last = results
    assert good_first.ok and good_last.ok  # the batch survived every kind
    assert good_first.probability == pytest.approx(good_last.probability, abs=1e-6)
    for entry, result in zip(entries, middle):
        if entry.expected_ok:
            assert result.ok, (entry.kind, result.error)
            assert 0.0 <= result.probability <= 1.0 and result.label in ("fracture", "normal")
            assert result.error is None
        else:
            assert result.status == "error", entry.kind
            assert result.probability is None and result.label is None
            assert entry.message in result.error, (entry.kind, result.error)
            assert PATIENT_NAME not in result.error


def test_predictor_batch_of_paths_scores_every_good_file(
    catalogue: list[HostileFile], tiny_predictor: Predictor
) -> None:
    good = np.repeat(radiograph(10)[..., None], 3, axis=2)
    sources = [good, *[entry.path for entry in catalogue], good]
    names = ["good-first", *[str(entry.path) for entry in catalogue], "good-last"]
    results = tiny_predictor.predict(sources, names=names)
    _check_results(results, catalogue, names)


def test_predictor_batch_of_uploads_with_grad_cam(
    catalogue: list[HostileFile], tiny_predictor: Predictor
) -> None:
    uploads = [entry for entry in catalogue if entry.path.is_file()]
    good = np.repeat(radiograph(11)[..., None], 3, axis=2)
    sources = [good, *[entry.path.read_bytes() for entry in uploads], good]
    names = ["good-first", *[entry.upload_name for entry in uploads], "good-last"]
    results = tiny_predictor.predict(sources, names=names, with_cam=True)
    _check_results(results, uploads, names)
    for entry, result in zip(uploads, results[1:-1]):
        if entry.expected_ok:
            assert result.heatmap.shape == result.image.shape[:2]


# --------------------------------------------------------------------------- (c) command line


def test_cli_batch_writes_one_parseable_row_per_file(
    catalogue: list[HostileFile], tmp_path: Path, tiny_model_dir: Path, use_fake_weights: Path
) -> None:
    from fracture.cli.main import main

    folder = catalogue[0].path.parent
    explicit = [str(e.path) for e in catalogue if e.kind in _NOT_WALKED or ".." in e.path.parts]
    out = tmp_path / "results.csv"
    overlays = tmp_path / "overlays"
    code = main(
        [
            "predict",
            str(folder),
            *explicit,
            "--model",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--gradcam-dir",
            str(overlays),
            "--batch-size",
            "4",
        ]
    )
    assert code == 0
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and tuple(rows[0]) == CSV_COLUMNS
    by_path = {os.path.abspath(row["path"]): row for row in rows}
    assert len(by_path) == len(rows) == len(catalogue), "one row per file, no duplicates"
    for entry in catalogue:
        row = by_path[os.path.abspath(entry.path)]  # newline names survive the CSV round trip
        if entry.expected_ok:
            assert row["status"] == "ok" and row["error"] == "", (entry.kind, row)
            assert 0.0 <= float(row["probability"]) <= 1.0
        else:
            assert row["status"] == "error" and row["probability"] == "", entry.kind
            assert entry.message in row["error"], (entry.kind, row["error"])
    # Overlays: one per decoded file, all directly inside the requested folder.
    written = list(overlays.iterdir())
    assert len(written) == sum(entry.expected_ok for entry in catalogue)
    assert all(path.parent == overlays and path.is_file() for path in written)
