"""Radiograph studies as DICOM, and a real Orthanc PACS, for the hospital-integration tests.

Studies are made from FracAtlas radiographs where ``../shared`` has them and
from rendered phantoms otherwise. Orthanc runs on free localhost ports with a
temporary configuration and storage, and is always stopped.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import SHARED

PATIENT_NAME = "Testpatient^Jane"
PATIENT_ID = "PID-4711-SECRET"
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
SC_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def study_pixels(count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` grey radiographs (uint16, 12 bits used): FracAtlas where present, else phantoms."""
    fracatlas = SHARED / "data" / "fracatlas" / "val"
    files = (
        sorted(fracatlas.glob("*/*.jpg"))[seed * count : seed * count + count]
        if fracatlas.is_dir()
        else []
    )
    images = []
    if len(files) == count:
        for path in files:
            grey = Image.open(path).convert("L")
            grey.thumbnail((512, 512))  # keeps the transfers and the tests quick
            images.append(np.asarray(grey, np.uint16) * 16)
        return images
    from fracture.data.phantoms import render_phantom

    rng = np.random.default_rng(seed)
    for index in range(count):
        phantom = render_phantom(rng, 160, fractured=index % 2 == 0)
        images.append(phantom.image.astype(np.uint16) * 16)
    return images


def dx_instance(
    pixels: np.ndarray, study_uid: str, series_uid: str, number: int, **attributes: Any
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = "20250102"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC123"
    ds.ReferringPhysicianName = ""
    ds.Modality = "DX"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.PatientOrientation = ["L", "F"]
    ds.Manufacturer = "Test"
    ds.set_pixel_data(pixels, "MONOCHROME2", 12)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def make_study(count: int, seed: int = 0) -> list[Dataset]:
    study_uid, series_uid = generate_uid(), generate_uid()
    return [
        dx_instance(pixels, study_uid, series_uid, number)
        for number, pixels in enumerate(study_pixels(count, seed), start=1)
    ]


def write_study(datasets: list[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass
class Orthanc:
    """A running Orthanc with REST on ``http_port`` and DICOM on ``dicom_port``."""

    folder: Path
    http_port: int
    dicom_port: int
    ae_title: str = "ORTHANC"
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(
        self, modalities: dict[str, list[Any]] | None = None, lua_scripts: list[str] | None = None
    ) -> None:
        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "fracture-test",
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomModalities": modalities or {},
            "HttpsVerifyPeers": False,
            "Plugins": [str(ORTHANC_PLUGINS / "libOrthancDicomWeb.so")]
            if (ORTHANC_PLUGINS / "libOrthancDicomWeb.so").is_file()
            else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StorageCompression": False,
            "ConcurrentJobs": 1,
            "LuaScripts": lua_scripts or [],
        }
        config_path = self.folder / "orthanc.json"
        config_path.write_text(json.dumps(config))
        with open(self.folder / "orthanc.log", "ab") as log:
            self.process = subprocess.Popen(
                ["Orthanc", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()}")
            try:
                self.get("/system")
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not start within 60 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as reply:
            body = reply.read()
        return json.loads(body) if reply.headers.get_content_type() == "application/json" else body

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance Orthanc holds for ``study_uid``, with its main tags."""
        request = urllib.request.Request(
            self.url + "/tools/find",
            method="POST",
            data=json.dumps({"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}).encode(),
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            studies = json.loads(reply.read())
        if not studies:
            return []
        instances = self.get(f"/studies/{studies[0]}/instances")
        return [
            self.get(f"/instances/{i['ID']}/simplified-tags") | {"ID": i["ID"]} for i in instances
        ]

    def instance_file(self, orthanc_id: str) -> bytes:
        return self.get(f"/instances/{orthanc_id}/file")


def orthanc_available() -> bool:
    return shutil.which("Orthanc") is not None and shutil.which("storescu") is not None


def storescu(
    port: int, files: list[Path], *, calling: str = "PACS", called: str = "FRACTURE"
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["storescu", "-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def wait_for(condition, timeout: float, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (OSError, urllib.error.URLError):
            value = None
        if value:
            return value
        time.sleep(interval)
    return None
