"""Every transfer syntax a PACS sends decodes to the pixels of its uncompressed twin.

The compressed twins are made inside the tests: with pydicom's own encoders
(RLE, JPEG-LS, JPEG 2000, deflate) and with dcmtk's ``dcmcjpeg`` for the JPEG
family, which pydicom cannot encode. Lossless syntaxes must match exactly;
lossy ones within a small error on the 0-255 display scale.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from fracture.io.images import InvalidImageError, iter_image_files, load_image

# Largest mean absolute difference (0-255 scale) accepted from a lossy codec.
LOSSY_MEAN_ERROR = 2.0
LOSSY_MAX_ERROR = 24


def radiograph_pixels(bits: int, seed: int = 0) -> np.ndarray:
    """A smooth 'limb' with noise, using the full range of ``bits``-bit values."""
    rng = np.random.default_rng(seed)
    height, width = 96, 80
    y, x = np.mgrid[0:height, 0:width]
    bone = np.exp(-(((x - 40) / 10.0) ** 2)) * 0.7 + 0.2 * (y / height)
    noisy = bone + rng.normal(0, 0.02, bone.shape)
    top = 2**bits - 1
    return (noisy.clip(0, 1) * top).round().astype(np.uint8 if bits <= 8 else np.uint16)


def dx_dataset(pixels: np.ndarray, bits: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "DX"
    ds.set_pixel_data(pixels, "MONOCHROME2", bits)
    return ds


def to_bytes(ds: Dataset, **kwargs) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, **kwargs)
    return buffer.getvalue()


def pydicom_twin(ds: Dataset, syntax: str, **kwargs) -> bytes:
    twin = dcmread(io.BytesIO(to_bytes(ds)))
    twin.compress(syntax, **kwargs)
    return to_bytes(twin)


def deflated_twin(ds: Dataset) -> bytes:
    twin = dcmread(io.BytesIO(to_bytes(ds)))
    twin.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return to_bytes(twin)


def dcmtk_twin(tmp_path: Path, ds: Dataset, options: list[str]) -> bytes:
    if shutil.which("dcmcjpeg") is None:
        pytest.skip("dcmtk (dcmcjpeg) is not installed; .ci/run installs it")
    source, target = tmp_path / "plain.dcm", tmp_path / "jpeg.dcm"
    source.write_bytes(to_bytes(ds))
    subprocess.run(
        ["dcmcjpeg", *options, str(source), str(target)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return target.read_bytes()


# (id, bits stored, how to make the twin, expected transfer syntax, lossless)
CASES = [
    ("rle", 12, lambda tmp, ds: pydicom_twin(ds, RLELossless), RLELossless, True),
    ("deflated", 12, lambda tmp, ds: deflated_twin(ds), DeflatedExplicitVRLittleEndian, True),
    (
        "jpeg-ls-lossless",
        12,
        lambda tmp, ds: pydicom_twin(ds, JPEGLSLossless),
        JPEGLSLossless,
        True,
    ),
    (
        "jpeg-ls-near-lossless",
        12,
        lambda tmp, ds: pydicom_twin(ds, JPEGLSNearLossless, jls_error=3),
        JPEGLSNearLossless,
        False,
    ),
    (
        "jpeg2000-lossless",
        12,
        lambda tmp, ds: pydicom_twin(ds, JPEG2000Lossless),
        JPEG2000Lossless,
        True,
    ),
    (
        "jpeg2000-lossy",
        12,
        lambda tmp, ds: pydicom_twin(ds, JPEG2000, j2k_cr=[4], use_mct=False),
        JPEG2000,
        False,
    ),
    ("jpeg-lossless-sv1", 12, lambda tmp, ds: dcmtk_twin(tmp, ds, ["+e1"]), JPEGLosslessSV1, True),
    (
        "jpeg-lossless",
        12,
        lambda tmp, ds: dcmtk_twin(tmp, ds, ["+el", "+sv", "6"]),
        JPEGLossless,
        True,
    ),
    (
        "jpeg-baseline",
        8,
        lambda tmp, ds: dcmtk_twin(tmp, ds, ["+eb", "+q", "95"]),
        JPEGBaseline8Bit,
        False,
    ),
    (
        "jpeg-extended-12bit",
        12,
        lambda tmp, ds: dcmtk_twin(tmp, ds, ["+ee", "+q", "95"]),
        JPEGExtended12Bit,
        False,
    ),
]


@pytest.mark.parametrize(
    ("bits", "make", "syntax", "lossless"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_compressed_twin_decodes_to_the_same_pixels(tmp_path, bits, make, syntax, lossless):
    ds = dx_dataset(radiograph_pixels(bits), bits)
    plain = load_image(to_bytes(ds), name="plain.dcm")
    twin_bytes = make(tmp_path, ds)
    assert (
        dcmread(io.BytesIO(twin_bytes), stop_before_pixels=True).file_meta.TransferSyntaxUID
        == syntax
    )
    twin = load_image(twin_bytes, name="twin.dcm")
    assert twin.shape == plain.shape == (96, 80, 3)
    error = np.abs(twin.astype(int) - plain.astype(int))
    if lossless:
        assert error.max() == 0
    else:
        assert error.mean() <= LOSSY_MEAN_ERROR and error.max() <= LOSSY_MAX_ERROR
        assert error.max() > 0 or syntax == JPEGBaseline8Bit  # the codec was really lossy


def test_pixel_data_longer_than_the_header_declares_is_refused() -> None:
    ds = dx_dataset(radiograph_pixels(12), 12)
    ds.Rows = 48  # damaged header: half the image is "excess padding" to pydicom
    with pytest.raises(InvalidImageError, match=r"15360 bytes long.*declares 7680 bytes"):
        load_image(to_bytes(ds), name="damaged.dcm")


def test_pixel_data_shorter_than_the_header_declares_is_refused() -> None:
    ds = dx_dataset(radiograph_pixels(12), 12)
    ds.PixelData = ds.PixelData[:4000]
    with pytest.raises(InvalidImageError, match=r"4000 bytes long.*declares 15360 bytes"):
        load_image(to_bytes(ds), name="short.dcm")


def test_one_pad_byte_is_accepted() -> None:
    pixels = radiograph_pixels(8)[:, :79]  # 96 x 79 bytes: odd, padded to even on disk
    ds = dx_dataset(pixels, 8)
    assert len(ds.PixelData) % 2 == 0 or len(to_bytes(ds)) % 2 == 0
    assert load_image(to_bytes(ds), name="odd.dcm").shape == (96, 79, 3)


def test_folder_walk_finds_dicom_without_preamble(tmp_path: Path) -> None:
    ds = dx_dataset(radiograph_pixels(12), 12)
    buffer = io.BytesIO()
    bare = dcmread(io.BytesIO(to_bytes(ds)))
    del bare.file_meta
    bare.preamble = None
    bare.save_as(buffer, implicit_vr=True, little_endian=True)
    named_by_uid = tmp_path / "export" / "1.2.840.113619.2.55.3.1"
    named_by_uid.parent.mkdir()
    named_by_uid.write_bytes(buffer.getvalue())
    assert buffer.getvalue()[128:132] != b"DICM"
    (tmp_path / "export" / "notes").write_bytes(b"radiology notes, not an image\n")
    (tmp_path / "export" / "blob").write_bytes(bytes(range(256)) * 4)
    assert iter_image_files([tmp_path]) == [named_by_uid]
    assert load_image(named_by_uid).shape == (96, 80, 3)


def test_looks_like_dicom_recognises_part10_and_bare_files_and_nothing_else() -> None:
    from fracture.io.dicom import looks_like_dicom

    ds = dx_dataset(radiograph_pixels(12), 12)
    bare = dcmread(io.BytesIO(to_bytes(ds)))
    del bare.file_meta
    bare.preamble = None
    buffer = io.BytesIO()
    bare.save_as(buffer, implicit_vr=True, little_endian=True)
    assert buffer.getvalue()[128:132] != b"DICM"
    assert looks_like_dicom(to_bytes(ds))
    assert looks_like_dicom(memoryview(buffer.getvalue()))  # an upload's buffer, not a copy
    assert not looks_like_dicom(b"radiology notes, not an image\n" * 10)
    assert not looks_like_dicom(bytes(range(256)) * 4)
    assert not looks_like_dicom(b"\x89PNG\r\n\x1a\n" + bytes(200))
