"""The one verdict and a node that never spins, end to end: storescu -> `fracture dicom listen` -> Orthanc.

Issue 22's cases through the real command-line node and a real Orthanc:

- a study of a photo gets an SR without a Present/Absent code;
- a study without PatientBirthDate is scored;
- a study that always fails (results that cannot be built) moves to ``failed/`` after
  the bounded tries, and the node's CPU goes back to idle;
- a mixed study (one flagged image, one radiograph) takes its finding from the
  radiograph.

The node serves a copy of the tiny test model with a real out-of-distribution gate,
fitted on radiographs; its threshold is set between the radiographs this module sends
and the photo, so which image is flagged is known (the gate's quality is tested
elsewhere; here it is the node's handling of the verdict).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_helpers import (
    Orthanc,
    dx_instance,
    encoded,
    free_port,
    make_study,
    orthanc_available,
    storescu,
    study_pixels,
    wait_for,
    write_study,
)
from pydicom.uid import generate_uid
from test_orthanc import NodeProcess, results_in_orthanc

from fracture.dicom.results import ABSENT, FRACTURE, PRESENT, read_report
from fracture.dicom.spool import read_failures

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not orthanc_available(), reason="needs Orthanc and dcmtk (.ci/run installs them)"
    ),
]

SEED = 11  # the radiographs of this module


def _photo_pixels() -> np.ndarray:
    """Grey noise with a few flat blocks, stored as a 12-bit DX image: nothing like bone."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 4096, (300, 400)).astype(np.uint16)
    image[50:150, 60:200] = 4000
    return image


def _study(pixels: list[np.ndarray], **attributes) -> list[pydicom.Dataset]:
    study_uid, series_uid = generate_uid(), generate_uid()
    return [
        dx_instance(image, study_uid, series_uid, number, **attributes)
        for number, image in enumerate(pixels, start=1)
    ]


@pytest.fixture(scope="module")
def gated_model(tmp_path_factory, tiny_model_dir, fake_imagenet_weights) -> Path:
    """The tiny model with a gate that passes this module's radiographs and flags the photo."""
    from fracture.inference.ood import fit_ood_gate
    from fracture.inference.predictor import Predictor
    from fracture.model.folder import ModelFolder, load_model
    from fracture.model.network import POOL_LAYER

    folder = tmp_path_factory.mktemp("gated") / "model"
    shutil.copytree(tiny_model_dir, folder)
    predictor = Predictor(load_model(folder, fake_imagenet_weights), batch_size=4)
    predictor.ood_gate = None

    def features(images: list[np.ndarray]) -> np.ndarray:
        datasets = _study(images)
        scored = predictor.predict([encoded(ds) for ds in datasets])
        return np.stack([p.features[POOL_LAYER] for p in scored])

    fitting = features(study_pixels(8, seed=0))
    radiographs = features(study_pixels(2, seed=SEED))
    photo = features([_photo_pixels()])
    gate = fit_ood_gate(fitting[:5], fitting[5:], n_components=2)
    inside = float(gate.score(np.concatenate([fitting, radiographs])).max())
    outside = float(gate.score(photo).min())
    assert inside < outside, "the photo must be stranger than every radiograph"
    gate = dataclasses.replace(gate, threshold=(inside + outside) / 2)
    model = ModelFolder(folder)
    gate.save(model.ood_path)
    model.rewrite_card(model.read_card())
    return folder


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, gated_model, fake_imagenet_weights):
    folder = tmp_path_factory.mktemp("pacs-verdicts")
    orthanc = Orthanc(folder / "orthanc", free_port(), free_port())
    node = NodeProcess(
        folder, fake_imagenet_weights, gated_model, f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    )
    try:
        orthanc.start()
        node.start()
        yield orthanc, node
    finally:
        node.kill()
        orthanc.stop()


def _report(orthanc: Orthanc, study: list[pydicom.Dataset]) -> tuple[dict, pydicom.Dataset]:
    found = wait_for(lambda: results_in_orthanc(orthanc, str(study[0].StudyInstanceUID), 1), 120)
    assert found, "no results reached Orthanc"
    reports, _ = found
    report = pydicom.dcmread(io.BytesIO(orthanc.instance_file(reports[0]["ID"])))
    return read_report(report), report


def _codes(items) -> set[str]:
    """Every concept name and value code in an SR content tree."""
    codes: set[str] = set()
    for item in items:
        for keyword in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            for code in item.get(keyword, []):
                codes.add(str(code.CodeValue))
        codes |= _codes(item.get("ContentSequence", []))
    return codes


