"""Turn any radiograph file a user hands us into one kind of array.

Every entry point of the project (dashboard upload, batch prediction, training
data, Grad-CAM) decodes images through :func:`load_image`, which returns an
``(H, W, 3)`` ``uint8`` RGB array or raises :class:`InvalidImageError` with a
message meant for a person. Keeping the decoding in one module means that a
16-bit PNG, a MONOCHROME1 DICOM and a phone JPEG taken sideways all reach the
network looking the way a radiologist would see them.

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
import threading
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import cv2
import numpy as np
import pydicom
from PIL import ExifTags, Image, UnidentifiedImageError
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder, pixel_array
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from fracture.config import get_settings
from fracture.errors import InvalidImageError
from fracture.io.dicom import check_pixel_data_length, first_value, looks_like_bare_dicom

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
# Percentiles of the robust stretch: clipping 0.5 % at each end ignores hot
# pixels and burned-in labels without visibly changing a normal radiograph.
_STRETCH_PERCENTILES = (0.5, 99.5)
# Percentiles are computed on at most about this many pixels, for speed.
_STRETCH_SAMPLE_PIXELS = 1_000_000

_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"

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
        dataset = _read_dicom(data, label, stop_before_pixels=True)
        header = _redacted_items(dataset.file_meta)
        header.update(_redacted_items(dataset))
        return header
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
    return _printable(label)


def _printable(text: str) -> str:
    # Control characters in a name could forge extra lines in a log or a report.
    return "".join(ch if ch.isprintable() else "?" for ch in text)


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
    if data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == _DICOM_MAGIC:
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
        rgb = _decode_dicom(data, label, limits)
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


def _check_dimensions(width: int, height: int, label: str, limits: _Limits) -> None:
    """Refuse a size read from the header, before any pixel is decoded."""
    if width * height > limits.max_pixels:
        raise InvalidImageError(
            f"{label} is {width}x{height} px ({width * height / 1e6:.1f} MP), more than the "
            f"{limits.max_pixels / 1e6:g} MP limit that guards against decompression bombs; "
            "downscale it first"
        )
    if min(width, height) < limits.min_side:
        raise InvalidImageError(
            f"{label} is {width}x{height} px; at least {limits.min_side} px per side is needed"
        )


# catch_warnings saves and restores the process-wide filter list, so two
# threads overlapping inside it (the Predictor decodes in a tf.data pool) would
# restore each other's state and leave the error filter installed for good.
# The lock makes guarded blocks take turns; they only wrap Pillow's lazy
# ``Image.open`` (a header read), so decoding itself stays parallel.
_BOMB_GUARD_LOCK = threading.RLock()


@contextmanager
def _bomb_guard(label: str) -> Iterator[None]:
    """Turn Pillow's decompression-bomb warning and error into :class:`InvalidImageError`.

    Pillow only warns between MAX_IMAGE_PIXELS and twice that; the warning is
    made an error here, for the duration of the block only, so that no such
    image slips through when ``max_pixels`` is set above Pillow's threshold.
    Pillow's own limit is left untouched, so it still caps ``max_pixels``.
    """
    with _BOMB_GUARD_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InvalidImageError(
                f"{label} is too large to decode safely (possible decompression bomb: {exc})"
            ) from None


# --------------------------------------------------------------------------- Pillow formats


# What Pillow raises for damaged data (it uses SyntaxError for bad structure).
_DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


def _decode_raster(data: bytes, fmt: str, label: str, limits: _Limits) -> np.ndarray:
    if fmt == "PNG":
        _check_png_checksums(data, label)
    try:
        with _bomb_guard(label):
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
        _check_dimensions(image.width, image.height, label, limits)
        if _is_deep_colour(image):
            pixels = _decode_deep_colour(data, fmt, label)
        else:
            _load_pixels(image, fmt, label, len(data))
            pixels = _pillow_pixels(image)
        orientation = _exif_orientation(image)
    return _apply_orientation(_to_rgb8(pixels, label), orientation)


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
            chunk_name = _printable(chunk_type.decode("latin-1"))
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
    """The image's samples as an array that :func:`_to_rgb8` understands."""
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


# --------------------------------------------------------------------------- pixel conversion


