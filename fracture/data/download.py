"""Fetch FracAtlas from its publisher and import it, in one step that is safe to interrupt.

FracAtlas (Abedeen et al., "FracAtlas: A Dataset for Fracture Classification,
Localization and Segmentation of Musculoskeletal Radiographs", Scientific Data
10, 521 (2023), doi:10.1038/s41597-023-02432-4; licence CC BY 4.0) is published
on figshare (doi:10.6084/m9.figshare.22363012) as one ZIP archive.

What :func:`download_fracatlas` guarantees:

- It asks the figshare API which file to fetch, and its size and MD5 where
  the API reports them; the archive is checked against both.
- The archive is fetched over HTTPS into a ``.part`` file beside the
  destination; an interrupted transfer resumes from where it stopped (HTTP
  ``Range``) the next time it is run.
- After unpacking, the image counts are checked against the published ones
  (and the hashes of any pinned images).
- The import (:func:`fracture.data.datasets.import_fracatlas`) writes into a
  staging folder renamed into place at the very end: the destination is
  either absent or a complete dataset, never half of one.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from fracture.errors import FractureError

if TYPE_CHECKING:
    from fracture.data.records import Dataset

__all__ = [
    "DOWNLOAD_API_ENV",
    "FIGSHARE_DOI",
    "FRACATLAS_API_URL",
    "PUBLISHED_COUNTS",
    "DownloadError",
    "RemoteFile",
    "download_fracatlas",
    "manual_route",
]

log = logging.getLogger(__name__)

FIGSHARE_DOI = "10.6084/m9.figshare.22363012"
FRACATLAS_API_URL = "https://api.figshare.com/v2/articles/22363012"
# Another API address (a mirror, or a local server in tests) without changing code.
DOWNLOAD_API_ENV = "FRACTURE_FRACATLAS_API"
ARCHIVE_SUFFIX = ".zip"
# The published archive: 4,083 radiographs, 717 of them fractured (Abedeen et al. 2023).
PUBLISHED_COUNTS: Mapping[str, int] = {"fractured": 717, "normal": 3366}
# Images whose content is pinned: relative path in the archive's images/ -> SHA-256.
# Empty until someone with the published archive records them; the count check
# and the publisher's checksum stand in meanwhile.
PINNED_IMAGE_SHA256: Mapping[str, str] = {}
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0
_CLASS_FOLDERS = {"fractured": "Fractured", "normal": "Non_fractured"}

ProgressCallback = Callable[[int, int | None], None]


class DownloadError(FractureError, RuntimeError):
    """The dataset could not be fetched or imported; the message says why and what to do."""


@dataclass(frozen=True)
class RemoteFile:
    """The archive as the publisher's API describes it."""

    name: str
    url: str
    size: int | None
    md5: str | None


def manual_route(dest: Path) -> str:
    """How to get the data by hand when this module cannot."""
    return (
        f"Manual route: download the archive from https://doi.org/{FIGSHARE_DOI} in a "
        f"browser, unzip it, then run `python -m fracture data import fracatlas "
        f"<unzipped FracAtlas folder> {dest}`."
    )


def _open(url: str, headers: Mapping[str, str] | None = None, timeout: float = TIMEOUT_S) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": "fracture", **(headers or {})})
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - https or a test URL


def _unreachable(url: str, error: BaseException, dest: Path) -> DownloadError:
    return DownloadError(
        f"Could not reach {url}: {error}. This machine may have no network access. "
        + manual_route(dest)
    )


def remote_archive(api_url: str, dest: Path) -> RemoteFile:
    """Ask the figshare API for the archive's address, size and MD5."""
    try:
        with _open(api_url) as response:
            article = json.loads(response.read().decode("utf-8"))
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        raise _unreachable(api_url, error, dest) from None
    except ValueError as error:
        raise DownloadError(f"{api_url} did not answer with JSON: {error}") from None
    files = [
        f
        for f in article.get("files") or []
        if str(f.get("name", "")).lower().endswith(ARCHIVE_SUFFIX)
    ]
    if not files:
        raise DownloadError(
            f"The publisher lists no ZIP archive at {api_url}. " + manual_route(dest)
        )
    chosen = max(files, key=lambda f: int(f.get("size") or 0))
    md5 = chosen.get("computed_md5") or chosen.get("supplied_md5") or None
    size = chosen.get("size")
    return RemoteFile(
        name=str(chosen["name"]),
        url=str(chosen["download_url"]),
        size=int(size) if size else None,
        md5=str(md5).lower() if md5 else None,
    )


def _fetch(remote: RemoteFile, part: Path, progress: ProgressCallback | None, dest: Path) -> None:
    """Fetch ``remote`` into ``part``, resuming from what ``part`` already holds."""
    have = part.stat().st_size if part.exists() else 0
    if remote.size is not None and have > remote.size:
        part.unlink()  # longer than the file: not a prefix of it
        have = 0
    if remote.size is not None and have == remote.size:
        return
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with _open(remote.url, headers) as response:
            status = getattr(response, "status", 200)
            if have and status != 206:
                log.info("The server ignored the resume request; fetching from the start")
                have = 0
            length = response.headers.get("Content-Length")
            total = remote.size or (have + int(length) if length else None)
            with open(part, "ab" if have else "wb") as handle:
                done = have
                if progress:
                    progress(done, total)
                while chunk := response.read(CHUNK_BYTES):
                    handle.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as error:
        # A connection cut mid-body is http.client.IncompleteRead (an HTTPException).
        raise DownloadError(
            f"The transfer of {remote.name} stopped ({type(error).__name__}). {_kept(part)}"
        ) from None
    got = part.stat().st_size
    if remote.size is not None and got < remote.size:
        raise DownloadError(
            f"The transfer of {remote.name} stopped at {got:,} of {remote.size:,} bytes. "
            + _kept(part)
        )


