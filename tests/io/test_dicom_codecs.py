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


# --------------------------------------------------------------------------------------
# Broken files: every failure is said in words, never "unexpected" or an exception's name


def _broken_dicom_files() -> dict[str, bytes]:
    """DICOM files broken in every way a PACS export or a damaged disk has produced."""
    from pydicom import config

    settings = config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = config.IGNORE
    try:
        return _build_broken_dicom_files()
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def _build_broken_dicom_files() -> dict[str, bytes]:
    from pydicom.dataelem import DataElement
    from pydicom.encaps import encapsulate
    from pydicom.uid import ImplicitVRLittleEndian

    def base() -> Dataset:
        return dx_dataset(radiograph_pixels(12), 12)

    def encode(ds: Dataset) -> bytes:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    files: dict[str, bytes] = {}

    def variant(name: str, change) -> None:
        ds = base()
        change(ds)
        files[name] = encode(ds)

    def set_element(keyword: str, vr: str, value):
        def change(ds: Dataset) -> None:
            from pydicom.datadict import tag_for_keyword
            from pydicom.dataelem import RawDataElement
            from pydicom.tag import Tag

            tag = Tag(tag_for_keyword(keyword))
            if isinstance(value, str):  # kept as raw bytes: pydicom would refuse the text
                raw = value.encode() + b" " * (len(value) % 2)
                ds._dict[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)
            else:
                ds[tag] = DataElement(tag, vr, value)

        return change

    variant("empty pixel data", set_element("PixelData", "OW", b""))
    variant("pixel data of no value", set_element("PixelData", "OW", None))
    variant("no pixel data", lambda ds: delattr(ds, "PixelData"))
    variant(
        "empty float pixel data",
        lambda ds: (delattr(ds, "PixelData"), set_element("FloatPixelData", "OF", b"")(ds)),
    )
    for keyword in (
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "PixelRepresentation",
        "HighBit",
    ):
        variant(f"no {keyword}", lambda ds, k=keyword: delattr(ds, k))
    variant("zero rows", lambda ds: setattr(ds, "Rows", 0))
    variant("zero columns", lambda ds: setattr(ds, "Columns", 0))
    variant("bits allocated 7", lambda ds: setattr(ds, "BitsAllocated", 7))
    variant("bits allocated 0", lambda ds: setattr(ds, "BitsAllocated", 0))
    variant("bits stored above allocated", lambda ds: setattr(ds, "BitsStored", 20))
    variant("three samples, grey", lambda ds: setattr(ds, "SamplesPerPixel", 3))
    variant("unknown photometric", lambda ds: setattr(ds, "PhotometricInterpretation", "FOO"))
    variant(
        "palette without a table",
        lambda ds: setattr(ds, "PhotometricInterpretation", "PALETTE COLOR"),
    )
    variant("YBR with one sample", lambda ds: setattr(ds, "PhotometricInterpretation", "YBR_FULL"))
    variant("pixel representation 7", lambda ds: setattr(ds, "PixelRepresentation", 7))
    variant("frames zero", set_element("NumberOfFrames", "IS", "0"))
    variant("frames not a number", set_element("NumberOfFrames", "IS", "abc"))
    variant("window not a number", set_element("WindowCenter", "DS", "abc"))
    variant(
        "window width zero",
        lambda ds: (setattr(ds, "WindowCenter", 100), setattr(ds, "WindowWidth", 0)),
    )
    variant("rescale not a number", set_element("RescaleSlope", "DS", "abc"))
    variant(
        "rescale zero",
        lambda ds: (setattr(ds, "RescaleSlope", 0), setattr(ds, "RescaleIntercept", 0)),
    )
    variant("truncated pixel data", lambda ds: setattr(ds, "PixelData", ds.PixelData[:100]))
    variant("odd pixel data", lambda ds: setattr(ds, "PixelData", ds.PixelData + b"\x00\x01\x02"))
    good = encode(base())
    explicit = str(ExplicitVRLittleEndian).encode() + b"\x00"  # 20 bytes in the file meta
    assert explicit in good
    files["private transfer syntax"] = good.replace(explicit, b"1.2.3.4.5.6.7.8.901\x00", 1)
    files["implicit syntax named, explicit data"] = good.replace(
        explicit, str(ImplicitVRLittleEndian).encode().ljust(20, b"\x00"), 1
    )

    def compressed(syntax):
        def change(ds: Dataset) -> None:
            ds.file_meta.TransferSyntaxUID = syntax
            ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + b"garbage" * 20])

        return change

    for syntax in (JPEGBaseline8Bit, JPEGLossless, JPEGLSLossless, JPEG2000Lossless, RLELossless):
        variant(f"garbage {syntax.name}", compressed(syntax))
    files["header then zeros"] = good[:200] + b"\x00" * 50
    files["truncated file"] = good[: len(good) // 2]
    files["only the preamble"] = good[:132]
    files["header cut in an element"] = good[:200]
    no_meta = base()
    no_meta.file_meta = FileMetaDataset()
    buffer = io.BytesIO()
    no_meta.save_as(buffer, implicit_vr=False, little_endian=True)
    files["no transfer syntax"] = buffer.getvalue()
    return files


def test_every_broken_dicom_gets_a_message_in_words() -> None:
    import re

    exception_name = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Warning)\b")
    problems = []
    for name, data in _broken_dicom_files().items():
        try:
            load_image(data, name="the file")
        except InvalidImageError as error:
            message = str(error)
            if "unexpected" in message.lower() or exception_name.search(message):
                problems.append(f"{name}: {message}")
            assert message.startswith("the file"), message
        # Some damage is harmless (a decodable image): no message to judge.
    assert not problems, "\n".join(problems)


def test_empty_pixel_data_says_so() -> None:
    files = _broken_dicom_files()
    for name in ("empty pixel data", "pixel data of no value", "empty float pixel data"):
        with pytest.raises(InvalidImageError, match="empty"):
            load_image(files[name], name="the file")
