"""The Inbox: studies the DICOM node scored, for triage in the dashboard.

Reads the node's spool folder (:mod:`fracture.dicom.spool`); the page only
lays the rows out. Patient identifiers are masked unless the caller says the
viewer may see them (the dashboard's admin gate decides).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fracture.dicom.spool import read_summaries

__all__ = ["SORTS", "InboxStudy", "capture_pixels", "inbox_studies", "mask", "node_health"]

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
    probability: float
    present: bool
    out_of_distribution: bool
    model: str
    folder: Path
    captures: tuple[tuple[str, float], ...]  # (file name, probability) per image

    @property
    def verdict(self) -> str:
        return "fracture suspected" if self.present else "no fracture found"

    def row(self) -> dict[str, Any]:
        return {
            "Received": _readable_time(self.received_at),
            "Patient": self.patient_name,
            "Patient ID": self.patient_id,
            "Accession": self.accession_number,
            "Images": self.images,
            "Probability": self.probability,
            "Result": self.verdict,
            "Unusual images": "yes - check" if self.out_of_distribution else "",
            "Reference": self.reference,
        }


def mask(text: str, reveal: bool) -> str:
    """``text`` itself when ``reveal``, otherwise a fixed mask that leaks not even its length."""
    return text if reveal or not text else MASK


def inbox_studies(
    spool: str | os.PathLike[str], *, reveal: bool, sort: str = SORTS[0]
) -> list[InboxStudy]:
    """The scored studies under ``spool``, sorted by ``sort`` (one of :data:`SORTS`)."""
    studies = []
    for summary in read_summaries(spool):
        try:
            studies.append(
                InboxStudy(
                    reference=str(summary["study_key"])[:8],
                    received_at=str(summary.get("received_at", "")),
                    patient_name=mask(
                        str(summary.get("patient_name", "")).replace("^", " ").strip(), reveal
                    ),
                    patient_id=mask(str(summary.get("patient_id", "")), reveal),
                    accession_number=mask(str(summary.get("accession_number", "")), reveal),
                    study_date=str(summary.get("study_date", "")),
                    images=len(summary["images"]),
                    failed_images=int(summary.get("failed_images", 0)),
                    probability=float(summary["probability"]),
                    present=bool(summary["present"]),
                    out_of_distribution=bool(summary.get("out_of_distribution")),
                    model=str(summary.get("model", "")),
                    folder=Path(summary["folder"]),
                    captures=tuple(
                        (i["secondary_capture"], float(i["probability"])) for i in summary["images"]
                    ),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue  # a summary from another version: skipped rather than shown wrong
    if sort == SORTS[1]:
        return sorted(studies, key=lambda s: s.received_at, reverse=True)
    return sorted(studies, key=lambda s: (s.probability, s.received_at), reverse=True)


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
