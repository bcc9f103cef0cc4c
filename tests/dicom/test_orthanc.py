"""End to end against a real PACS: dcmtk storescu -> `fracture dicom listen` -> Orthanc.

Orthanc and the node run as separate processes on free localhost ports with
temporary folders, and are always stopped. The node is the real command line
(`python -m fracture dicom listen`), with the tiny test model; a small launcher
points it at the fake ImageNet weights the tiny model was built from.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_helpers import (
    COMPREHENSIVE_SR,
    PATIENT_ID,
    SC_SOP_CLASS,
    Orthanc,
    free_port,
    make_study,
    orthanc_available,
    storescu,
    wait_for,
    write_study,
)

from fracture.dicom.results import read_report
from fracture.dicom.spool import read_summaries

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not orthanc_available(), reason="needs Orthanc and dcmtk (.ci/run installs them)"
    ),
]
ROOT = Path(__file__).resolve().parents[2]

# Runs the real CLI with weight resolution pointed at the test's fake weights.
LAUNCHER = """
import sys
from pathlib import Path
import fracture.model.imagenet as weights
fake = weights.ResolvedWeights(path=Path(sys.argv[1]), sha256="fake", source="explicit")
weights.resolve_imagenet_weights = lambda *args, **kwargs: fake
from fracture.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


class NodeProcess:
    def __init__(self, folder: Path, weights: Path, model: Path, forward: str) -> None:
        self.folder, self.weights, self.model, self.forward = folder, weights, model, forward
        self.port = free_port()
        self.spool = folder / "spool"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        health = self.spool / "health.json"
        health.unlink(missing_ok=True)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
        with open(self.folder / "node.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    LAUNCHER,
                    str(self.weights),
                    "dicom",
                    "listen",
                    "--ae-title",
                    "FRACTURE",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--forward",
                    self.forward,
                    "--allow",
                    "PACS",
                    "--allow",
                    "ORTHANC",
                    "--spool",
                    str(self.spool),
                    "--quiet-seconds",
                    "2",
                    "--retry-seconds",
                    "1",
                    "--model",
                    str(self.model),
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ready = wait_for(
            lambda: (
                self.process.poll() is not None
                or (health.is_file() and json.loads(health.read_text())["status"] == "running")
            ),
            240,
        )
        if not ready or self.process.poll() is not None:
            raise RuntimeError(f"the node did not start:\n{self.log()}")

    def log(self) -> str:
        return (self.folder / "node.log").read_text(errors="replace")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, tiny_model_dir, fake_imagenet_weights):
    """(orthanc, node): Orthanc forwarding nowhere, the node forwarding results to Orthanc."""
    folder = tmp_path_factory.mktemp("pacs")
    orthanc = Orthanc(folder / "orthanc", free_port(), free_port())
    node = NodeProcess(
        folder, fake_imagenet_weights, tiny_model_dir, f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    )
    try:
        orthanc.start()
        node.start()
        yield orthanc, node
    finally:
        node.kill()
        orthanc.stop()


def results_in_orthanc(orthanc: Orthanc, study_uid: str, images: int):
    instances = orthanc.study_instances(study_uid)
    reports = [i for i in instances if i.get("SOPClassUID") == COMPREHENSIVE_SR]
    captures = [i for i in instances if i.get("SOPClassUID") == SC_SOP_CLASS]
    if len(reports) >= 1 and len(captures) >= images:
        return reports, captures
    return None


