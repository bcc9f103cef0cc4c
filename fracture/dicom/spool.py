"""The node's folder on disk: received instances, scored results, and what is delivered.

Everything the node must not lose lives here, written atomically (a temporary
name, then a rename), so a kill at any moment leaves either the old state or
the new one:

``incoming/<study key>/<instance key>.dcm``
    Instances received and acknowledged, not yet scored.
``results/<round>/``
    One scoring round of a study: ``summary.json``, the Structured Report
    ``sr.dcm`` and one Secondary Capture ``sc-NNNN.dcm`` per image. The round
    folder appears in one rename, the commit point: before it nothing counts
    as scored, after it the round's instances leave ``incoming``.
``results/<round>/delivered-<destination>``
    Marker written once a destination has acknowledged every object of the round.
``failed/<study key>/``
    A study that could not be scored after the node's bounded tries: its instances,
    untouched, and ``failure.json`` with the reason in plain words. Nothing received
    is ever deleted; :func:`retry_failed` (the Inbox's "retry" button) moves the
    instances back to ``incoming`` for another round of tries.

Keys are hashes of the UIDs, so no folder name identifies a patient. The
summary holds the patient's name and ID for the dashboard's Inbox; logs never do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from fracture.dicom.results import study_key
from fracture.io.files import atomic_write_bytes, atomic_write_json

__all__ = [
    "FAILURE_FILE",
    "SUMMARY_FILE",
    "PendingStudy",
    "Spool",
    "read_failures",
    "read_summaries",
    "retry_failed",
]

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
FAILURE_FILE = "failure.json"
_TEMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class PendingStudy:
    """A study with instances waiting to be scored."""

    key: str
    files: tuple[Path, ...]
    last_arrival: float  # time.time() of the newest instance


def _instance_key(sop_instance_uid: str) -> str:
    return hashlib.sha256(sop_instance_uid.encode("utf-8")).hexdigest()[:24]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:80]


class Spool:
    """Durable state of one DICOM node; safe to use from several threads."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.results = self.root / "results"
        self.failed = self.root / "failed"
        for folder in (self.incoming, self.results, self.failed):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._arrivals: dict[str, float] = {}
        # Instance keys already scored, per study: a resent image is acknowledged, not rescored.
        self._scored: dict[str, set[str]] = {}
        self._recover()

    # ------------------------------------------------------------------ receiving

    def receive(self, study_uid: str, sop_instance_uid: str, encoded: bytes) -> bool:
        """Keep one received instance on disk; False when it was already scored or waiting."""
        key, instance = study_key(study_uid), _instance_key(sop_instance_uid)
        path = self.incoming / key / f"{instance}.dcm"
        with self._lock:
            if instance in self._scored.get(key, ()) or path.exists():
                self._arrivals[key] = time.time()
                return False
        atomic_write_bytes(path, encoded)
        with self._lock:
            self._arrivals[key] = time.time()
        return True

    def pending(self) -> list[PendingStudy]:
        """Studies with unscored instances, oldest arrival first."""
        studies = []
        with self._lock:
            arrivals = dict(self._arrivals)
        for folder in sorted(self.incoming.iterdir()):
            if not folder.is_dir():
                continue
            files = tuple(sorted(p for p in folder.glob("*.dcm") if not p.name.startswith(".")))
            if not files:
                continue
            last = arrivals.get(folder.name) or max(p.stat().st_mtime for p in files)
            studies.append(PendingStudy(folder.name, files, last))
        return sorted(studies, key=lambda study: study.last_arrival)

    def drop(self, files: tuple[Path, ...]) -> None:
        """Forget instances already scored in a committed round (duplicates after a restart)."""
        for path in files:
            path.unlink(missing_ok=True)

    def fail(self, study: PendingStudy, record: dict[str, Any]) -> Path:
        """Move a study that keeps failing out of the way, into ``failed/``, with ``record``.

        The instances move, never get deleted; ``record`` (the reason in plain words,
        the tries, and what the Inbox shows) goes beside them in :data:`FAILURE_FILE`.
        """
        target = self.failed / study.key
        target.mkdir(parents=True, exist_ok=True)
        for path in study.files:
            if path.exists():
                os.replace(path, target / path.name)
        atomic_write_json(target / FAILURE_FILE, {**record, "study_key": study.key})
        try:
            (self.incoming / study.key).rmdir()
        except OSError:
            pass  # more instances arrived meanwhile: they make the next round
        return target

    # ------------------------------------------------------------------ committing results

    def commit(
        self,
        study: PendingStudy,
        objects: list[tuple[str, Dataset]],
        summary: dict[str, Any],
    ) -> Path:
        """Store one scored round (``objects`` are (file name, data set)) and clear its inputs."""
        instances = sorted(path.stem for path in study.files)
        digest = hashlib.sha256("".join(instances).encode()).hexdigest()[:12]
        final = self.results / f"{study.key}-{digest}"
        if final.exists():  # scored before a crash that left the inputs behind
            self._clear_inputs(study, instances)
            return final
        staging = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=self.results))
        try:
            for name, dataset in objects:
                dataset.save_as(staging / name, enforce_file_format=True)
            summary = {**summary, "study_key": study.key, "instances": instances}
            (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
            for path in staging.iterdir():
                with path.open("rb") as stream:
                    os.fsync(stream.fileno())
            os.replace(staging, final)  # the commit point
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._clear_inputs(study, instances)
        return final

    def _clear_inputs(self, study: PendingStudy, instances: list[str]) -> None:
        with self._lock:
            self._scored.setdefault(study.key, set()).update(instances)
        for path in study.files:
            path.unlink(missing_ok=True)
        try:
            (self.incoming / study.key).rmdir()
        except OSError:
            pass  # more instances arrived meanwhile: they make the next round

    # ------------------------------------------------------------------ delivery

    def undelivered(self, destination: str) -> list[Path]:
        """Committed rounds not yet acknowledged by ``destination``, oldest first."""
        marker = f"delivered-{_safe_name(destination)}"
        rounds = [r for r in self.rounds() if not (r / marker).exists()]
        return sorted(rounds, key=lambda r: (r / SUMMARY_FILE).stat().st_mtime)

    def mark_delivered(self, round_dir: Path, destination: str) -> None:
        atomic_write_bytes(round_dir / f"delivered-{_safe_name(destination)}", b"")

    def rounds(self) -> Iterator[Path]:
        for folder in self.results.iterdir():
            if (
                folder.is_dir()
                and not folder.name.startswith(".")
                and (folder / SUMMARY_FILE).is_file()
            ):
                yield folder

    # ------------------------------------------------------------------ start-up

    def _recover(self) -> None:
        """Rebuild the scored index and remove what a crash left half written."""
        for folder in self.results.iterdir():
            if folder.name.startswith(_TEMP_PREFIX):
                shutil.rmtree(folder, ignore_errors=True)
        for path in self.incoming.rglob(".*.tmp"):  # atomic_write_bytes's temporary names
            path.unlink(missing_ok=True)
        for summary in read_summaries(self.root):
            self._scored.setdefault(summary["study_key"], set()).update(summary["instances"])
        cleared = 0
        for study in self.pending():
            done = [p for p in study.files if p.stem in self._scored.get(study.key, ())]
            self.drop(tuple(done))
            cleared += len(done)
            # A study cut short by the restart gets a full quiet period from now,
            # so the sender's retry of the rest joins it instead of a second round.
            self._arrivals[study.key] = time.time()
        if cleared:
            log.info("cleared %d received instances that were scored before a restart", cleared)


def read_summaries(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The summaries of every scored round under a spool folder, each with its ``folder``."""
    results = Path(root) / "results"
    summaries: list[dict[str, Any]] = []
    if not results.is_dir():
        return summaries
    for folder in results.iterdir():
        path = folder / SUMMARY_FILE
        if folder.name.startswith(".") or not path.is_file():
            continue
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("unreadable result summary in %s", folder.name)
            continue
        summary["folder"] = str(folder)
        summaries.append(summary)
    return summaries


def read_failures(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The studies under a spool folder that failed their bounded tries, each with its ``folder``."""
    failed = Path(root) / "failed"
    records: list[dict[str, Any]] = []
    if not failed.is_dir():
        return records
    for folder in sorted(failed.iterdir()):
        path = folder / FAILURE_FILE
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = {"reason": "the failure record could not be read"}
        record["folder"] = str(folder)
        record["study_key"] = folder.name
        record["instances"] = len(list(folder.glob("*.dcm")))
        records.append(record)
    return records


def retry_failed(root: str | os.PathLike[str], key: str) -> int:
    """Move a failed study's instances back to ``incoming`` for the node to try again.

    Returns how many instances moved. The failure record stays until the move is
    done, so an interrupted retry leaves the study listed as failed, never lost.
    """
    root = Path(root)
    folder = root / "failed" / key
    if not re.fullmatch(r"[0-9a-f]{16}", key) or not folder.is_dir():
        raise FileNotFoundError(f"no failed study with the reference {key!r}")
    target = root / "incoming" / key
    target.mkdir(parents=True, exist_ok=True)
    moved = 0
    now = time.time()
    for path in sorted(folder.glob("*.dcm")):
        os.replace(path, target / path.name)
        os.utime(target / path.name, (now, now))  # a fresh quiet period before scoring
        moved += 1
    (folder / FAILURE_FILE).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass
    return moved
