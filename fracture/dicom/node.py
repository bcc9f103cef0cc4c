"""A DICOM node: a C-STORE service that scores radiograph studies and sends results back.

A PACS (or a modality) sends each study's images by C-STORE. The node keeps
every accepted instance on disk before acknowledging it (:class:`Spool`), waits
until the study has been quiet for ``quiet_seconds``, scores all its images
once with the one loaded :class:`Predictor`, and writes a Secondary Capture per
image and a Structured Report per study (:mod:`fracture.dicom.results`).
Results go by C-STORE to the ``forward`` node and/or into the ``store``
folder; a failed send is retried every ``retry_seconds`` until it succeeds.

A study that fails to score or to build its results is tried again with
back-off, at most ``score_attempts`` times; then its instances move to the
spool's ``failed/`` area with the reason in plain words (the Inbox shows it and
offers a retry). The node never spins on a study, and nothing received is
deleted. Missing type 2 and 3 attributes (PatientBirthDate, AccessionNumber and
the like, which anonymised files often lack) never stop scoring: the results
copy them empty, as DICOM allows (:func:`fracture.dicom.results.complete_header`).

Three threads do the work: pynetdicom's association threads receive, one
scorer thread scores, one sender thread delivers. Refusals use the statuses
of PS3.4 Annex B: an unknown calling AE title is rejected at association, a
data set that is not a radiograph, lacks pixel data or cannot be decoded gets
a failure status with an explanation in Error Comment, and a disk failure gets
"out of resources". Logs name studies by a hash, never by patient attributes.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from fracture.dicom.scoring import SR_FILE, ScoredStudy, score_instances, summary_images
from fracture.dicom.spool import PendingStudy, Spool
from fracture.inference.predictor import Predictor
from fracture.io.files import atomic_write_json
from fracture.io.images import InvalidImageError, load_image

__all__ = [
    "ACCEPTED_TRANSFER_SYNTAXES",
    "StudyFailure",
    "failure_reason",
    "RADIOGRAPH_MODALITIES",
    "Destination",
    "DicomNode",
    "NodeConfig",
    "send_files",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- parameters

# Projection radiography: digital (DX), computed (CR), the vendor alias DR,
# and RG (radiographic imaging, e.g. film digitised). CT, MR and the rest are refused.
RADIOGRAPH_MODALITIES = frozenset({"DX", "CR", "DR", "RG"})
# Every syntax :func:`load_image` decodes, so a PACS never has to transcode.
ACCEPTED_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
# C-STORE statuses (PS3.4 B.2.3); pynetdicom reserves 0xC210-0xC21F for itself.
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DOES_NOT_MATCH = 0xA900  # data set does not match the SOP class
STATUS_CANNOT_UNDERSTAND = 0xC000
HEALTH_FILE = "health.json"
HEALTH_EVERY_S = 5.0


@dataclass(frozen=True)
class Destination:
    """A DICOM peer: AE title, host and port, written ``AET@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        match = re.fullmatch(r"([^@]{1,16})@([^:@]+|\[[0-9a-fA-F:]+\]):(\d{1,5})", text.strip())
        if not match or not 0 < int(match.group(3)) < 65536:
            raise ValueError(f"{text!r} is not AET@HOST:PORT, e.g. ORTHANC@pacs.local:4242")
        return cls(match.group(1), match.group(2).strip("[]"), int(match.group(3)))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class NodeConfig:
    """What a node listens on, whom it accepts, and where its results go."""

    spool: Path
    ae_title: str = "FRACTURE"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_callers: frozenset[str] | None = None  # None accepts any calling AE title
    forward: Destination | None = None
    store: Path | None = None
    quiet_seconds: float = 10.0
    retry_seconds: float = 30.0
    modalities: frozenset[str] = RADIOGRAPH_MODALITIES
    timeout_s: float = 30.0
    # A study that fails to score is tried this many times in all, waiting
    # score_backoff_seconds, then twice that, and so on, before it moves to failed/.
    score_attempts: int = 3
    score_backoff_seconds: float = 10.0

    def destinations(self) -> list[str]:
        names = [f"forward-{self.forward}"] if self.forward else []
        return names + (["store"] if self.store else [])


