"""Turn any radiograph file a user hands us into one kind of array.

Every entry point of the project (dashboard upload, batch prediction, training
data, Grad-CAM) decodes images through :func:`load_image`, which returns an
``(H, W, 3)`` ``uint8`` RGB array or raises :class:`InvalidImageError` with a
message meant for a person. Keeping the decoding in one module means that a
16-bit PNG, a MONOCHROME1 DICOM and a phone JPEG taken sideways all reach the
network looking the way a radiologist would see them. This module reads the
input and tells formats apart; DICOM is decoded and redacted in
:mod:`fracture.io.dicom`, and both kinds of decoder make their RGB ``uint8``
array with :mod:`fracture.io.pixels`.

Design rules:

* The format is decided by the file's content (magic bytes), never by its
  name, so a renamed file gets a precise message instead of a decoder crash.
* Sizes are checked from the header before any pixel is decoded, so a
  decompression bomb is refused without allocating its memory.
* High bit depth data (16-bit, 32-bit, float) is stretched with the image's
  own robust range (0.5th to 99.5th percentile): a 12-bit radiograph stored in
  16 bits would be nearly black if it were simply shifted right by 8 bits.
* Nothing is written to disk, and no DICOM patient attribute is ever read by
  :func:`load_image`; only :func:`describe_dicom` reads the header, and it
  redacts identifying attributes without even decoding their values.
* No global state of Pillow, pydicom or :mod:`warnings` is changed for good.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import cv2
import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from fracture.config import get_settings
from fracture.errors import InvalidImageError
from fracture.io.dicom import (
    DICOM_MAGIC,
    DICOM_MAGIC_OFFSET,
    decode_dicom,
    looks_like_dicom,
    redacted_header,
)
from fracture.io.pixels import bomb_guard, check_dimensions, printable, to_rgb8

log = logging.getLogger(__name__)

__all__ = [
    "InvalidImageError",
    "ImageSource",
    "SUPPORTED_SUFFIXES",
    "load_image",
    "describe_dicom",
    "iter_image_files",
]

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO
_T = TypeVar("_T")


SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".gif"}
)

# Used in messages when the caller passes bytes and no name.
_DEFAULT_LABEL = "the image"
_SUPPORTED_FORMATS_TEXT = "JPEG, PNG, BMP, TIFF, GIF or DICOM"
# A raw file never needs more than this many bytes per pixel (float32 RGB TIFF
# is 12); the cap keeps a multi-gigabyte file from being read into memory.
_MAX_BYTES_PER_PIXEL = 16
_FILE_SIZE_SLACK = 64 * 2**20

# Formats decoded by Pillow, keyed by the signature that identifies them.
# BMP's two-byte signature is checked last (after the text test) because
# ordinary text can start with "BM".
_RASTER_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
)

_ARCHIVE_HINT = "unpack it and upload the images"
_CONVERT_HINT = "convert it to PNG or JPEG first"
# Files people upload by mistake, with what to tell them.
_KNOWN_NON_IMAGES: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", f"is a ZIP archive; {_ARCHIVE_HINT}"),
    (b"PK\x05\x06", f"is a ZIP archive; {_ARCHIVE_HINT}"),
    (b"\x1f\x8b", f"is a gzip archive; {_ARCHIVE_HINT}"),
    (b"7z\xbc\xaf\x27\x1c", f"is a 7-Zip archive; {_ARCHIVE_HINT}"),
    (b"Rar!\x1a\x07", f"is a RAR archive; {_ARCHIVE_HINT}"),
    (b"%PDF-", "is a PDF document, not an image; export the radiograph from it as PNG or JPEG"),
    (
        b"\x00\x00\x00\x0cjP  \r\n\x87\n",
        f"is a JPEG 2000 image, which is not supported; {_CONVERT_HINT}",
    ),
    (b"\xff\x4f\xff\x51", f"is a JPEG 2000 image, which is not supported; {_CONVERT_HINT}"),
)
_ISO_MEDIA_BRANDS = {
    b"heic",
    b"heix",
    b"hevc",
    b"heim",
    b"heis",
    b"mif1",
    b"msf1",
    b"avif",
    b"avis",
}


# --------------------------------------------------------------------------- public API


def load_image(
    source: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    min_side: int | None = None,
) -> np.ndarray:
    """Decode ``source`` into an ``(H, W, 3)`` ``uint8`` C-contiguous RGB array.

    ``source`` is a path, the file's bytes, or a binary file object (read from
    its current position; Streamlit's ``UploadedFile`` works). ``name`` labels
    the file in messages; by default it is the file's name, never its full
    path, because messages are shown to people and may end up in reports.
    ``max_pixels`` and ``min_side`` default to the project settings.

    Every problem with the input, including an unexpected decoder failure or
    running out of memory, raises :class:`InvalidImageError`, so a batch job
    can turn each failure into an error row and carry on. Passing an object
    that is not an image source at all is a programming error and raises
    :class:`TypeError`.
    """
    _check_source_type(source)
    limits = _Limits.resolve(max_pixels, min_side)
    label = _label_for(source, name)
    try:
        data = _read_source(source, label, limits.max_file_bytes)
        return _decode(data, label, limits)
    except InvalidImageError:
        raise
    except MemoryError:
        raise InvalidImageError(
            f"{label} is too large to decode with the memory available"
        ) from None
    except Exception as exc:
        log.debug("%s could not be decoded: %s", label, type(exc).__name__)
        raise InvalidImageError(
            f"{label} could not be decoded as an image: the file is damaged or uses a "
            "variant of its format this program does not read"
        ) from exc


def describe_dicom(source: ImageSource, *, name: str | None = None) -> dict[str, str]:
    """Return a DICOM file's header as ``{keyword: value}`` with identifying values redacted.

    Meant for an explicit "show header" action, so that a user can check
    modality, size and windowing without exposing the patient. Redaction
    follows the idea of the DICOM basic confidentiality profile (PS3.15
    Annex E): everything in the patient group (0010,xxxx), private tags,
    person names, dates and times, instance UIDs and a list of identifying
    attributes (institution, accession number, study ID, descriptions...)
    become ``"<redacted>"``. Redacted values are never decoded, so they cannot
    leak through a pydicom validation warning either. Sequence contents are
    not shown. Raises :class:`InvalidImageError` for anything that is not a
    readable DICOM file.
    """
    _check_source_type(source)
    label = _label_for(source, name)
    limits = _Limits.resolve(None, None)
    try:
        data = _read_source(source, label, limits.max_file_bytes)
        if _sniff(data) not in ("DICOM", "BARE_DICOM"):
            raise InvalidImageError(f"{label} is not a DICOM file")
        return redacted_header(data, label)
    except InvalidImageError:
        raise
    except MemoryError:
        raise InvalidImageError(f"{label} is too large to read with the memory available") from None
    except Exception as exc:
        # No chaining: a pydicom exception could quote a header value.
        log.debug("DICOM header of %s not readable: %s", label, type(exc).__name__)
        raise InvalidImageError(
            f"{label}: the DICOM header could not be read; the file is damaged"
        ) from None


def iter_image_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand ``paths`` into the list of image files to process, in a stable order.

    Folders are walked recursively in sorted order and keep files with a
    supported suffix or with DICOM content (DICOM files are often named by
    UID, e.g. ``1.2.840.113619.2.1``, or have no suffix at all, and older PACS
    exports lack the preamble and ``DICM`` marker too). Hidden files
    and folders are skipped, and so is ``DICOMDIR``, the index file of a CD,
    which holds no image. A path given explicitly is always kept, whatever its
    suffix and even if it does not exist, so that a bad file the user chose
    becomes an error row downstream instead of disappearing silently.
    Duplicates are dropped, keeping the first occurrence.
    """
    found: list[Path] = []
    seen: set[str] = set()
    for raw in paths:
        path = Path(raw)
        candidates = _walk_images(path) if path.is_dir() else iter([path])
        for candidate in candidates:
            key = os.path.normcase(os.path.abspath(candidate))
            if key not in seen:
                seen.add(key)
                found.append(candidate)
    return found


