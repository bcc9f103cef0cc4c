"""DICOM-specific checks of the image loader (:mod:`fracture.io.images` calls them).

The loader decodes every transfer syntax through pydicom's pixel-data plugins
(pylibjpeg, pylibjpeg-libjpeg, -openjpeg, -rle and pyjpegls, runtime
dependencies); what pydicom does not check is checked here: pixel data whose
length disagrees with the header, and DICOM files that lack the preamble.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from fracture.errors import InvalidImageError

__all__ = [
    "check_pixel_data_length",
    "first_value",
    "looks_like_bare_dicom",
    "looks_like_dicom",
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
    import io

    import pydicom

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
