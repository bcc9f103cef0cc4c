"""Tests for fracture.io.images: every fixture is generated here, in memory or under tmp_path."""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    generate_uid,
)

from fracture.io import dicom, images
from fracture.io.images import (
    SUPPORTED_SUFFIXES,
    InvalidImageError,
    describe_dicom,
    iter_image_files,
    load_image,
)

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-4711"
RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- fixture builders


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(
    height: int, width: int, *channels: int, high: int = 256, dtype: type = np.uint8
) -> np.ndarray:
    return RNG.integers(0, high, (height, width, *channels)).astype(dtype)


def assert_rgb(array: np.ndarray, height: int, width: int) -> None:
    assert array.shape == (height, width, 3)
    assert array.dtype == np.uint8
    assert array.flags.c_contiguous


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring a size but holding almost no pixel data: a decompression-bomb stand-in."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def dicom_dataset(
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    **attributes: object,
) -> Dataset:
    """A DX dataset with identifying attributes, and ``pixels`` (frames first when 3-D)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.InstitutionName = "St Example Hospital"
    ds.StudyDate = "20240102"
    ds.AccessionNumber = "ACC-99"
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric, bits_stored)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def gradient(height: int, width: int, low: int, high: int) -> np.ndarray:
    row = np.linspace(low, high, width)
    return np.repeat(row[None, :], height, axis=0).round().astype(np.uint16)


# --------------------------------------------------------------------------- good inputs


def test_png_8bit_grey_is_kept_exactly(tmp_path: Path) -> None:
    grey = noise(40, 50)
    path = tmp_path / "grey.png"
    path.write_bytes(encode(Image.fromarray(grey), "PNG"))
    rgb = load_image(path)
    assert_rgb(rgb, 40, 50)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], grey)


def test_png_16bit_using_12_bits_is_not_dark() -> None:
    twelve_bit = noise(64, 64, high=4096, dtype=np.uint16)
    image = Image.fromarray(twelve_bit)
    assert image.mode.startswith("I;16")
    rgb = load_image(encode(image, "PNG"), name="deep.png")
    assert_rgb(rgb, 64, 64)
    assert rgb.mean() > 100 and rgb.max() == 255
    # Brightness order survives the stretch.
    assert rgb[..., 0].ravel()[twelve_bit.argmax()] >= rgb[..., 0].ravel()[twelve_bit.argmin()]


def test_png_16bit_colour_uses_full_depth() -> None:
    import cv2

    bgr = noise(40, 40, 3, high=4096, dtype=np.uint16)
    ok, encoded = cv2.imencode(".png", bgr)
    assert ok
    rgb = load_image(encoded.tobytes(), name="deep-colour.png")
    assert_rgb(rgb, 40, 40)
    assert rgb.mean() > 100  # Pillow alone would keep the high byte: max 15
    # Channel order: the brightest red sample stays bright in channel 0.
    y, x = np.unravel_index(bgr[..., 2].argmax(), bgr.shape[:2])
    assert rgb[y, x, 0] > 200


def test_stretch_falls_back_to_min_max_for_a_small_bright_object() -> None:
    values = np.zeros((100, 100), np.uint16)
    values[50:52, 50:52] = 1000  # 0.04 % of the pixels: inside the clipped percentile tail
    rgb = load_image(encode(Image.fromarray(values), "PNG"))
    assert (rgb[50:52, 50:52] == 255).all() and rgb.sum() == 4 * 3 * 255


def test_rgba_is_composited_on_black() -> None:
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :10, 3] = 0
    rgba[:, 10:20, 3] = 255
    rgba[:, 20:, 3] = 128
    rgb = load_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (rgb[:, :10] == 0).all()
    assert (rgb[:, 10:20] == 200).all()
    assert (abs(rgb[:, 20:].astype(int) - 100) <= 1).all()


def test_grey_with_alpha_is_composited_on_black() -> None:
    la = np.zeros((40, 40, 2), np.uint8)
    la[..., 0] = 180
    la[:20, :, 1] = 255
    rgb = load_image(encode(Image.fromarray(la, "LA"), "PNG"))
    assert (rgb[:20] == 180).all() and (rgb[20:] == 0).all()


def test_palette_png_gives_palette_colours() -> None:
    indices = np.zeros((40, 40), np.uint8)
    indices[:, 20:] = 1
    image = Image.fromarray(indices, "L").convert("P")
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    rgb = load_image(encode(image, "PNG"))
    assert tuple(rgb[0, 0]) == (10, 20, 30)
    assert tuple(rgb[0, 39]) == (200, 100, 50)


def test_cmyk_jpeg_becomes_rgb() -> None:
    red = np.zeros((48, 48, 3), np.uint8)
    red[..., 0] = 220
    red[:, :8] = 0
    cmyk = Image.fromarray(red).convert("CMYK")
    rgb = load_image(encode(cmyk, "JPEG", quality=95))
    assert_rgb(rgb, 48, 48)
    centre = rgb[24, 30].astype(int)
    assert centre[0] > 180 and centre[1] < 60 and centre[2] < 60


def test_bmp_rgb_is_exact() -> None:
    colour = noise(36, 44, 3)
    rgb = load_image(encode(Image.fromarray(colour), "BMP"))
    np.testing.assert_array_equal(rgb, colour)


def test_tiff_float32_is_stretched(tmp_path: Path) -> None:
    values = np.linspace(-1000.0, 3000.0, 48 * 48, dtype=np.float32).reshape(48, 48)
    path = tmp_path / "scan.tif"
    path.write_bytes(encode(Image.fromarray(values, "F"), "TIFF"))
    rgb = load_image(path)
    assert_rgb(rgb, 48, 48)
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255
    assert np.all(np.diff(rgb[..., 0].ravel().astype(int)) >= 0)  # monotonic ramp stays monotonic


def test_tiff_16bit_grey() -> None:
    values = gradient(40, 40, 100, 3000)
    rgb = load_image(encode(Image.fromarray(values), "TIFF"))
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255


def test_animated_gif_gives_first_frame() -> None:
    first = np.zeros((40, 40), np.uint8)
    first[:, 20:] = 255
    second = np.zeros((40, 40), np.uint8)
    second[20:, :] = 255
    frames = [Image.fromarray(first).convert("P"), Image.fromarray(second).convert("P")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    rgb = load_image(data)
    assert (rgb[:, :20] == 0).all() and (rgb[:, 20:] == 255).all()


def test_exif_orientation_6_transposes_the_shape() -> None:
    image = Image.fromarray(noise(48, 64, 3))  # 64 wide, 48 tall
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb = load_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert rgb.shape == (64, 48, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow_exif_transpose(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(noise(30, 40, 3)), "PNG", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(load_image(data, min_side=1), expected)


def test_file_objects_and_names() -> None:
    data = encode(Image.fromarray(noise(40, 40)), "PNG")
    stream = io.BytesIO(data)
    stream.name = "/secret/patient folder/upload.png"
    assert_rgb(load_image(stream), 40, 40)
    with pytest.raises(InvalidImageError, match=r"^upload\.png is empty"):
        load_image(stream)  # already read to the end
    with pytest.raises(InvalidImageError, match=r"^IMG_7\.png is empty"):
        load_image(b"", name="IMG_7.png")


def test_content_decides_the_format_not_the_suffix(tmp_path: Path) -> None:
    path = tmp_path / "really_a_png.jpg"
    path.write_bytes(encode(Image.fromarray(noise(40, 40)), "PNG"))
    assert_rgb(load_image(path), 40, 40)


# --------------------------------------------------------------------------- bad inputs


def message_of(source: object, **kwargs: object) -> str:
    with pytest.raises(InvalidImageError) as info:
        load_image(source, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert message_of(path) == "empty.png is empty (0 bytes)"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "BMP", "GIF"])
def test_truncated_file(fmt: str) -> None:
    data = encode(Image.fromarray(noise(64, 64)), fmt)
    message = message_of(data[: len(data) // 2], name=f"cut.{fmt.lower()}")
    assert message.startswith(f"cut.{fmt.lower()}")
    assert "truncated" in message or "damaged" in message


def test_truncation_does_not_change_pillow_globally() -> None:
    from PIL import ImageFile

    data = encode(Image.fromarray(noise(64, 64)), "JPEG")
    message_of(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("chunk", [b"IHDR", b"IDAT"])
def test_png_with_bad_crc(chunk: bytes) -> None:
    data = bytearray(encode(Image.fromarray(noise(40, 40)), "PNG"))
    start = data.find(chunk)
    length = struct.unpack(">I", data[start - 4 : start])[0]
    data[start + 4 + length] ^= 0xFF  # first byte of the chunk's CRC
    message = message_of(bytes(data), name="bad.png")
    assert (
        "bad.png is a damaged PNG file" in message
        and "CRC" in message
        and chunk.decode() in message
    )


@pytest.mark.parametrize(
    ("file_name", "content"),
    [
        ("IMG_1.png", b"<!DOCTYPE html><html><body>Not found</body></html>"),
        (
            "IMG_2.jpg",
            "Patientenbericht: Fraktur des Radius, Verlauf unauffällig.\n".encode("latin-1"),
        ),
        ("IMG_3.png", "Notes \u2014 r\u00e9sum\u00e9\n".encode("utf-8") * 20),
    ],
)
def test_text_renamed_as_image(tmp_path: Path, file_name: str, content: bytes) -> None:
    path = tmp_path / file_name
    path.write_bytes(content)
    assert message_of(path) == f"{file_name} is not an image: it looks like an HTML/text file"


def test_tiny_image() -> None:
    message = message_of(encode(Image.fromarray(np.array([[7]], np.uint8)), "PNG"), name="dot.png")
    assert message == "dot.png is 1x1 px; at least 32 px per side is needed"


def test_min_side_argument() -> None:
    data = encode(Image.fromarray(noise(40, 40)), "PNG")
    assert "at least 64 px" in message_of(data, min_side=64)


def test_decompression_bomb_is_refused_from_the_header() -> None:
    # 9000 x 9000 = 81 MP is over our 60 MP but under Pillow's warning threshold.
    message = message_of(png_header_only(9000, 9000), name="bomb.png")
    assert "bomb.png is 9000x9000 px (81.0 MP)" in message and "decompression bomb" in message
    assert "limit" in message


@pytest.mark.parametrize("side", [10_000, 100_000])
def test_pillow_bomb_warning_and_error_become_invalid_image(side: int) -> None:
    # 100 MP makes Pillow warn, 10 000 MP makes it raise; neither escapes.
    filters_before = list(warnings.filters)
    limit_before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        message = message_of(png_header_only(side, side), max_pixels=10**12)
    assert "decompression bomb" in message
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert warnings.filters == filters_before
    assert limit_before == Image.MAX_IMAGE_PIXELS


def test_max_pixels_argument() -> None:
    data = encode(Image.fromarray(noise(100, 100)), "PNG")
    assert "0.005 MP limit" in message_of(data, max_pixels=5000)


def test_nan_in_float_tiff() -> None:
    values = np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40)
    values[3, 4] = np.nan
    assert "NaN or infinite" in message_of(
        encode(Image.fromarray(values, "F"), "TIFF"), name="nan.tif"
    )
    values[3, 4] = np.inf
    assert "NaN or infinite" in message_of(encode(Image.fromarray(values, "F"), "TIFF"))


@pytest.mark.parametrize("mode", ["L", "RGB", "I;16"])
def test_constant_image_is_blank(mode: str) -> None:
    if mode == "I;16":
        image = Image.fromarray(np.full((40, 40), 1234, np.uint16))
    else:
        image = Image.new(mode, (40, 40), 90 if mode == "L" else (10, 20, 30))
    assert message_of(encode(image, "PNG"), name="flat.png") == (
        "flat.png is blank (every pixel has the same value)"
    )


def test_nonexistent_path(tmp_path: Path) -> None:
    message = message_of(tmp_path / "missing.png")
    assert message == "missing.png does not exist"
    assert str(tmp_path) not in message  # names the file, not the folder


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "scans").mkdir()
    assert message_of(tmp_path / "scans") == "scans is a folder, not an image file"


def test_zip_archive(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.png", encode(Image.fromarray(noise(40, 40)), "PNG"))
    path = tmp_path / "batch.png"
    path.write_bytes(buffer.getvalue())
    assert message_of(path) == "batch.png is a ZIP archive; unpack it and upload the images"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF document"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(32), "WebP image"),
        (b"\x00\x00\x00\x18ftypheic" + bytes(32), "HEIC/AVIF image"),
        (bytes(range(256)) * 4, "is not a supported image"),
    ],
)
def test_other_files_get_specific_messages(content: bytes, expected: str) -> None:
    assert expected in message_of(content)


def test_oversized_file_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "_FILE_SIZE_SLACK", 0)
    path = tmp_path / "huge.bmp"
    path.write_bytes(encode(Image.fromarray(noise(40, 40, 3)), "BMP"))  # 4854 bytes
    assert "refused to protect memory" in message_of(path, max_pixels=100)
    assert "refused to protect memory" in message_of(path.open("rb"), max_pixels=100)


def test_text_mode_stream(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_text("hello")
    with path.open("r") as handle:
        assert "binary mode" in message_of(handle)


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (
            RuntimeError("decoder bug"),
            "could not be decoded as an image: the file is damaged or uses a variant of its "
            "format this program does not read",
        ),
        (MemoryError(), "is too large to decode with the memory available"),
    ],
)
def test_unexpected_failures_become_invalid_image(
    monkeypatch: pytest.MonkeyPatch, failure: BaseException, expected: str
) -> None:
    def broken(*args: object) -> None:
        raise failure

    monkeypatch.setattr(images, "to_rgb8", broken)
    data = encode(Image.fromarray(noise(40, 40)), "PNG")
    assert message_of(data, name="x.png") == f"x.png {expected}"


def test_wrong_argument_type_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        load_image(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- DICOM


def test_dicom_monochrome2_without_window_is_stretched(tmp_path: Path) -> None:
    path = tmp_path / "IM0001"  # DICOM files often have no suffix
    path.write_bytes(dicom_bytes(dicom_dataset(gradient(40, 50, 300, 1200))))
    rgb = load_image(path)
    assert_rgb(rgb, 40, 50)
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255  # 12-bit data in a small range is not dark


def test_dicom_monochrome1_is_inverted() -> None:
    raw = np.full((40, 40), 100, np.uint16)
    raw[:, 20:] = 4000  # bright in the stored data
    rgb = load_image(dicom_bytes(dicom_dataset(raw, photometric="MONOCHROME1")))
    assert (rgb[:, 20:] == 0).all() and (rgb[:, :20] == 255).all()


def test_dicom_rescale_and_window() -> None:
    raw = gradient(40, 64, 0, 4095)
    ds = dicom_dataset(
        raw,
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=[1000, 40],  # multi-valued: the first window is used
        WindowWidth=[2000, 400],
    )
    rgb = load_image(dicom_bytes(ds))
    modality = raw.astype(float) * 2 - 1024
    expected = np.clip(((modality - 999.5) / 1999 + 0.5), 0, 1) * 255
    assert np.abs(rgb[..., 0].astype(float) - expected).max() <= 1


def test_dicom_multiframe_returns_first_frame() -> None:
    frames = np.stack([gradient(40, 40, 0, 4000), gradient(40, 40, 0, 4000).T.copy()])
    ds = dicom_dataset(frames)
    assert ds.NumberOfFrames == 2
    rgb = load_image(dicom_bytes(ds))
    assert (rgb[:, 0] == 0).all() and (rgb[:, -1] == 255).all()  # left-to-right ramp


def test_dicom_signed_16_bit() -> None:
    raw = gradient(40, 40, 0, 2000).astype(np.int16) - 1000
    rgb = load_image(dicom_bytes(dicom_dataset(raw, bits_stored=16)))
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255


def test_dicom_rgb() -> None:
    colour = noise(40, 40, 3)
    rgb = load_image(dicom_bytes(dicom_dataset(colour, photometric="RGB", bits_stored=8)))
    np.testing.assert_array_equal(rgb, colour)


def test_dicom_without_preamble() -> None:
    ds = dicom_dataset(gradient(40, 40, 0, 4000))
    del ds.file_meta
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=True, little_endian=True)
    rgb = load_image(buffer.getvalue(), name="old.dcm")
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255


def test_dicom_is_detected_even_with_an_image_suffix(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    path.write_bytes(dicom_bytes(dicom_dataset(gradient(40, 40, 0, 4000))))
    assert_rgb(load_image(path), 40, 40)


def compressed_dicom(transfer_syntax: str, fragment: bytes) -> bytes:
    ds = dicom_dataset(gradient(40, 40, 0, 4000))
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.PixelData = encapsulate([fragment])
    return dicom_bytes(ds)


def dicom_failures() -> list[object]:
    """Cases of DICOM files that must be refused: (content, expected message part)."""
    bomb = dicom_dataset(gradient(40, 40, 0, 4000))
    bomb.Rows = bomb.Columns = 60_000
    complete = dicom_bytes(dicom_dataset(gradient(64, 64, 0, 4000)))
    garbage = b"garbage" * 20
    return [
        pytest.param(
            dicom_bytes(dicom_dataset(None)), "contains no pixel data", id="no-pixel-data"
        ),
        pytest.param(
            compressed_dicom(JPEG2000Lossless, b"\xff\x4f\xff\x51" + garbage),
            "1.2.840.10008.1.2.4.90",
            id="jpeg2000-garbage",
        ),
        # Decodable or not depending on installed plugins; refused either way.
        pytest.param(
            compressed_dicom(JPEGLSLossless, b"\xff\xd8\xff\xf7" + garbage),
            "1.2.840.10008.1.2.4.80",
            id="jpeg-ls",
        ),
        pytest.param(dicom_bytes(bomb), "60000x60000 px", id="bomb"),
        pytest.param(complete[:-3000], "could not be decoded", id="truncated-pixels"),
        pytest.param(complete[:200], "DICOM", id="truncated-header"),
        pytest.param(
            dicom_bytes(dicom_dataset(np.full((40, 40), 77, np.uint16))), "is blank", id="blank"
        ),
    ]


@pytest.mark.parametrize(("content", "expected"), dicom_failures())
def test_dicom_failures_never_show_patient_data(
    content: bytes, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InvalidImageError) as info:
            load_image(content, name="study.dcm")
    message = str(info.value)
    assert message.startswith("study.dcm")
    assert expected in message
    everything = " ".join([message, caplog.text, *(str(w.message) for w in caught)])
    for secret in ("Doe", "Jane", PATIENT_ID, "19700101", "St Example"):
        assert secret not in everything
    assert info.value.__cause__ is None  # no pydicom exception rides along in a traceback


def test_describe_dicom_redacts_identifying_tags(tmp_path: Path) -> None:
    ds = dicom_dataset(gradient(40, 40, 0, 4000), WindowCenter=1000, WindowWidth=2000)
    ds.ReferringPhysicianName = "House^Gregory"
    ds.add_new(0x00091001, "LO", "private vendor note")
    path = tmp_path / "header.dcm"
    path.write_bytes(dicom_bytes(ds))
    header = describe_dicom(path)
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "InstitutionName",
        "StudyDate",
        "AccessionNumber",
        "ReferringPhysicianName",
        "SOPInstanceUID",
        "(0009,1001)",
    ):
        assert header[keyword] == "<redacted>", keyword
    assert header["Modality"] == "DX"
    assert header["Rows"] == "40" and float(header["WindowCenter"]) == 1000
    assert header["TransferSyntaxUID"] == ExplicitVRLittleEndian
    text = repr(header)
    for secret in (
        "Doe",
        PATIENT_ID,
        "19700101",
        "St Example",
        "House",
        "vendor note",
        ds.SOPInstanceUID,
    ):
        assert secret not in text


def test_describe_dicom_refuses_other_files() -> None:
    with pytest.raises(InvalidImageError, match=r"x\.png is not a DICOM file"):
        describe_dicom(encode(Image.fromarray(noise(40, 40)), "PNG"), name="x.png")


def test_redaction_keywords_exist_in_the_dicom_dictionary() -> None:
    unknown = [
        k for k in dicom._IDENTIFYING_KEYWORDS if pydicom.datadict.tag_for_keyword(k) is None
    ]
    assert unknown == []


# --------------------------------------------------------------------------- iter_image_files


def test_iter_image_files(tmp_path: Path) -> None:
    png = encode(Image.fromarray(noise(40, 40)), "PNG")
    dicom = dicom_bytes(dicom_dataset(gradient(40, 40, 0, 4000)))
    files = {
        "b.png": png,
        "a.JPG": png,
        "notes.txt": b"hello",
        "IM0001": dicom,
        "1.2.840.113619.2.1": dicom,
        "DICOMDIR": dicom,
        ".hidden.png": png,
        ".cache/c.png": png,
        "sub/deeper/d.tif": png,
        "sub/e.dcm": dicom,
    }
    for relative, content in files.items():
        target = tmp_path / "scans" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    explicit_txt = tmp_path / "scans" / "notes.txt"
    missing = tmp_path / "missing.png"
    found = iter_image_files(
        [tmp_path / "scans", explicit_txt, missing, tmp_path / "scans" / "b.png"]
    )
    names = [p.relative_to(tmp_path).as_posix() for p in found]
    assert names == [
        "scans/1.2.840.113619.2.1",
        "scans/IM0001",
        "scans/a.JPG",
        "scans/b.png",
        "scans/sub/e.dcm",
        "scans/sub/deeper/d.tif",
        "scans/notes.txt",
        "missing.png",
    ]
    assert iter_image_files([str(tmp_path / "scans")]) == found[:6]


def test_supported_suffixes() -> None:
    assert {".jpg", ".png", ".dcm", ".tiff", ".gif", ".bmp"} <= SUPPORTED_SUFFIXES
    assert all(s == s.lower() and s.startswith(".") for s in SUPPORTED_SUFFIXES)


# --------------------------------------------------------------------------- properties


def assert_rgb_or_invalid(data: bytes) -> np.ndarray | None:
    try:
        result = load_image(data, name="fuzz")
    except InvalidImageError as error:
        assert str(error).startswith("fuzz")
        return None
    assert result.ndim == 3 and result.shape[2] == 3 and result.dtype == np.uint8
    assert result.flags.c_contiguous
    return result


MAGIC_PREFIXES = [
    b"",
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"II*\x00",
    b"MM\x00*",
    b"BM",
    b"\x08\x00",
    bytes(128) + b"DICM",
    b"PK\x03\x04",
]

fuzz_settings = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@fuzz_settings
@given(prefix=st.sampled_from(MAGIC_PREFIXES), body=st.binary(max_size=600))
def test_random_bytes_give_an_array_or_invalid_image(prefix: bytes, body: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about odd EXIF in garbage; irrelevant here
        assert_rgb_or_invalid(prefix + body)


def encode_random(fmt: str, mode: str, height: int, width: int, seed: int) -> bytes:
    """Random noise of the given size, in ``mode``, encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    if fmt == "DICOM":
        return dicom_bytes(dicom_dataset(rng.integers(0, 4096, (height, width)).astype(np.uint16)))
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.uint16))
    elif mode == "F":
        image = Image.fromarray(rng.normal(size=(height, width)).astype(np.float32), "F")
    else:
        rgba = rng.integers(0, 256, (height, width, 4)).astype(np.uint8)
        image = Image.fromarray(rgba, "RGBA").convert(mode)
    return encode(image, fmt)