def test_study_round_trip_through_orthanc(pacs, tmp_path, tiny_model_dir, use_fake_weights):
    orthanc, node = pacs
    study = make_study(4)
    files = write_study(study, tmp_path / "study")
    started = time.monotonic()
    sent = storescu(node.port, files)
    assert sent.returncode == 0, sent.stderr
    found = wait_for(lambda: results_in_orthanc(orthanc, str(study[0].StudyInstanceUID), 4), 120)
    elapsed = time.monotonic() - started
    assert found, node.log()
    print(
        f"\nstudy of 4 images: SR in Orthanc {elapsed:.1f} s after the first image was sent "
        "(quiet period 2 s)"
    )
    reports, captures = found
    assert len(reports) == 1 and len(captures) == 4
    sources = {str(ds.SOPInstanceUID) for ds in study}
    referenced = set()
    for capture in captures:
        data = pydicom.dcmread(io.BytesIO(orthanc.instance_file(capture["ID"])))
        referenced.add(str(data.SourceImageSequence[0].ReferencedSOPInstanceUID))
        pixels = data.pixel_array.astype(int)
        assert pixels.ndim == 3 and np.abs(pixels[..., 0] - pixels[..., 2]).max() > 30  # overlay
    assert referenced == sources
    report = pydicom.dcmread(io.BytesIO(orthanc.instance_file(reports[0]["ID"])))
    assert report.PatientID == study[0].PatientID
    values = read_report(report)
    # the same pixels through `fracture predict`
    from fracture.cli.main import main

    out = tmp_path / "predict.csv"
    assert (
        main(
            ["predict", str(tmp_path / "study"), "--model", str(tiny_model_dir), "--out", str(out)]
        )
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4
    assert values["probability"] == pytest.approx(
        max(float(r["probability"]) for r in rows), abs=1e-6
    )
    assert node.process.poll() is None
    # identifiers travel in the results, never into the node's log
    assert PATIENT_ID not in node.log() and "Testpatient" not in node.log()


def test_unknown_calling_ae_is_refused(pacs, tmp_path):
    _orthanc, node = pacs
    files = write_study(make_study(1, seed=5), tmp_path / "study")
    sent = storescu(node.port, files, calling="STRANGER")
    assert sent.returncode != 0
    assert "reject" in (sent.stdout + sent.stderr).lower()


def test_results_wait_for_orthanc_to_come_back(pacs, tmp_path):
    orthanc, node = pacs
    orthanc.stop()
    try:
        study = make_study(2, seed=6)
        assert storescu(node.port, write_study(study, tmp_path / "study")).returncode == 0
        uid = str(study[0].StudyInstanceUID)
        assert wait_for(lambda: any(s["study_uid"] == uid for s in read_summaries(node.spool)), 120)
        time.sleep(2)  # at least one delivery attempt fails meanwhile
    finally:
        orthanc.start()
    assert wait_for(lambda: results_in_orthanc(orthanc, uid, 2), 120), node.log()


def test_killed_mid_study_loses_nothing_and_scores_once(pacs, tmp_path):
    orthanc, node = pacs
    study = make_study(4, seed=7)
    files = write_study(study, tmp_path / "study")
    assert storescu(node.port, files[:2]).returncode == 0
    node.kill()  # within the 2 s quiet period: nothing scored yet
    node.start()
    assert storescu(node.port, files[1:]).returncode == 0  # the PACS resends from where it broke
    uid = str(study[0].StudyInstanceUID)
    found = wait_for(lambda: results_in_orthanc(orthanc, uid, 4), 120)
    assert found, node.log()
    time.sleep(3)
    reports, captures = results_in_orthanc(orthanc, uid, 4)
    assert len(reports) == 1 and len(captures) == 4
    assert len([s for s in read_summaries(node.spool) if s["study_uid"] == uid]) == 1


def test_orthanc_auto_routes_with_the_readme_configuration(pacs, tmp_path):
    orthanc, node = pacs
    readme_config = json.loads((ROOT / "deploy" / "fracture.json").read_text())
    ((name, (aet, _host, _port)),) = readme_config["DicomModalities"].items()
    orthanc.stop()
    orthanc.start(
        modalities={name: [aet, "127.0.0.1", node.port]},
        lua_scripts=[str(ROOT / "deploy" / "autoroute.lua")],
    )
    try:
        study = make_study(2, seed=9)
        # the modality sends to Orthanc only; Orthanc routes the study to fracture
        sent = storescu(
            orthanc.dicom_port, write_study(study, tmp_path / "study"), called="ORTHANC"
        )
        assert sent.returncode == 0, sent.stderr
        found = wait_for(
            lambda: results_in_orthanc(orthanc, str(study[0].StudyInstanceUID), 2), 120
        )
        assert found, node.log()
        time.sleep(3)  # the results themselves are not routed back to fracture
        reports, captures = results_in_orthanc(orthanc, str(study[0].StudyInstanceUID), 2)
        assert len(reports) == 1 and len(captures) == 2
    finally:
        orthanc.stop()
        orthanc.start()


def test_sigterm_stops_cleanly(pacs):
    _orthanc, node = pacs
    assert node.terminate() == 0
    assert json.loads((node.spool / "health.json").read_text())["status"] == "stopped"
    node.start()  # leave it running for any later test in the module


def test_dicomweb_route_reads_and_stores_back(
    pacs, tmp_path, tiny_model_dir, use_fake_weights, capsys
):
    orthanc, _node = pacs
    from dicom_helpers import ORTHANC_PLUGINS

    if not (ORTHANC_PLUGINS / "libOrthancDicomWeb.so").is_file():
        pytest.skip("needs orthanc-dicomweb (.ci/run installs it)")
    study = make_study(2, seed=8)
    # the study reaches Orthanc straight from the "modality"
    assert (
        storescu(
            orthanc.dicom_port, write_study(study, tmp_path / "study"), called="ORTHANC"
        ).returncode
        == 0
    )
    uid = str(study[0].StudyInstanceUID)
    from fracture.cli.main import main

    assert (
        main(
            [
                "dicom",
                "score",
                "--url",
                f"{orthanc.url}/dicom-web",
                "--study",
                uid,
                "--model",
                str(tiny_model_dir),
            ]
        )
        == 0
    )
    assert "probability" in capsys.readouterr().out
    reports, captures = results_in_orthanc(orthanc, uid, 2)
    assert len(reports) == 1 and len(captures) == 2
    assert (
        main(
            [
                "dicom",
                "score",
                "--url",
                f"{orthanc.url}/dicom-web",
                "--study",
                "1.2.3.4",
                "--model",
                str(tiny_model_dir),
            ]
        )
        == 1
    )