@dataclass
class _Counters:
    received: int = 0
    duplicates: int = 0
    refused: int = 0
    scored_studies: int = 0
    scored_images: int = 0
    failed_images: int = 0
    failed_studies: int = 0
    scoring_failures: int = 0
    delivered_rounds: int = 0
    failed_deliveries: int = 0
    last_error: str | None = None


class DicomNode:
    """A C-STORE service around one loaded :class:`Predictor`. Start, then stop once."""

    def __init__(self, config: NodeConfig, predictor: Predictor) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.presentation import AllStoragePresentationContexts
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        self.config = config
        self.predictor = predictor
        self.spool = Spool(config.spool)
        self.counters = _Counters()
        self._stop = threading.Event()
        self._wake_sender = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: Any = None
        self._started = time.time()
        self._retry_at: dict[str, float] = {}
        # Per pending study key: failed tries so far, and when the next one may start.
        self._score_failures: dict[str, tuple[int, float]] = {}
        ae = AE(ae_title=config.ae_title)
        ae.maximum_pdu_size = 0  # no limit: large radiographs arrive in fewer PDUs
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = config.timeout_s
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(str(context.abstract_syntax), ACCEPTED_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        if config.allowed_callers is not None:
            ae.require_calling_aet = sorted(config.allowed_callers)
        self._ae = ae
        self._handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, lambda event: 0),
        ]

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Listen, and start scoring and delivering in the background."""
        self._server = self._ae.start_server(
            (self.config.host, self.config.port), block=False, evt_handlers=self._handlers
        )
        for name, target in (("scorer", self._score_loop), ("sender", self._send_loop)):
            thread = threading.Thread(target=target, name=f"dicom-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._write_health("running")
        log.info(
            "DICOM node %s listening on %s:%d",
            self.config.ae_title,
            self.config.host,
            self.config.port,
        )

    def stop(self) -> None:
        """Stop accepting, let the current scoring and sending finish, and record the state."""
        self._stop.set()
        self._wake_sender.set()
        if self._server is not None:
            self._server.shutdown()
        for thread in self._threads:
            thread.join(timeout=120)
        self._write_health("stopped")
        log.info("DICOM node stopped")

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return; safe to call from a signal handler."""
        self._stop.set()

    def wait(self) -> None:
        """Block until :meth:`stop` is called from another thread or a signal handler."""
        while not self._stop.wait(HEALTH_EVERY_S):
            self._write_health("running")

    def health(self) -> dict[str, Any]:
        """What an operator needs to see that the node works (no patient data)."""
        pending = self.spool.pending()
        undelivered = {d: len(self.spool.undelivered(d)) for d in self.config.destinations()}
        counters = dict(vars(self.counters))
        return {
            "status": "stopped" if self._stop.is_set() else "running",
            "ae_title": self.config.ae_title,
            "port": self.config.port,
            "model": f"{self.predictor.config.name} {self.predictor.config.version}",
            "started_at": _iso(self._started),
            "updated_at": _iso(time.time()),
            "pending_studies": len(pending),
            "pending_instances": sum(len(s.files) for s in pending),
            "undelivered_rounds": undelivered,
            # Studies out of tries, waiting in failed/ for a person (the Inbox lists them).
            "failed_waiting": _count_failed(self.config.spool),
            "memory_mb": _rss_mb(),
            **counters,
        }

    def _write_health(self, status: str) -> None:
        try:
            atomic_write_json(self.config.spool / HEALTH_FILE, {**self.health(), "status": status})
        except OSError as error:
            log.warning("could not write the health file: %s", error)

    # ------------------------------------------------------------------ receiving

    def _on_store(self, event: Any) -> Dataset | int:
        try:
            return self._store(event)
        except Exception as error:  # noqa: BLE001 - a bad data set never takes the node down
            log.warning("C-STORE failed unexpectedly (%s)", type(error).__name__)
            self.counters.refused += 1
            return _status(STATUS_CANNOT_UNDERSTAND, "the data set could not be processed")

    def _store(self, event: Any) -> Dataset | int:
        encoded = event.encoded_dataset(include_meta=True)
        try:
            header = pydicom.dcmread(io.BytesIO(encoded), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - any parse failure is the sender's data
            return self._refuse(STATUS_CANNOT_UNDERSTAND, "the data set could not be parsed")
        modality = str(header.get("Modality", "")).strip().upper()
        if modality not in self.config.modalities:
            allowed = ", ".join(sorted(self.config.modalities))
            return self._refuse(
                STATUS_DOES_NOT_MATCH,
                f"modality {modality or 'missing'} is not a radiograph; this node scores {allowed}",
            )
        study_uid, sop_uid = header.get("StudyInstanceUID"), header.get("SOPInstanceUID")
        if not study_uid or not sop_uid:
            return self._refuse(STATUS_DOES_NOT_MATCH, "Study or SOP Instance UID is missing")
        if not header.get("SeriesInstanceUID") or not header.get("SOPClassUID"):
            # Type 1: the results must reference the source's series and class.
            return self._refuse(
                STATUS_DOES_NOT_MATCH, "Series Instance or SOP Class UID is missing"
            )
        try:
            # Decoded once here so that a broken image is refused while the sender
            # can still hear about it, instead of failing silently at scoring time.
            load_image(encoded, name="the image")
        except InvalidImageError as error:
            return self._refuse(STATUS_CANNOT_UNDERSTAND, str(error))
        try:
            new = self.spool.receive(str(study_uid), str(sop_uid), encoded)
        except OSError as error:
            log.error("cannot keep a received instance on disk: %s", error.strerror)
            self.counters.last_error = f"disk: {error.strerror}"
            return _status(STATUS_OUT_OF_RESOURCES, "the node cannot write to its disk")
        if new:
            self.counters.received += 1
        else:
            self.counters.duplicates += 1
        return STATUS_SUCCESS

    def _refuse(self, status: int, reason: str) -> Dataset:
        self.counters.refused += 1
        log.info("refused an instance: %s", reason)
        return _status(status, reason)

    # ------------------------------------------------------------------ scoring

    def _score_loop(self) -> None:
        while not self._stop.is_set():
            for study in self.spool.pending():
                if self._stop.is_set():
                    break
                self.score_when_due(study)
            self._stop.wait(min(1.0, max(0.1, self.config.quiet_seconds / 4)))

    def score_when_due(self, study: PendingStudy, now: float | None = None) -> str:
        """Score ``study`` if it is quiet and not backing off; returns what happened.

        ``"waiting"`` (still arriving or backing off), ``"scored"``, ``"retry"`` (failed,
        will be tried again later) or ``"failed"`` (out of tries, moved to ``failed/``).
        """
        now = time.time() if now is None else now
        tries, next_at = self._score_failures.get(study.key, (0, 0.0))
        if now - study.last_arrival < self.config.quiet_seconds or now < next_at:
            return "waiting"
        try:
            self.score(study)
        except Exception as error:  # noqa: BLE001 - one study never stops the node
            tries += 1
            self.counters.scoring_failures += 1
            reason = failure_reason(error)
            self.counters.last_error = f"study {study.key[:8]}: {reason}"
            # The traceback only at debug level: exception texts can quote header values.
            log.debug("scoring study %s failed", study.key, exc_info=True)
            if tries >= self.config.score_attempts:
                self._give_up(study, reason, tries)
                return "failed"
            delay = self.config.score_backoff_seconds * 2 ** (tries - 1)
            self._score_failures[study.key] = (tries, now + delay)
            log.warning(
                "study %s: %s; try %d of %d in %.0f s",
                study.key,
                reason,
                tries + 1,
                self.config.score_attempts,
                delay,
            )
            return "retry"
        self._score_failures.pop(study.key, None)
        return "scored"

    def _give_up(self, study: PendingStudy, reason: str, tries: int) -> None:
        """Move a study out of its tries into ``failed/``; the Inbox lists it with ``reason``."""
        self._score_failures.pop(study.key, None)
        record = {
            "reason": reason,
            "attempts": tries,
            "received_at": _iso(study.last_arrival),
            "failed_at": _iso(time.time()),
            **_identifiers(study.files),
        }
        try:
            self.spool.fail(study, record)
        except OSError as error:
            log.error("study %s could not be moved to failed/: %s", study.key, error.strerror)
            self.counters.last_error = f"disk: {error.strerror}"
            return
        self.counters.failed_studies += 1
        log.warning(
            "study %s moved to failed/ after %d tries: %s (the Inbox can retry it)",
            study.key,
            tries,
            reason,
        )

    def score(self, study: PendingStudy) -> Path | None:
        """Score one study's waiting instances and commit the results; returns the round folder.

        Raises when the study cannot be scored (the caller counts the tries).
        """
        started = time.time()
        headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in study.files]
        scored = score_instances(
            self.predictor, headers, list(study.files), log_name=f"study {study.key}"
        )
        self.counters.failed_images += len(scored.failed)
        if scored.finding is None:
            raise StudyFailure(
                "no image of the study could be scored: " + "; ".join(dict.fromkeys(scored.errors))
            )
        summary = _summary(scored, study.last_arrival)
        round_dir = self.spool.commit(study, scored.objects, summary)
        self.counters.scored_studies += 1
        self.counters.scored_images += len(scored.finding.images)
        log.info(
            "study %s scored: %d image(s), %s, in %.1f s",
            study.key,
            len(scored.finding.images),
            scored.finding.decision.verdict.words(),
            time.time() - started,
        )
        self._wake_sender.set()
        return round_dir

    # ------------------------------------------------------------------ delivering

    def _send_loop(self) -> None:
        while True:
            self.deliver_pending()
            if self._stop.is_set():
                return
            self._wake_sender.wait(timeout=min(self.config.retry_seconds, HEALTH_EVERY_S))
            self._wake_sender.clear()

    def deliver_pending(self) -> None:
        """Try every undelivered round once per destination whose retry time has come."""
        now = time.time()
        for destination in self.config.destinations():
            if now < self._retry_at.get(destination, 0.0):
                continue
            for round_dir in self.spool.undelivered(destination):
                try:
                    self._deliver(round_dir, destination)
                except (OSError, RuntimeError) as error:
                    self.counters.failed_deliveries += 1
                    self.counters.last_error = f"{destination}: {error}"
                    self._retry_at[destination] = now + self.config.retry_seconds
                    log.warning(
                        "delivery to %s failed (%s); retrying in %.0f s",
                        destination,
                        error,
                        self.config.retry_seconds,
                    )
                    break
                self.spool.mark_delivered(round_dir, destination)
                self.counters.delivered_rounds += 1
                log.info("results of round %s delivered to %s", round_dir.name, destination)

    def _deliver(self, round_dir: Path, destination: str) -> None:
        files = sorted(p for p in round_dir.glob("*.dcm"))
        if destination == "store":
            assert self.config.store is not None
            target = self.config.store / round_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for path in files:
                shutil.copyfile(path, target / path.name)
            return
        assert self.config.forward is not None
        send_files(
            files,
            self.config.forward,
            calling_ae=self.config.ae_title,
            timeout_s=self.config.timeout_s,
        )