# --------------------------------------------------------------------------- reading input


@dataclass(frozen=True)
class _Limits:
    max_pixels: int
    min_side: int

    @classmethod
    def resolve(cls, max_pixels: int | None, min_side: int | None) -> _Limits:
        settings = get_settings()
        max_pixels = settings.max_image_pixels if max_pixels is None else max_pixels
        min_side = settings.min_image_side if min_side is None else min_side
        return cls(max(1, int(max_pixels)), max(1, int(min_side)))

    @property
    def max_file_bytes(self) -> int:
        return self.max_pixels * _MAX_BYTES_PER_PIXEL + _FILE_SIZE_SLACK


def _label_for(source: object, name: str | None) -> str:
    """The file's name for messages; never a full path, which may reveal a patient folder."""
    if name:
        label = name
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = path.name or str(path)
    elif isinstance(getattr(source, "name", None), str) and source.name:  # type: ignore[attr-defined]
        label = Path(source.name).name  # type: ignore[attr-defined]
    else:
        label = _DEFAULT_LABEL
    return printable(label)


def _check_source_type(source: object) -> None:
    # A wrong argument type is a bug in the caller, not a bad image.
    if not isinstance(source, (bytes, bytearray, memoryview, str, os.PathLike)) and not hasattr(
        source, "read"
    ):
        raise TypeError(
            f"expected a path, bytes or a binary file object, not {type(source).__name__}"
        )