def _kept(part: Path) -> str:
    return (
        f"What arrived is kept in {part}; run the download again to resume from there "
        f"(delete that file to start over)."
    )


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_archive(remote: RemoteFile, archive: Path) -> None:
    size = archive.stat().st_size
    if remote.size is not None and size != remote.size:
        archive.unlink()
        raise DownloadError(
            f"{remote.name} has {size:,} bytes where the publisher reports "
            f"{remote.size:,}; the file was deleted, run the download again."
        )
    if remote.md5 is None:
        log.warning(
            "The publisher reports no checksum for %s: only its size was checked", remote.name
        )
        return
    actual = _md5(archive)
    if actual != remote.md5:
        archive.unlink()
        raise DownloadError(
            f"Checksum mismatch for {remote.name}: MD5 {actual}, the publisher reports "
            f"{remote.md5}. The file is corrupt or not the published one; it was deleted, run "
            f"the download again."
        )


def _safe_extract(archive: Path, target: Path) -> None:
    """Unzip ``archive`` into ``target``, refusing members that would land outside it."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.infolist():
                parts = PurePosixPath(member.filename.replace("\\", "/")).parts
                if member.filename.startswith("/") or ".." in parts:
                    raise DownloadError(f"{archive.name} holds an unsafe path: {member.filename}")
            bundle.extractall(target)
    except zipfile.BadZipFile as error:
        archive.unlink(missing_ok=True)
        raise DownloadError(
            f"{archive.name} is not a readable ZIP archive ({error}); it was "
            f"deleted, run the download again."
        ) from None


def _find_root(unpacked: Path) -> Path:
    """The folder of the published layout (``images/`` beside ``dataset.csv``)."""
    candidates = [unpacked, *sorted(p for p in unpacked.rglob("*") if p.is_dir())]
    for folder in candidates:
        if (folder / "images").is_dir() and (folder / "dataset.csv").is_file():
            return folder
    found = sorted(str(p.relative_to(unpacked)) for p in unpacked.iterdir())[:10]
    raise DownloadError(
        "The archive is not in FracAtlas's published layout (a folder holding images/"
        "Fractured, images/Non_fractured and dataset.csv); its top level holds: "
        + (", ".join(found) or "nothing")
    )


def _verify_contents(
    root: Path, expected: Mapping[str, int] | None, pinned: Mapping[str, str]
) -> None:
    if expected:
        for name, folder in _CLASS_FOLDERS.items():
            directory = root / "images" / folder
            count = sum(1 for p in directory.iterdir() if p.is_file()) if directory.is_dir() else 0
            if count != expected[name]:
                raise DownloadError(
                    f"images/{folder} holds {count:,} images where the published dataset has "
                    f"{expected[name]:,}: the archive is not the published FracAtlas."
                )
    for rel, sha256 in pinned.items():
        path = root / "images" / rel
        actual = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
        if actual != sha256:
            raise DownloadError(f"images/{rel} differs from the published image ({actual}).")


def download_fracatlas(
    dest: str | os.PathLike[str],
    *,
    api_url: str | None = None,
    progress: ProgressCallback | None = None,
    expected_counts: Mapping[str, int] | None = PUBLISHED_COUNTS,
    pinned_sha256: Mapping[str, str] = PINNED_IMAGE_SHA256,
    val_fraction: float = 0.15,
    seed: int = 0,
) -> "Dataset":
    """Download FracAtlas and import it into ``dest`` in the ``folders`` layout.

    ``dest`` must not exist yet (or be empty). The transfer's leftovers live in
    ``.<dest name>.download`` beside it until the import succeeds; run again
    after an interruption to resume. ``progress(done_bytes, total_bytes)`` is
    called as the archive arrives. Raises :class:`DownloadError` with a
    message for a person.
    """
    from fracture.data.fracatlas import import_fracatlas
    from fracture.data.records import DatasetLayoutError

    dest = Path(dest).expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DownloadError(f"{dest} already exists and is not empty; choose a new folder.")
    api_url = api_url or os.environ.get(DOWNLOAD_API_ENV) or FRACATLAS_API_URL
    work = dest.parent / f".{dest.name}.download"
    staging = dest.parent / f".{dest.name}.importing"
    remote = remote_archive(api_url, dest)
    work.mkdir(parents=True, exist_ok=True)
    part = work / (remote.name + ".part")
    _fetch(remote, part, progress, dest)
    _verify_archive(remote, part)
    unpacked = work / "unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _safe_extract(part, unpacked)
        root = _find_root(unpacked)
        _verify_contents(root, expected_counts, pinned_sha256)
        try:
            import_fracatlas(root, staging, val_fraction=val_fraction, seed=seed)
        except (DatasetLayoutError, ValueError) as error:
            raise DownloadError(f"The archive could not be imported: {error}") from None
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.rename(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(unpacked, ignore_errors=True)
    # The import hard-linked or copied every image: the archive is no longer needed.
    shutil.rmtree(work, ignore_errors=True)
    from fracture.data.layouts import load_dataset

    log.info("FracAtlas downloaded and imported into %s", dest)
    return load_dataset(dest, val_fraction=val_fraction, seed=seed)
