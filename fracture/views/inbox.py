"""The Inbox: studies the DICOM node scored, for triage in the dashboard.

Reads the node's spool folder (:mod:`fracture.dicom.spool`); the page only
lays the rows out. Patient identifiers are masked unless the caller says the
viewer may see them (the dashboard's admin gate decides; with no admin password
configured they stay masked). Each row's result is the one verdict the node
wrote (:mod:`fracture.inference.verdict`): a study the model could not assess
says so, with no probability and no fracture or normal label. Studies the node
gave up on are listed apart with the reason, for a person to retry.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fracture.dicom.spool import read_failures, read_summaries, retry_failed

__all__ = [
    "SORTS",
    "FailedStudy",
    "InboxStudy",
    "capture_pixels",
    "failed_studies",
    "inbox_studies",
    "mask",
    "node_health",
    "retry",
]

MASK = "••••••"
SORTS = ("Most suspicious first", "Newest first")


@dataclass(frozen=True)
class InboxStudy:
    """One scored study (round) as the Inbox lists it."""

    reference: str  # the study key: a hash, safe to show to anyone
    received_at: str
    patient_name: str
    patient_id: str
    accession_number: str
    study_date: str
    images: int
    failed_images: int
    probability: float | None  # None: the model assessed no image of the study
    present: bool | None
    out_of_distribution: bool
    model: str
    folder: Path
    # (file name, probability or None, verdict in words) per image
    captures: tuple[tuple[str, float | None, str], ...]
    verdict: str = ""  # the one verdict in words, as the node wrote it
    not_assessed_images: int = 0
    caution: str | None = None

    @property
    def assessed(self) -> bool:
        return self.probability is not None

    def row(self) -> dict[str, Any]:
        return {
            "Received": _readable_time(self.received_at),
            "Patient": self.patient_name,
            "Patient ID": self.patient_id,
            "Accession": self.accession_number,
            "Images": self.images,
            "Probability": self.probability,
            "Result": self.verdict,
            "Not assessed": f"{self.not_assessed_images} image(s)"
            if self.not_assessed_images
            else "",
            "Caution": self.caution or "",
            "Reference": self.reference,
        }


@dataclass(frozen=True)
class FailedStudy:
    """A study the node could not score after its bounded tries (in the spool's ``failed/``)."""

    reference: str
    key: str  # the full study key, for :func:`retry`
    received_at: str
    failed_at: str
    patient_name: str
    patient_id: str
    instances: int
    attempts: int
    reason: str

    def row(self) -> dict[str, Any]:
        return {
            "Received": _readable_time(self.received_at),
            "Patient": self.patient_name,
            "Patient ID": self.patient_id,
            "Images": self.instances,
            "Tries": self.attempts,
            "Why it failed": self.reason,
            "Reference": self.reference,
        }


def mask(text: str, reveal: bool) -> str:
    """``text`` itself when ``reveal``, otherwise a fixed mask that leaks not even its length."""
    return text if reveal or not text else MASK


def _name(summary: dict[str, Any], reveal: bool) -> str:
    return mask(str(summary.get("patient_name", "") or "").replace("^", " ").strip(), reveal)


def _verdict_words(summary: dict[str, Any]) -> str:
    """The summary's verdict; older summaries (before the one verdict) had only ``present``."""
    if summary.get("verdict"):
        return str(summary["verdict"])
    if summary.get("out_of_distribution"):
        # Scored before the one verdict, when flagged images still counted: no label.
        return "not assessed: unusual images, scored by an older version (send it again)"
    return "fracture suspected" if summary.get("present") else "no fracture found"


def inbox_studies(
    spool: str | os.PathLike[str], *, reveal: bool, sort: str = SORTS[0]
) -> list[InboxStudy]:
    """The scored studies under ``spool``, sorted by ``sort`` (one of :data:`SORTS`).

    "Most suspicious first" puts the studies the model could not assess after every
    assessed one: they have no probability to rank by.
    """
    studies = []
    for summary in read_summaries(spool):
        try:
            assessed = summary.get("assessed", True) and summary.get("probability") is not None
            studies.append(
                InboxStudy(
                    reference=str(summary["study_key"])[:8],
                    received_at=str(summary.get("received_at", "")),
                    patient_name=_name(summary, reveal),
                    patient_id=mask(str(summary.get("patient_id", "") or ""), reveal),
                    accession_number=mask(str(summary.get("accession_number", "") or ""), reveal),
                    study_date=str(summary.get("study_date", "")),
                    images=len(summary["images"]),
                    failed_images=int(summary.get("failed_images", 0)),
                    probability=float(summary["probability"]) if assessed else None,
                    present=bool(summary["present"]) if assessed else None,
                    out_of_distribution=bool(summary.get("out_of_distribution")),
                    model=str(summary.get("model", "")),
                    folder=Path(summary["folder"]),
                    captures=tuple(
                        (
                            str(i["secondary_capture"]),
                            None
                            if i.get("probability") is None or i.get("assessed") is False
                            else float(i["probability"]),
                            str(i.get("verdict", "")),
                        )
                        for i in summary["images"]
                    ),
                    verdict=_verdict_words(summary),
                    not_assessed_images=int(summary.get("not_assessed_images", 0) or 0),
                    caution=summary.get("caution") or None,
                )
            )
        except (KeyError, TypeError, ValueError):
            continue  # a summary from another version: skipped rather than shown wrong
    if sort == SORTS[1]:
        return sorted(studies, key=lambda s: s.received_at, reverse=True)
    return sorted(
        studies, key=lambda s: (s.assessed, s.probability or 0.0, s.received_at), reverse=True
    )


def failed_studies(spool: str | os.PathLike[str], *, reveal: bool) -> list[FailedStudy]:
    """The studies the node gave up on, newest failure first, with the reason in words."""
    studies = [
        FailedStudy(
            reference=str(record["study_key"])[:8],
            key=str(record["study_key"]),
            received_at=str(record.get("received_at", "")),
            failed_at=str(record.get("failed_at", "")),
            patient_name=_name(record, reveal),
            patient_id=mask(str(record.get("patient_id", "") or ""), reveal),
            instances=int(record.get("instances", 0)),
            attempts=int(record.get("attempts", 0) or 0),
            reason=str(record.get("reason") or "no reason was recorded"),
        )
        for record in read_failures(spool)
    ]
    return sorted(studies, key=lambda s: s.failed_at, reverse=True)


def retry(spool: str | os.PathLike[str], study: FailedStudy) -> int:
    """Hand a failed study back to the node for another round of tries; instances moved."""
    return retry_failed(spool, study.key)


def node_health(spool: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The node's last health record, or None when no node has run with this folder."""
    try:
        return json.loads((Path(spool) / "health.json").read_text())
    except (OSError, ValueError):
        return None


def capture_pixels(study: InboxStudy, name: str) -> np.ndarray:
    """The RGB pixels of one of the study's Secondary Captures (heat map and box burned in)."""
    import pydicom

    return pydicom.dcmread(study.folder / name).pixel_array


def _readable_time(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso
