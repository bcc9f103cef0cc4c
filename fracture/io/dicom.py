"""DICOM: decoding an image for the network, the loader's checks, and the redacted header.

:func:`fracture.io.images.load_image` hands every DICOM file (recognised by its
content, with or without the 128-byte preamble) to :func:`decode_dicom`, and
:func:`fracture.io.images.describe_dicom` to :func:`redacted_header`; both read
the file through :func:`read_dicom`. The loader decodes every transfer syntax
through pydicom's pixel-data plugins (pylibjpeg, pylibjpeg-libjpeg, -openjpeg,
-rle and pyjpegls, runtime dependencies); what pydicom does not check is checked
here: compressed data that no installed plugin decodes, pixel data whose length
disagrees with the header, and DICOM files that lack the preamble.

No patient attribute is read to decode an image: only the image pixel, modality
LUT and VOI LUT modules (PS3.4 N.2). The header shown to people is redacted after
the basic confidentiality profile (PS3.15 Annex E) without decoding the redacted
values, so they cannot leak through a pydicom warning either. Exceptions are
never chained, because a pydicom message could quote a header value.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder, pixel_array
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from fracture.errors import InvalidImageError
from fracture.io.pixels import (
    bomb_guard,
    check_dimensions,
    printable,
    stretch_to_uint8,
    to_rgb8,
    unit_to_uint8,
)

log = logging.getLogger(__name__)

__all__ = [
    "DICOM_MAGIC",
    "DICOM_MAGIC_OFFSET",
    "check_pixel_data_length",
    "decode_dicom",
    "first_value",
    "looks_like_bare_dicom",
    "looks_like_dicom",
    "read_dicom",
    "redacted_header",
    "study_instance_uid",
]

# Part 10 files: a 128-byte preamble, then this marker (PS3.10 7.1).
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"


def check_pixel_data_length(dataset: Dataset, label: str) -> None:
    """Refuse uncompressed pixel data whose length disagrees with the image header.

    pydicom only warns about excess data and reads the first bytes as the
    image, so a file whose Rows, Columns or Bits Allocated were damaged would
    be scored as a scrambled picture. Only the one pad byte that makes the
    length even (PS3.5 8.1.1) is tolerated.
    """
    if dataset.file_meta.TransferSyntaxUID.is_compressed or "PixelData" not in dataset:
        return
    values = (
        dataset.get(keyword)
        for keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "NumberOfFrames")
    )
    rows, columns, samples, bits, frames = (first_value(v) for v in values)
    try:
        count = int(str(frames)) if frames not in (None, "") else 1
        pixels = int(str(rows)) * int(str(columns)) * int(str(samples or 1)) * max(count, 1)
        bits_allocated = int(str(bits))
    except (TypeError, ValueError):
        raise InvalidImageError(
            f"{label} is a DICOM file whose image header (size, samples, bits) is not readable"
        ) from None
    expected = (pixels * bits_allocated + 7) // 8
    actual = len(dataset.PixelData)
    if actual not in (expected, expected + expected % 2):
        raise InvalidImageError(
            f"{label}: its DICOM pixel data could not be decoded: it is {actual} bytes long, "
            f"but the header declares {expected} bytes; the file is truncated or its header "
            "is damaged, so it is refused rather than guessed"
        )


def looks_like_bare_dicom(head: bytes) -> bool:
    """Whether ``head`` opens a DICOM data set written without preamble (older PACS exports).

    Such a file starts with a little-endian element of group 0002 (file meta)
    or 0008 (identification), followed by an explicit VR (two capital letters)
    or an implicit 32-bit length small enough for a header element. A text or
    binary file matching all of that by chance is rare, and still gets a
    precise error from the loader instead of silently vanishing.
    """
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    element = int.from_bytes(head[2:4], "little")
    if element > 0x0100:
        return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    return int.from_bytes(head[4:8], "little") <= 1024


def looks_like_dicom(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` (a file's first 132 bytes are enough) opens a DICOM file.

    Either the Part 10 marker after the preamble, or a data set written without
    preamble (:func:`looks_like_bare_dicom`): the same test the loader's file
    walk applies, so a page recognises every upload the loader would decode.
    """
    head = bytes(data[: DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)])
    marker = head[DICOM_MAGIC_OFFSET:]
    return marker == DICOM_MAGIC or looks_like_bare_dicom(head)