FORMAT_MODES = (
    [("PNG", m) for m in ("L", "LA", "RGB", "RGBA", "P", "I;16", "1")]
    + [("JPEG", m) for m in ("L", "RGB", "CMYK")]
    + [("BMP", m) for m in ("L", "RGB", "P", "1")]
    + [("TIFF", m) for m in ("L", "RGB", "RGBA", "I;16", "F", "CMYK")]
    + [("GIF", m) for m in ("L", "P")]
    + [("DICOM", "MONOCHROME2")]
)


@fuzz_settings
@given(
    format_mode=st.sampled_from(FORMAT_MODES),
    height=st.integers(1, 70),
    width=st.integers(1, 70),
    seed=st.integers(0, 2**16),
    damage=st.sampled_from(["none", "truncate", "flip"]),
    where=st.floats(0, 1),
)
def test_random_valid_or_damaged_images(
    format_mode: tuple[str, str], height: int, width: int, seed: int, damage: str, where: float
) -> None:
    fmt, mode = format_mode
    data = bytearray(encode_random(fmt, mode, height, width, seed))
    position = min(len(data) - 1, int(where * len(data)))
    if damage == "truncate":
        del data[position:]
    elif damage == "flip":
        data[position] ^= 0xA5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = assert_rgb_or_invalid(bytes(data))
    if damage == "none" and result is not None:
        assert result.shape[:2] == (height, width)
    if damage == "none" and min(height, width) >= 32 and fmt != "JPEG":
        assert result is not None  # random noise this large is a valid image


def test_a_truncated_jpeg_says_how_much_arrived_not_pillows_buffer_count():
    import io

    import numpy as np
    import pytest
    from PIL import Image

    from fracture.io.images import InvalidImageError, load_image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG")
    data = buffer.getvalue()
    with pytest.raises(InvalidImageError) as caught:
        load_image(data[: len(data) // 2], name="knee.jpg")
    message = str(caught.value)
    assert "not processed" not in message and "truncated" in message
    assert f"{len(data) // 2 // 1024} KB" in message or f"{len(data) // 2 / 1024:.0f} KB" in message