def _to_rgb8(pixels: np.ndarray, label: str) -> np.ndarray:
    """Convert grey, grey+alpha, RGB or RGBA samples of any numeric type to RGB uint8.

    Alpha is composited on black, the background of a radiograph, so that
    transparent padding looks like the film edge rather than like bone.
    """
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 2:
        colour, alpha = pixels, None
    elif pixels.ndim == 3 and pixels.shape[2] in (2, 3, 4):
        has_alpha = pixels.shape[2] in (2, 4)
        colour = pixels[..., :-1] if has_alpha else pixels
        alpha = pixels[..., -1] if has_alpha else None
    else:
        raise InvalidImageError(f"{label} has an unsupported pixel layout {pixels.shape}")
    if colour.ndim == 3 and colour.shape[2] == 1:
        colour = colour[..., 0]
    if np.issubdtype(pixels.dtype, np.floating) and not np.isfinite(pixels).all():
        raise InvalidImageError(f"{label} contains NaN or infinite pixel values")
    colour8 = colour if colour.dtype == np.uint8 else _stretch_to_uint8(colour)
    if alpha is not None:
        colour8 = _composite_on_black(colour8, _alpha_to_uint8(alpha))
    if colour8.ndim == 2:
        colour8 = np.repeat(colour8[..., None], 3, axis=2)
    return colour8


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map the robust range of ``values`` (0.5th-99.5th percentile) onto 0-255.

    Falls back to the full min-max range when the percentiles coincide (for
    example a small bright object on a uniform background).
    """
    values = values.astype(np.float32, copy=False)
    step = max(1, int(np.ceil(np.sqrt(values.shape[0] * values.shape[1] / _STRETCH_SAMPLE_PIXELS))))
    low, high = (float(v) for v in np.percentile(values[::step, ::step], _STRETCH_PERCENTILES))
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return _unit_to_uint8((values - low) / (high - low))


def _unit_to_uint8(values: np.ndarray) -> np.ndarray:
    """Round values in [0, 1] (clipped) to uint8."""
    scaled = np.clip(values, 0.0, 1.0) * 255.0 + 0.5
    return scaled.astype(np.uint8)


def _alpha_to_uint8(alpha: np.ndarray) -> np.ndarray:
    if alpha.dtype == np.uint8:
        return alpha
    if np.issubdtype(alpha.dtype, np.integer):
        return _unit_to_uint8(alpha / float(np.iinfo(alpha.dtype).max))
    return _unit_to_uint8(alpha)


def _composite_on_black(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    weight = alpha.astype(np.uint16)
    if colour.ndim == 3:
        weight = weight[..., None]
    return ((colour.astype(np.uint16) * weight + 127) // 255).astype(np.uint8)


# --------------------------------------------------------------------------- DICOM


def _decode_dicom(data: bytes, label: str, limits: _Limits) -> np.ndarray:
    """Decode the first frame of a DICOM file into RGB uint8.

    Only attributes of the image pixel, modality LUT and VOI LUT modules are
    read. Exceptions are never chained, because a pydicom message could quote
    a header value.
    """
    try:
        dataset = _read_dicom(data, label, stop_before_pixels=False)
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
        _check_dimensions(columns, rows, label, limits)
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


def _read_dicom(data: bytes, label: str, *, stop_before_pixels: bool) -> Dataset:
    bare = data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] != _DICOM_MAGIC
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
    described = _printable(f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid))
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
    with _bomb_guard(label):
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
        return _to_rgb8(apply_color_lut(frame, dataset), label)
    if frame.ndim == 3:
        # pydicom has already converted YBR to RGB.
        return _to_rgb8(frame, label)
    values = apply_modality_lut(frame, dataset)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise InvalidImageError(f"{label} contains NaN or infinite pixel values")
    window = _VoiWindow.from_dataset(dataset)
    unit = window.apply(values) if window is not None else None
    grey = _stretch_to_uint8(values) if unit is None else _unit_to_uint8(unit)
    if photometric == "MONOCHROME1":
        # MONOCHROME1 stores bone dark; invert so every image shows bone bright.
        grey = 255 - grey
    return _to_rgb8(grey, label)


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


# --------------------------------------------------------------------------- DICOM header redaction

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
            head = handle.read(_DICOM_MAGIC_OFFSET + 4)
    except OSError:
        return False
    return head[_DICOM_MAGIC_OFFSET:] == _DICOM_MAGIC or looks_like_bare_dicom(head)