def test_a_photo_gets_a_report_without_present_or_absent(pacs, tmp_path):
    orthanc, node = pacs
    study = _study([_photo_pixels()])
    assert storescu(node.port, write_study(study, tmp_path / "photo")).returncode == 0
    values, report = _report(orthanc, study)
    assert values["assessed"] is False and "present" not in values, node.log()
    assert "probability" not in values and values["boxes"] == []
    assert values["not_assessed_images"] == [str(study[0].SOPInstanceUID)]
    codes = _codes(report.ContentSequence)
    assert not codes & {FRACTURE.value, PRESENT.value, ABSENT.value}
    assert "NOT ASSESSED" in values["title"] and values["completion"] == "PARTIAL"


def test_a_study_without_patient_birth_date_is_scored(pacs, tmp_path):
    orthanc, node = pacs
    study = make_study(1, seed=SEED)
    del study[0].PatientBirthDate
    assert storescu(node.port, write_study(study, tmp_path / "no-birth-date")).returncode == 0
    values, report = _report(orthanc, study)
    assert values["assessed"] is True and "present" in values, node.log()
    assert "PatientBirthDate" in report and not report.PatientBirthDate


def test_a_mixed_study_takes_its_finding_from_the_assessed_image(pacs, tmp_path, use_fake_weights):
    orthanc, node = pacs
    study = _study([_photo_pixels(), study_pixels(1, seed=SEED)[0]])
    photo, radiograph = study
    assert storescu(node.port, write_study(study, tmp_path / "mixed")).returncode == 0
    found = wait_for(lambda: results_in_orthanc(orthanc, str(photo.StudyInstanceUID), 2), 120)
    assert found, node.log()
    values, _ = _report(orthanc, study)
    assert values["assessed"] is True and "present" in values
    assert values["strongest_image"] == str(radiograph.SOPInstanceUID)
    assert values["not_assessed_images"] == [str(photo.SOPInstanceUID)]
    assert values["completion"] == "PARTIAL"
    # the probability is the radiograph's own, whatever the photo scored
    from fracture.cli.main import main

    out = tmp_path / "predict.csv"
    folder = tmp_path / "mixed"
    assert main(["predict", str(folder), "--model", str(node.model), "--out", str(out)]) == 0
    rows = {Path(row["path"]).stem: row for row in csv.DictReader(out.open())}
    assert rows[str(photo.SOPInstanceUID)]["prediction"] == "not_assessed"
    assessed = rows[str(radiograph.SOPInstanceUID)]
    assert values["probability"] == pytest.approx(float(assessed["probability"]), abs=1e-5)
    assert values["present"] is (assessed["prediction"] == "fracture")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime, every thread
    return ticks / os.sysconf("SC_CLK_TCK")


def test_a_study_that_always_fails_moves_to_failed_and_the_node_goes_idle(pacs, tmp_path):
    orthanc, node = pacs
    # The node takes the image (it decodes), but no try can build its results: "X" is not
    # one of the Patient's Sex values DICOM allows (M, F, O), and highdicom refuses to
    # copy it into the Secondary Capture and the SR. Should the results one day blank such
    # a value instead, this test needs another study that cannot be scored.
    study = make_study(1, seed=SEED)
    study[0].PatientSex = "X"
    uid = str(study[0].StudyInstanceUID)
    started = time.monotonic()
    assert storescu(node.port, write_study(study, tmp_path / "broken")).returncode == 0
    # 3 tries, 10 s then 20 s apart (NodeConfig's defaults), after the 2 s quiet period
    assert wait_for(lambda: read_failures(node.spool), 150), node.log()
    elapsed = time.monotonic() - started
    (record,) = read_failures(node.spool)
    assert record["attempts"] == 3 and record["instances"] == 1
    assert elapsed >= 25, "the tries must back off, not follow each other at once"
    reason = record["reason"]
    assert "unexpected" not in reason.lower() and "Error" not in reason, reason
    assert list(Path(record["folder"]).glob("*.dcm")), "nothing received is deleted"
    # idle: at most 5% of one core over 6 s, with nothing left to do
    before, wall = _cpu_seconds(node.process.pid), time.monotonic()
    time.sleep(6)
    used = _cpu_seconds(node.process.pid) - before
    share = used / (time.monotonic() - wall)
    print(f"\nfailed after {elapsed:.0f} s; node CPU afterwards {share:.1%} of one core")
    assert share < 0.05, share
    assert results_in_orthanc(orthanc, uid, 1) is None
    assert node.process.poll() is None