def first_value(value: object) -> object:
    """The first of a multi-valued attribute's values (None when it has none), else the value."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return value[0] if len(value) else None
    return value


def study_instance_uid(data: bytes | bytearray | memoryview) -> str | None:
    """The StudyInstanceUID of a DICOM file's bytes, or None (not DICOM, unreadable, absent).

    Reads the header only (stops before the pixel data): the Predict page groups
    uploaded views into studies by it.
    """
    if not looks_like_dicom(data):
        return None
    try:
        dataset = pydicom.dcmread(
            io.BytesIO(bytes(data)),
            stop_before_pixels=True,
            force=True,
            specific_tags=["StudyInstanceUID"],
        )
    except Exception:  # noqa: BLE001 - any unreadable header just means "no study"
        return None
    value = first_value(dataset.get("StudyInstanceUID", None))
    return str(value).strip() or None if value else None


# --------------------------------------------------------------------------- decoding


def decode_dicom(data: bytes, label: str, *, max_pixels: int, min_side: int) -> np.ndarray:
    """Decode the first frame of a DICOM file into RGB uint8.

    Only attributes of the image pixel, modality LUT and VOI LUT modules are
    read. Exceptions are never chained, because a pydicom message could quote
    a header value.
    """
    try:
        dataset = read_dicom(data, label, stop_before_pixels=False)
        pixel_keywords = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
        if not any(kw in dataset for kw in pixel_keywords):
            raise InvalidImageError(
                f"{label} is a DICOM file that contains no pixel data "
                "(it may be a report, a structured document or a DICOMDIR)"
            )
        if not any(dataset.get(kw) for kw in pixel_keywords):
            raise InvalidImageError(
                f"{label} is a DICOM file whose Pixel Data element is empty: the image was "
                "left out when the file was written (an export or anonymiser that drops pixels)"
            )
        rows, columns = dataset.get("Rows"), dataset.get("Columns")
        if not isinstance(rows, int) or not isinstance(columns, int):
            raise InvalidImageError(
                f"{label} is a DICOM file whose image size (Rows/Columns) is missing"
            )
        check_dimensions(columns, rows, label, max_pixels=max_pixels, min_side=min_side)
        _check_decodable(dataset, label)
        check_pixel_data_length(dataset, label)
        frame = _first_frame(dataset, label)
        return _dicom_frame_to_rgb(frame, dataset, label)
    except InvalidImageError:
        raise
    except MemoryError:
        raise InvalidImageError(
            f"{label} is too large to decode with the memory available"
        ) from None
    except Exception as exc:
        # No exception name in the message: it says nothing to the person reading it.
        log.debug("DICOM image of %s not readable: %s", label, type(exc).__name__)
        raise InvalidImageError(
            f"{label} is a DICOM file whose image could not be read: its image attributes "
            "(size, bits, photometric interpretation, colour tables) are damaged or "
            "contradict each other"
        ) from None


def read_dicom(data: bytes, label: str, *, stop_before_pixels: bool) -> Dataset:
    bare = data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] != DICOM_MAGIC
    try:
        dataset = pydicom.dcmread(
            io.BytesIO(data), force=bare, stop_before_pixels=stop_before_pixels
        )
    except Exception:
        raise InvalidImageError(
            f"{label} is a damaged DICOM file: its header could not be read"
        ) from None
    if bare and "TransferSyntaxUID" not in dataset.file_meta:
        # Without file meta, the encoding pydicom detected is the transfer
        # syntax; such files are never compressed.
        implicit, little = dataset.original_encoding
        dataset.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit
            else ExplicitVRLittleEndian
            if little
            else ExplicitVRBigEndian
        )
    return dataset


def _check_decodable(dataset: Dataset, label: str) -> None:
    """Refuse, with the transfer syntax named, compressed data that no installed plugin decodes."""
    uid = dataset.file_meta.get("TransferSyntaxUID")
    if not isinstance(uid, UID):
        raise InvalidImageError(f"{label} is a DICOM file without a valid transfer syntax")
    described = printable(f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid))
    try:
        compressed = uid.is_compressed
    except ValueError:  # a private transfer syntax pydicom knows nothing about
        raise InvalidImageError(
            f"{label} uses an unknown DICOM transfer syntax {described}"
        ) from None
    if not compressed:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise InvalidImageError(
            f"{label} uses the {described} transfer syntax, which cannot be decoded here; "
            "export it uncompressed"
        ) from None
    if not decoder.is_available:
        options = "; ".join(dep.split(" - requires ")[-1] for dep in decoder.missing_dependencies)
        raise InvalidImageError(
            f"{label} uses the {described} transfer syntax, and no decoder for it is installed "
            f"(it needs one of: {options}); install one or export the file uncompressed"
        )


def _first_frame(dataset: Dataset, label: str) -> np.ndarray:
    # index=0 decodes only the first frame, so a long multi-frame file costs
    # the memory of one frame.
    uid = dataset.file_meta.TransferSyntaxUID
    with bomb_guard(label):
        try:
            return pixel_array(dataset, index=0)
        except InvalidImageError:
            raise
        except Exception:
            raise InvalidImageError(
                f"{label}: its DICOM pixel data ({uid.name}, {uid}) could not be decoded; "
                "the file may be truncated or damaged"
            ) from None


def _dicom_frame_to_rgb(frame: np.ndarray, dataset: Dataset, label: str) -> np.ndarray:
    """Display pipeline of PS3.4 N.2: modality LUT, VOI window, then MONOCHROME1 inversion.

    Without a usable window the robust stretch replaces it: BitsStored
    scaling would leave an image that uses a fraction of its bit range dark.
    VOI LUT Sequences (rare in radiography) are not applied.
    """
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        return to_rgb8(apply_color_lut(frame, dataset), label)
    if frame.ndim == 3:
        # pydicom has already converted YBR to RGB.
        return to_rgb8(frame, label)
    values = apply_modality_lut(frame, dataset)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise InvalidImageError(f"{label} contains NaN or infinite pixel values")
    window = _VoiWindow.from_dataset(dataset)
    unit = window.apply(values) if window is not None else None
    grey = stretch_to_uint8(values) if unit is None else unit_to_uint8(unit)
    if photometric == "MONOCHROME1":
        # MONOCHROME1 stores bone dark; invert so every image shows bone bright.
        grey = 255 - grey
    return to_rgb8(grey, label)


@dataclass(frozen=True)
class _VoiWindow:
    """The first VOI window of a DICOM file (PS3.3 C.11.2.1.2)."""

    center: float
    width: float
    function: str

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> _VoiWindow | None:
        if "WindowCenter" not in dataset or "WindowWidth" not in dataset:
            return None
        try:
            center = float(first_value(dataset.WindowCenter))  # type: ignore[arg-type]
            width = float(first_value(dataset.WindowWidth))  # type: ignore[arg-type]
        except (TypeError, ValueError, IndexError):
            return None  # an unusable window falls back to the data's own range
        if not (np.isfinite(center) and np.isfinite(width)):
            return None
        function = str(dataset.get("VOILUTFunction") or "LINEAR").strip().upper()
        return cls(center, width, function)

    def apply(self, values: np.ndarray) -> np.ndarray | None:
        """Map ``values`` to [0, 1]; None when the width is invalid for the function."""
        x = values.astype(np.float32, copy=False)
        center, width = self.center, self.width
        if self.function == "SIGMOID":
            if width <= 0:
                return None
            with np.errstate(over="ignore"):  # exp overflow correctly gives 0
                return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
        if self.function == "LINEAR_EXACT":
            if width <= 0:
                return None
            return np.clip((x - (center - width / 2)) / width, 0.0, 1.0)
        # LINEAR, also used for unknown functions since it is the default.
        if width < 1:
            return None
        center, width = center - 0.5, width - 1
        if width == 0:
            return (x > center).astype(np.float32)
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)


# --------------------------------------------------------------------------- header redaction

_REDACTED = "<redacted>"
# Person names, dates and times identify patients and staff whatever the attribute.
_IDENTIFYING_VRS = frozenset({"PN", "DA", "DT", "TM"})
# UIDs that name a kind of object or encoding rather than an instance.
_NON_IDENTIFYING_UIDS = frozenset(
    {
        "SOPClassUID",
        "MediaStorageSOPClassUID",
        "TransferSyntaxUID",
        "ImplementationClassUID",
        "ReferencedSOPClassUID",
        "ReferencedSOPClassUIDInFile",
    }
)
# Identifying attributes outside group 0010 that are not names, dates or
# UIDs, after the basic application level confidentiality profile.
_IDENTIFYING_KEYWORDS = frozenset(
    {
        "AccessionNumber",
        "IssuerOfAccessionNumberSequence",
        "StudyID",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionCodeSequence",
        "InstitutionalDepartmentName",
        "StationName",
        "DeviceSerialNumber",
        "DetectorID",
        "PlateID",
        "CassetteID",
        "GantryID",
        "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers",
        "ReferringPhysicianIdentificationSequence",
        "PhysiciansOfRecordIdentificationSequence",
        "PerformingPhysicianIdentificationSequence",
        "PhysiciansReadingStudyIdentificationSequence",
        "OperatorIdentificationSequence",
        "RequestingService",
        "RequestAttributesSequence",
        "RequestedProcedureID",
        "RequestedProcedureDescription",
        "ScheduledProcedureStepID",
        "PerformedProcedureStepID",
        "PerformedProcedureStepDescription",
        "StudyDescription",
        "SeriesDescription",
        "ProtocolName",
        "ImageComments",
        "DerivationDescription",
        "AdmittingDiagnosesDescription",
        "AdmissionID",
        "IssuerOfAdmissionIDSequence",
        "ServiceEpisodeID",
        "CurrentPatientLocation",
        "PatientInstitutionResidence",
        "ReferencedPatientSequence",
        "ReferencedStudySequence",
        "ReferencedPerformedProcedureStepSequence",
        "PlacerOrderNumberImagingServiceRequest",
        "FillerOrderNumberImagingServiceRequest",
        "OrderEntererLocation",
        "OrderCallbackPhoneNumber",
        "PersonAddress",
        "PersonTelephoneNumbers",
        "ResponsibleOrganization",
        "ContentSequence",
        "TextString",
        "TextComments",
        "IdentifyingComments",
        "ScheduledStudyLocation",
        "ScheduledStudyLocationAETitle",
        "SourceApplicationEntityTitle",
    }
)
_MAX_VALUE_CHARS = 200


def _redacted_items(dataset: Dataset) -> dict[str, str]:
    header: dict[str, str] = {}
    for tag in sorted(dataset.keys()):
        tag = BaseTag(tag)
        keyword = keyword_for_tag(tag) or str(tag)
        if _is_identifying(dataset, tag, keyword):
            header[keyword] = _REDACTED
        else:
            header[keyword] = _display_value(dataset, tag)
    return header


def _is_identifying(dataset: Dataset, tag: BaseTag, keyword: str) -> bool:
    """Decide from the tag and VR alone, so the value is never decoded."""
    if tag.group == 0x0010 or tag.is_private or keyword in _IDENTIFYING_KEYWORDS:
        return True
    vr = _raw_vr(dataset, tag)
    if vr in _IDENTIFYING_VRS:
        return True
    return vr == "UI" and keyword not in _NON_IDENTIFYING_UIDS


def _raw_vr(dataset: Dataset, tag: BaseTag) -> str:
    vr = dataset.get_item(tag).VR
    if vr:
        return str(vr)
    try:
        return dictionary_VR(tag)
    except KeyError:
        return ""


def _display_value(dataset: Dataset, tag: BaseTag) -> str:
    try:
        element = dataset[tag]
        value = element.value
        if element.VR == "SQ":
            return f"<sequence of {len(value)} item(s)>"
        if isinstance(value, (bytes, bytearray)):
            return f"<{len(value)} bytes>"
        if isinstance(value, Sequence) and not isinstance(value, str):
            text = "\\".join(str(item) for item in value)
        else:
            text = "" if value is None else str(value)
    except Exception:
        return "<unreadable>"
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 1] + "…"


def redacted_header(data: bytes, label: str) -> dict[str, str]:
    """A DICOM file's header as ``{keyword: value}``, identifying values redacted.

    Everything in the patient group (0010,xxxx), private tags, person names,
    dates and times, instance UIDs and a list of identifying attributes
    (institution, accession number, study ID, descriptions...) become
    ``"<redacted>"``, decided from the tag and VR alone. Sequence contents are
    not shown. The pixel data is not read.
    """
    dataset = read_dicom(data, label, stop_before_pixels=True)
    header = _redacted_items(dataset.file_meta)
    header.update(_redacted_items(dataset))
    return header
