"""The DICOMweb route: read a study with WADO-RS, store the results back with STOW-RS.

For sites that prefer HTTP to a DICOM association; the results are the same
Secondary Captures and Structured Report as the node's
(:mod:`fracture.dicom.scoring`).
"""

from __future__ import annotations

import io
import logging
from typing import Any

from pydicom.dataset import Dataset

from fracture.dicom.node import RADIOGRAPH_MODALITIES
from fracture.dicom.results import study_key
from fracture.dicom.scoring import score_instances
from fracture.errors import FractureError
from fracture.inference.predictor import Predictor

__all__ = ["DicomWebError", "score_study"]

log = logging.getLogger(__name__)


class DicomWebError(FractureError, RuntimeError):
    """The DICOMweb server could not be read from or written to; the message says why."""


def score_study(
    url: str, study_uid: str, predictor: Predictor, *, send: bool = True, client: Any = None
) -> dict[str, Any]:
    """Score the radiographs of study ``study_uid`` at ``url``; store results there if ``send``."""
    from dicomweb_client.api import DICOMwebClient
    from requests import RequestException

    client = client or DICOMwebClient(url=url.rstrip("/"))
    key = study_key(study_uid)
    try:
        instances = client.retrieve_study(study_uid)
    except RequestException as error:
        raise DicomWebError(f"could not read the study from {url}: {_reason(error)}") from None
    radiographs = [
        ds for ds in instances if str(ds.get("Modality", "")).upper() in RADIOGRAPH_MODALITIES
    ]
    if not radiographs:
        raise DicomWebError(
            f"the study has no radiographs at {url} ({len(instances)} instance(s) of other kinds)"
            if instances
            else f"no study with that UID at {url}"
        )
    scored = score_instances(
        predictor, radiographs, [_encode(ds) for ds in radiographs], log_name=f"study {key}"
    )
    if scored.finding is None:
        raise DicomWebError(
            f"none of the {len(radiographs)} radiograph(s) could be scored: "
            + "; ".join(scored.errors)
        )
    sent = 0
    if send:
        try:
            client.store_instances([dataset for _, dataset in scored.objects])
        except RequestException as error:
            raise DicomWebError(f"could not store the results at {url}: {_reason(error)}") from None
        sent = len(scored.objects)
    log.info(
        "study %s scored over DICOMweb: %d image(s), %d result object(s) stored",
        key,
        len(scored.finding.images),
        sent,
    )
    decision = scored.finding.decision
    return {
        # The one verdict: probability and present are None for a study not assessed.
        "assessed": decision.verdict.assessed,
        "verdict": decision.verdict.words(),
        "caution": decision.verdict.caution,
        "not_assessed_images": len(decision.not_assessed),
        "probability": scored.finding.probability,
        "present": scored.finding.present,
        "out_of_distribution": scored.finding.out_of_distribution,
        "images": len(scored.finding.images),
        "failed": len(scored.failed),
        "sent": sent,
    }


def _encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _reason(error: Exception) -> str:
    response = getattr(error, "response", None)
    if response is not None:
        return f"HTTP {response.status_code} {response.reason}"
    return type(error).__name__