def _read_source(source: ImageSource, label: str, max_bytes: int) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        return _read_path(Path(source), label, max_bytes)
    return _read_stream(source, label, max_bytes)


def _read_path(path: Path, label: str, max_bytes: int) -> bytes:
    info = _os_call(path.stat, label)
    if stat.S_ISDIR(info.st_mode):
        raise InvalidImageError(f"{label} is a folder, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise InvalidImageError(f"{label} is not a regular file")
    _check_file_size(info.st_size, label, max_bytes)
    return _os_call(path.read_bytes, label)


def _os_call(call: Callable[[], _T], label: str) -> _T:
    """Run a file-system call, turning its failures into messages about ``label``."""
    try:
        return call()
    except FileNotFoundError:
        raise InvalidImageError(f"{label} does not exist") from None
    except PermissionError:
        raise InvalidImageError(f"{label} could not be read (permission denied)") from None
    except OSError as exc:
        raise InvalidImageError(f"{label} could not be read ({exc.strerror or exc})") from None
    except ValueError:  # e.g. a NUL character in the path
        raise InvalidImageError(f"{label} is not a valid file path") from None


def _read_stream(stream: BinaryIO, label: str, max_bytes: int) -> bytes:
    try:
        data = stream.read(max_bytes + 1)
    except OSError as exc:
        raise InvalidImageError(f"{label} could not be read ({exc.strerror or exc})") from None
    if isinstance(data, str):
        raise InvalidImageError(f"{label} was opened in text mode; open it in binary mode ('rb')")
    data = bytes(data)
    _check_file_size(len(data), label, max_bytes)
    return data


def _check_file_size(size: int, label: str, max_bytes: int) -> None:
    if size > max_bytes:
        raise InvalidImageError(
            f"{label} is larger than {max_bytes / 2**20:.0f} MB, more than any image "
            "within the pixel limit needs; it is refused to protect memory"
        )


# --------------------------------------------------------------------------- format detection


def _sniff(data: bytes) -> str:
    """The format of ``data``: a Pillow format name, "DICOM", "BARE_DICOM", "TEXT" or "UNKNOWN"."""
    # DICOM first: its 128-byte preamble may legally hold a TIFF header
    # (dual-personality files), and the DICOM reading is the right one.
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC:
        return "DICOM"
    for signature, fmt in _RASTER_SIGNATURES:
        if data.startswith(signature):
            return fmt
    if _looks_like_text(data):
        return "TEXT"
    if data.startswith(b"BM"):
        return "BMP"
    # A DICOM dataset without preamble (old ACR-NEMA style exports) starts
    # with a little-endian tag of group 0002 or 0008.
    if data[:2] in (b"\x02\x00", b"\x08\x00"):
        return "BARE_DICOM"
    return "UNKNOWN"


def _not_an_image_reason(data: bytes, kind: str) -> str:
    """Why ``data`` is refused, for a kind that no decoder handles."""
    for signature, reason in _KNOWN_NON_IMAGES:
        if data.startswith(signature):
            return reason
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return f"is a WebP image, which is not supported; {_CONVERT_HINT}"
    if data[4:8] == b"ftyp" and data[8:12] in _ISO_MEDIA_BRANDS:
        return f"is a HEIC/AVIF image (as phones save), which is not supported; {_CONVERT_HINT}"
    if kind == "TEXT":
        return "is not an image: it looks like an HTML/text file"
    return f"is not a supported image: its content is not {_SUPPORTED_FORMATS_TEXT}"


def _looks_like_text(data: bytes) -> bool:
    """Whether the start of ``data`` reads as text (UTF-8, Latin-1 or UTF-16 with a BOM)."""
    sample = data[:4096]
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    sample = sample.removeprefix(b"\xef\xbb\xbf")
    if not sample or b"\x00" in sample:
        return False
    # Replacement characters count as non-text; a few are tolerated for a
    # Latin-1 accent or a multi-byte character cut by the end of the sample.
    text = sample.decode("utf-8", errors="replace")
    odd = text.count("\ufffd") + sum(not (ch.isprintable() or ch in "\t\r\n\f") for ch in text)
    return odd <= 0.05 * len(text)


# --------------------------------------------------------------------------- decoding


def _decode(data: bytes, label: str, limits: _Limits) -> np.ndarray:
    if not data:
        raise InvalidImageError(f"{label} is empty (0 bytes)")
    kind = _sniff(data)
    if kind in ("DICOM", "BARE_DICOM"):
        rgb = decode_dicom(data, label, max_pixels=limits.max_pixels, min_side=limits.min_side)
    elif kind in ("JPEG", "PNG", "GIF", "TIFF", "BMP"):
        rgb = _decode_raster(data, kind, label, limits)
    else:
        raise InvalidImageError(f"{label} {_not_an_image_reason(data, kind)}")
    return _finish(rgb, label)


def _finish(rgb: np.ndarray, label: str) -> np.ndarray:
    # A constant image carries no information; predicting on it would only
    # produce a confident-looking number about nothing.
    if (rgb == rgb[0, 0]).all():
        raise InvalidImageError(f"{label} is blank (every pixel has the same value)")
    return np.ascontiguousarray(rgb, dtype=np.uint8)


# --------------------------------------------------------------------------- Pillow formats


# What Pillow raises for damaged data (it uses SyntaxError for bad structure).
_DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


def _decode_raster(data: bytes, fmt: str, label: str, limits: _Limits) -> np.ndarray:
    if fmt == "PNG":
        _check_png_checksums(data, label)
    try:
        with bomb_guard(label):
            image = Image.open(io.BytesIO(data), formats=[fmt])
    except UnidentifiedImageError:
        raise InvalidImageError(
            f"{label} looks like a {fmt} file, but its header is damaged "
            f"or uses a {fmt} variant that is not supported"
        ) from None
    except _DECODER_ERRORS as exc:
        raise InvalidImageError(f"{label} is a truncated or damaged {fmt} file ({exc})") from exc
    with image:
        # Our own pixel cap (below Pillow's) is checked before any pixel is decoded.
        check_dimensions(
            image.width, image.height, label, max_pixels=limits.max_pixels, min_side=limits.min_side
        )
        if _is_deep_colour(image):
            pixels = _decode_deep_colour(data, fmt, label)
        else:
            _load_pixels(image, fmt, label, len(data))
            pixels = _pillow_pixels(image)
        orientation = _exif_orientation(image)
    return _apply_orientation(to_rgb8(pixels, label), orientation)


def _check_png_checksums(data: bytes, label: str) -> None:
    """Refuse a PNG whose chunk CRCs are wrong.

    Pillow reports a bad header CRC only as "cannot identify image" and does
    not check the CRC of the pixel data at all, so a corrupted transfer could
    otherwise reach the model as a subtly wrong image.
    """
    view = memoryview(data)
    pos = 8
    while pos + 12 <= len(data):
        length = int.from_bytes(view[pos : pos + 4], "big")
        end = pos + 12 + length
        if end > len(data):
            return  # truncated: the decoder reports that more precisely
        chunk_type = bytes(view[pos + 4 : pos + 8])
        if zlib.crc32(view[pos + 4 : end - 4]) != int.from_bytes(view[end - 4 : end], "big"):
            chunk_name = printable(chunk_type.decode("latin-1"))
            raise InvalidImageError(
                f"{label} is a damaged PNG file: "
                f"the checksum (CRC) of its {chunk_name} chunk is wrong"
            )
        if chunk_type == b"IEND":
            return
        pos = end


def _load_pixels(image: Image.Image, fmt: str, label: str, n_bytes: int) -> None:
    # Decoding errors surface here because Image.open only reads the header.
    # LOAD_TRUNCATED_IMAGES stays off: a half-grey radiograph must not be scored.
    try:
        image.load()
    except _DECODER_ERRORS as exc:
        if "truncated" in str(exc):
            # Pillow's "(5 bytes not processed)" counts its buffer, not what is missing,
            # which the file cannot tell: say what is known instead.
            raise InvalidImageError(
                f"{label} is a truncated or damaged {fmt} file: its data stops after "
                f"{_size_text(n_bytes)}, before the image is complete; the copy or download "
                f"was probably cut short"
            ) from exc
        raise InvalidImageError(f"{label} is a truncated or damaged {fmt} file ({exc})") from exc


def _size_text(n_bytes: int) -> str:
    if n_bytes >= 1 << 20:
        return f"{n_bytes / (1 << 20):.1f} MB"
    if n_bytes >= 1 << 10:
        return f"{n_bytes / (1 << 10):.0f} KB"
    return f"{n_bytes} bytes"


def _is_deep_colour(image: Image.Image) -> bool:
    """Whether Pillow would truncate this colour image from 16 to 8 bits per channel.

    Pillow keeps only the high byte of 16-bit RGB(A) PNG and TIFF samples,
    which makes an image that uses 12 of its 16 bits nearly black. Must be
    called before ``load()``, which clears ``tile``.
    """
    # ImageFile.tile is not in Pillow's type stubs for Image.
    if image.mode not in ("RGB", "RGBA") or not image.tile:  # type: ignore[attr-defined]
        return False
    args = image.tile[0].args  # type: ignore[attr-defined]
    rawmode = args[0] if isinstance(args, tuple) and args else args
    return isinstance(rawmode, str) and ";16" in rawmode


def _decode_deep_colour(data: bytes, fmt: str, label: str) -> np.ndarray:
    """Decode a 16-bit colour PNG/TIFF at full depth with OpenCV, as RGB(A)."""
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise InvalidImageError(f"{label} is a truncated or damaged {fmt} file")
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return pixels[..., ::-1]
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        return pixels[..., [2, 1, 0, 3]]
    return pixels


def _pillow_pixels(image: Image.Image) -> np.ndarray:
    """The image's samples as an array that :func:`fracture.io.pixels.to_rgb8` understands."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA", "I", "F") or mode.startswith("I;16"):
        return np.asarray(image)
    if mode == "P" and "transparency" not in image.info:
        return np.asarray(image.convert("RGB"))
    if mode in ("P", "PA", "RGBa", "La"):
        return np.asarray(image.convert("RGBA"))
    if mode == "1":
        return np.asarray(image.convert("L"))
    # CMYK, YCbCr, LAB, HSV, RGBX...: Pillow knows their conversion to RGB.
    return np.asarray(image.convert("RGB"))


def _exif_orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        # Orientation is metadata: with a corrupt EXIF block the pixels are
        # still intact, so showing them unrotated beats refusing the image.
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# Same table as PIL.ImageOps.exif_transpose, applied to arrays so that it also
# covers the 16-bit colour images that Pillow cannot hold.
_ORIENTATION_OPS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: np.rot90(a, 2),
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def _apply_orientation(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip ``rgb`` as EXIF orientation asks, so that anatomy is upright."""
    op = _ORIENTATION_OPS.get(orientation)
    return rgb if op is None else op(rgb)


# --------------------------------------------------------------------------- file discovery


def _walk_images(root: Path) -> Iterator[Path]:
    """Image files under ``root``, depth first in sorted order, hidden entries skipped."""
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for file_name in sorted(files):
            path = Path(directory, file_name)
            if _is_image_file(path):
                yield path


def _is_image_file(path: Path) -> bool:
    name = path.name
    if name.startswith(".") or name.upper() == "DICOMDIR":
        return False
    if path.suffix.lower() in SUPPORTED_SUFFIXES:
        return True
    return _has_dicom_marker(path)


def _has_dicom_marker(path: Path) -> bool:
    """Whether ``path`` starts like a DICOM file, with or without preamble and ``DICM``."""
    try:
        with path.open("rb") as handle:
            head = handle.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))
    except OSError:
        return False
    return looks_like_dicom(head)