class StudyFailure(RuntimeError):
    """A study the node cannot score; the message says why in plain words."""


def failure_reason(error: BaseException) -> str:
    """Why a study failed, in words an operator can act on (never a bare exception name)."""
    from fracture.errors import FractureError

    if isinstance(error, (StudyFailure, FractureError, InvalidImageError)):
        return str(error)
    if isinstance(error, AttributeError):
        missing = getattr(error, "name", None)
        return "the results could not be built: the images lack a DICOM attribute they need" + (
            f" ({missing})" if missing else ""
        )
    if isinstance(error, OSError):
        return (
            f"a file of the study could not be read or written ({error.strerror or 'disk error'})"
        )
    if isinstance(error, (ValueError, TypeError, KeyError)):
        return "the results could not be built from the images' DICOM headers (see the node's log)"
    return "scoring failed for a reason the node did not expect (see the node's log)"


def send_files(
    files: list[Path], destination: Destination, *, calling_ae: str, timeout_s: float = 30.0
) -> None:
    """C-STORE ``files`` to ``destination`` in one association; raises RuntimeError on failure."""
    from pynetdicom import AE

    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    ae = AE(ae_title=calling_ae)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = timeout_s
    for sop_class in sorted({str(h.SOPClassUID) for h in headers}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise RuntimeError(f"{destination} did not accept an association")
    try:
        for path in files:
            status = assoc.send_c_store(path)
            code = getattr(status, "Status", None)
            if code is None:
                raise RuntimeError(f"{destination} did not answer a C-STORE")
            if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                raise RuntimeError(f"{destination} refused a result with status 0x{code:04X}")
    finally:
        assoc.release()


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    # Error Comment is LO: at most 64 characters, no backslash.
    status.ErrorComment = comment.replace("\\", "/")[:64]
    return status


def _header_identifiers(header: Dataset) -> dict[str, str]:
    """The identifiers the Inbox shows (masked there unless the admin gate is open)."""
    return {
        "study_uid": str(header.get("StudyInstanceUID", "")),
        "patient_name": str(header.get("PatientName", "") or ""),
        "patient_id": str(header.get("PatientID", "") or ""),
        "accession_number": str(header.get("AccessionNumber", "") or ""),
        "study_date": str(header.get("StudyDate", "") or ""),
        "study_description": str(header.get("StudyDescription", "") or ""),
    }


def _identifiers(files: tuple[Path, ...]) -> dict[str, str]:
    """The identifiers of the first readable instance of a failed study, or none."""
    for path in files:
        try:
            return _header_identifiers(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception:  # noqa: BLE001 - the failure record is written anyway
            continue
    return {}


def _summary(scored: ScoredStudy, arrived: float) -> dict[str, Any]:
    """What the Inbox shows for a round (identifiers included: the page masks them)."""
    assert scored.finding is not None
    header, finding = scored.sources[0], scored.finding
    decision = finding.decision
    return {
        **_header_identifiers(header),
        "received_at": _iso(arrived),
        "scored_at": _iso(time.time()),
        # The one verdict: no probability and no finding for a study not assessed.
        "assessed": decision.verdict.assessed,
        "verdict": decision.verdict.words(),
        "caution": decision.verdict.caution,
        "probability": finding.probability,
        "present": finding.present,
        "not_assessed_images": len(decision.not_assessed),
        "threshold": finding.threshold,
        "out_of_distribution": finding.out_of_distribution,
        "model": f"{finding.model_name} {finding.model_version}",
        "images": summary_images(scored),
        "failed_images": len(scored.failed),
        "structured_report": SR_FILE,
    }


def _count_failed(spool: Path) -> int:
    folder = spool / "failed"
    return sum(1 for path in folder.iterdir() if path.is_dir()) if folder.is_dir() else 0


def _iso(timestamp: float) -> str:
    # Milliseconds: two studies arriving within one second must still sort newest first
    # (the Inbox sorts these strings).
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds")


def _rss_mb() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)
