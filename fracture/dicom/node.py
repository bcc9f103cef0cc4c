"""A DICOM node: a C-STORE service that scores radiograph studies and sends results back.

A PACS (or a modality) sends each study's images by C-STORE. The node keeps
every accepted instance on disk before acknowledging it (:class:`Spool`), waits
until the study has been quiet for ``quiet_seconds``, scores all its images
once with the one loaded :class:`Predictor`, and writes a Secondary Capture per
image and a Structured Report per study (:mod:`fracture.dicom.results`).
Results go by C-STORE to the ``forward`` node and/or into the ``store``
folder; a failed send is retried every ``retry_seconds`` until it succeeds.

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
            now = time.time()
            for study in self.spool.pending():
                if self._stop.is_set():
                    break
                if now - study.last_arrival >= self.config.quiet_seconds:
                    try:
                        self.score(study)
                    except Exception as error:
                        self.counters.last_error = f"scoring: {type(error).__name__}"
                        log.exception("scoring study %s failed; it will be retried", study.key)
            self._stop.wait(min(1.0, max(0.1, self.config.quiet_seconds / 4)))

    def score(self, study: PendingStudy) -> Path | None:
        """Score one study's waiting instances and commit the results; returns the round folder."""
        started = time.time()
        headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in study.files]
        scored = score_instances(
            self.predictor, headers, list(study.files), log_name=f"study {study.key}"
        )
        self.counters.failed_images += len(scored.failed)
        if scored.finding is None:
            log.warning("study %s: no image could be scored; its instances are dropped", study.key)
            self.spool.drop(study.files)
            return None
        summary = _summary(scored, study.last_arrival)
        round_dir = self.spool.commit(study, scored.objects, summary)
        self.counters.scored_studies += 1
        self.counters.scored_images += len(scored.finding.images)
        log.info(
            "study %s scored: %d image(s), probability %.3f, in %.1f s",
            study.key,
            len(scored.finding.images),
            scored.finding.probability,
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


def _summary(scored: ScoredStudy, arrived: float) -> dict[str, Any]:
    """What the Inbox shows for a round (identifiers included: the page masks them)."""
    assert scored.finding is not None
    header, finding = scored.sources[0], scored.finding
    return {
        "study_uid": str(header.StudyInstanceUID),
        "patient_name": str(header.get("PatientName", "")),
        "patient_id": str(header.get("PatientID", "")),
        "accession_number": str(header.get("AccessionNumber", "")),
        "study_date": str(header.get("StudyDate", "")),
        "study_description": str(header.get("StudyDescription", "")),
        "received_at": _iso(arrived),
        "scored_at": _iso(time.time()),
        "probability": finding.probability,
        "present": finding.present,
        "threshold": finding.threshold,
        "out_of_distribution": finding.out_of_distribution,
        "model": f"{finding.model_name} {finding.model_version}",
        "images": summary_images(scored),
        "failed_images": len(scored.failed),
        "structured_report": SR_FILE,
    }


def _iso(timestamp: float) -> str:
    # Milliseconds: two studies arriving within one second must still sort newest first
    # (the Inbox sorts these strings).
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds")


def _rss_mb() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)
