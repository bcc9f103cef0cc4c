"""A catalogue of hostile, broken and unusual input files, for every entry point that takes uploads.

:func:`build_hostile_files` writes one file per kind into a folder and says
what must happen to it: decoded (``expected_ok``), or refused with an
:class:`~fracture.io.images.InvalidImageError` whose message contains
``message``. The Predictor, CLI and dashboard tests all use the same table,
so a new kind added here is tested everywhere.

Everything is generated: no fixture file is checked in, nothing is
downloaded, and nothing is written outside the given folder. Every kind is
cheap: the 40000 x 40000 "decompression bomb" is a 100-byte PNG whose header
claims that size, so a correct loader refuses it without allocating a pixel.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
from PIL import Image

__all__ = ["HostileFile", "KINDS", "build_hostile_files", "radiograph", "PATIENT_NAME"]

# Put into every DICOM file; it must never appear in an error message.
PATIENT_NAME = "Hostile^Patient"
SIZE = (72, 96)  # height, width of the generated radiographs: small, above the 32 px minimum
# Every kind, in the order built; known without writing files, for test parametrisation.
KINDS: tuple[str, ...] = (
    "zero_byte",
    "truncated_jpeg",
    "png_bad_crc",
    "html_as_jpg",
    "one_pixel",
    "decompression_bomb_40000px",
    "zip_upload",
    "pdf_as_png",
    "heic_from_phone",
    "blank_frame",
    "float_tiff_nan",
    "png_16bit",
    "cmyk_jpeg",
    "rgba_png",
    "palette_gif",
    "animated_gif",
    "exif_rotated_jpeg",
    "jpeg_named_png",
    "dicom_monochrome1",
    "dicom_no_pixel_data",
    "dicom_compressed_no_decoder",
    "dicom_multiframe",
    "dotdot_name",
    "unicode_name",
    "newline_name",
    "control_chars_name",
    "symlink_to_device",
)


class HostileFile(NamedTuple):
    """One catalogue entry.

    ``upload_name`` is what a browser would send as the file name for it
    (for most kinds the file's own name; for ``dotdot_name`` a path
    traversal attempt). ``check`` runs on the decoded array of a valid kind.
    """

    kind: str
    path: Path
    expected_ok: bool
    message: str
    upload_name: str
    check: Callable[[np.ndarray], None] | None = None


def radiograph(seed: int = 0, height: int = SIZE[0], width: int = SIZE[1]) -> np.ndarray:
    """A grey (H, W) uint8 image with a bright 'bone' band and noise: not constant, not blank."""
    rng = np.random.default_rng(seed)
    image = rng.normal(40, 8, (height, width))
    image[:, width // 3 : width // 3 + width // 6] += 150
    return image.clip(0, 255).astype(np.uint8)


def build_hostile_files(folder: str | os.PathLike[str]) -> list[HostileFile]:
    """Write every hostile kind into ``folder`` (created if needed); return the table.

    Kinds the platform cannot represent (a file name with a newline on
    Windows, symbolic links without the privilege) are left out, not faked.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries: list[HostileFile] = []

    def add(
        kind: str,
        name: str,
        content: bytes,
        expected_ok: bool,
        message: str = "",
        check: Callable[[np.ndarray], None] | None = None,
        upload_name: str | None = None,
    ) -> None:
        path = folder / name
        try:
            path.write_bytes(content)
        except (OSError, ValueError):  # a name this file system refuses
            return
        entries.append(HostileFile(kind, path, expected_ok, message, upload_name or name, check))

    grey = radiograph(0)
    png = _encode(Image.fromarray(grey), "PNG")
    jpeg = _encode(Image.fromarray(grey), "JPEG", quality=90)

    # --- broken or not an image at all
    add("zero_byte", "empty.png", b"", False, "is empty (0 bytes)")
    add(
        "truncated_jpeg",
        "truncated.jpg",
        jpeg[: len(jpeg) // 2],
        False,
        "truncated or damaged JPEG",
    )
    add(
        "png_bad_crc",
        "bad_crc.png",
        _corrupt_idat(png),
        False,
        "checksum (CRC) of its IDAT chunk is wrong",
    )
    add(
        "html_as_jpg",
        "page.jpg",
        b"<!DOCTYPE html>\n<html><head><title>Login</title></head>"
        b"<body>Session expired</body></html>\n",
        False,
        "looks like an HTML/text file",
    )
    add("one_pixel", "dot.png", _encode(Image.new("L", (1, 1), 128), "PNG"), False, "is 1x1 px")
    add(
        "decompression_bomb_40000px",
        "bomb.png",
        _png_claiming(40_000, 40_000),
        False,
        "decompression bomb",
    )
    add("zip_upload", "xrays.zip", _zip_of({"scan.png": png}), False, "is a ZIP archive")
    add(
        "pdf_as_png",
        "report.png",
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
        False,
        "is a PDF document",
    )
    add(
        "heic_from_phone",
        "IMG_0001.jpg",
        b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64,
        False,
        "HEIC/AVIF",
    )
    add("blank_frame", "blank.png", _encode(Image.new("L", (64, 64), 0), "PNG"), False, "is blank")
    add("float_tiff_nan", "nan.tif", _float_tiff_with_nan(), False, "NaN or infinite")

    # --- valid but unusual: must decode, and decode correctly
    deep = radiograph(1).astype(np.uint16) * 16  # 12 bits used of 16
    add("png_16bit", "deep.png", _encode(Image.fromarray(deep), "PNG"), True, check=_not_dark)
    colour = np.stack([grey, grey // 2, 255 - grey], axis=2)
    add(
        "cmyk_jpeg",
        "cmyk.jpg",
        _encode(Image.fromarray(colour).convert("CMYK"), "JPEG"),
        True,
        check=_shape(*SIZE),
    )
    rgba = np.dstack([colour, np.full(SIZE, 255, np.uint8)])
    rgba[:, : SIZE[1] // 4, 3] = 0  # a transparent margin: composited on black
    add(
        "rgba_png",
        "rgba.png",
        _encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        True,
        check=_transparent_margin_is_black,
    )
    add(
        "palette_gif",
        "palette.gif",
        _encode(Image.fromarray(grey).convert("P"), "GIF"),
        True,
        check=_shape(*SIZE),
    )
    add("animated_gif", "animated.gif", _animated_gif(), True, check=_first_frame_is_dark)
    add(
        "exif_rotated_jpeg",
        "rotated.jpg",
        _exif_rotated_jpeg(grey),
        True,
        check=_shape(SIZE[1], SIZE[0]),
    )
    add("jpeg_named_png", "really_a_jpeg.png", jpeg, True, check=_shape(*SIZE))

    # --- DICOM
    dicom = _dicom_kinds()
    add("dicom_monochrome1", "mono1.dcm", dicom["monochrome1"], True, check=_monochrome1_inverted)
    add("dicom_no_pixel_data", "report.dcm", dicom["no_pixels"], False, "contains no pixel data")
    syntax, compressed = dicom["compressed"]
    add(
        "dicom_compressed_no_decoder",
        "compressed.dcm",
        compressed,
        False,
        f"({syntax}) transfer syntax",
    )
    add("dicom_multiframe", "cine.dcm", dicom["multiframe"], True, check=_shape(40, 48))

    # --- hostile names (content is a good radiograph)
    (folder / "nested").mkdir(exist_ok=True)
    add(
        "dotdot_name",
        "dotdot.png",
        png,
        True,
        check=_shape(*SIZE),
        upload_name="../../../etc/cron.d/dotdot.png",
    )
    if entries[-1].kind == "dotdot_name":  # the path itself walks up: nested/../dotdot.png
        entries[-1] = entries[-1]._replace(path=folder / "nested" / ".." / "dotdot.png")
    add("unicode_name", "röntgen_骨折.png", png, True, check=_shape(*SIZE))
    add("newline_name", "two\nlines.png", png, True, check=_shape(*SIZE))
    add("control_chars_name", "bell\x07tab\tcr\r.png", png, True, check=_shape(*SIZE))

    # --- a link named like an image that points at an endless device
    link = folder / "endless.png"
    try:
        os.symlink("/dev/zero", link)
    except (OSError, NotImplementedError, AttributeError):
        pass
    else:
        entries.append(
            HostileFile("symlink_to_device", link, False, "is not a regular file", link.name)
        )
    assert [e.kind for e in entries] == [k for k in KINDS if k in {e.kind for e in entries}]
    return entries


# --------------------------------------------------------------------------- encoders


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_claiming(width: int, height: int) -> bytes:
    """A 1-bit grey PNG whose (valid, CRC-correct) header claims ``width`` x ``height``.

    The IDAT holds only a few rows: a decoder that trusted the header would
    allocate width x height pixels (1.6 GB for 40000^2 as 8-bit) first.
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + width // 8) * 4)
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _corrupt_idat(png: bytes) -> bytes:
    """Flip one byte inside the first IDAT payload; the chunk's CRC no longer matches."""
    data = bytearray(png)
    start = data.index(b"IDAT") + 4
    data[start + 10] ^= 0xFF
    return bytes(data)


def _zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _float_tiff_with_nan() -> bytes:
    values = radiograph(2).astype(np.float32) / 255.0
    values[10, 10] = np.nan
    return _encode(Image.fromarray(values, "F"), "TIFF")


def _animated_gif() -> bytes:
    frames = [Image.fromarray(radiograph(3) // 4), Image.fromarray(255 - radiograph(4) // 4)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _exif_rotated_jpeg(grey: np.ndarray) -> bytes:
    """A JPEG stored sideways with EXIF orientation 6 ("rotate 90 degrees clockwise to view")."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(Image.fromarray(grey), "JPEG", exif=exif.tobytes())


def _dicom_kinds() -> dict[str, object]:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import (
        MPEG2MPML,
        ExplicitVRLittleEndian,
        HTJ2KLossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        generate_uid,
    )

    def dataset(pixels: np.ndarray | None, photometric: str = "MONOCHROME2") -> Dataset:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality = "DX"
        ds.PatientName = PATIENT_NAME
        ds.PatientID = "HOSTILE-0001"
        if pixels is not None:
            ds.set_pixel_data(pixels, photometric, 12)
        return ds

    def encoded(ds: Dataset) -> bytes:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    ramp = np.repeat(np.linspace(0, 4000, 48)[None, :], 40, axis=0).round().astype(np.uint16)
    frames = np.stack([ramp, 4000 - ramp, ramp // 2])
    # The first syntax with no usable decoder here; MPEG-2 has none in pydicom at all.
    syntax = MPEG2MPML
    for candidate in (JPEGLSLossless, HTJ2KLossless, JPEGLosslessSV1):
        if not get_decoder(candidate).is_available:
            syntax = candidate
            break
    compressed = dataset(ramp)
    compressed.file_meta.TransferSyntaxUID = syntax
    compressed.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"not really compressed" * 8])
    return {
        "monochrome1": encoded(dataset(ramp, "MONOCHROME1")),
        "no_pixels": encoded(dataset(None)),
        "compressed": (str(syntax), encoded(compressed)),
        "multiframe": encoded(dataset(frames)),
    }


# --------------------------------------------------------------------------- checks on arrays


def _shape(height: int, width: int) -> Callable[[np.ndarray], None]:
    def check(rgb: np.ndarray) -> None:
        assert rgb.shape == (height, width, 3), rgb.shape

    return check


def _not_dark(rgb: np.ndarray) -> None:
    # 12 bits in a 16-bit PNG: keeping only the high byte would give a mean near 10.
    assert rgb.shape == (*SIZE, 3) and rgb.mean() > 60, rgb.mean()


def _transparent_margin_is_black(rgb: np.ndarray) -> None:
    assert rgb.shape == (*SIZE, 3)
    assert (rgb[:, : SIZE[1] // 4] == 0).all() and rgb[:, SIZE[1] // 4 :].max() > 0


def _first_frame_is_dark(rgb: np.ndarray) -> None:
    # Frame 0 is a quarter-brightness radiograph, frame 1 its bright negative.
    assert rgb.shape == (*SIZE, 3) and rgb.mean() < 60, rgb.mean()


def _monochrome1_inverted(rgb: np.ndarray) -> None:
    # MONOCHROME1 stores low values as white: the ramp's left edge (0) must show bright.
    assert rgb.shape == (40, 48, 3)
    assert rgb[:, 0].mean() > 200 and rgb[:, -1].mean() < 55
