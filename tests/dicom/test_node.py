"""The DICOM node in-process: refusals, scoring once, result objects, restart and delivery.

The node runs on a free localhost port with the tiny test model; a pynetdicom
SCU plays the PACS. The end-to-end test against a real Orthanc is in
dicom/test_orthanc.py.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_helpers import (
    COMPREHENSIVE_SR,
    DX_SOP_CLASS,
    PATIENT_ID,
    PATIENT_NAME,
    SC_SOP_CLASS,
    free_port,
    make_study,
    wait_for,
)
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from fracture.dicom.node import Destination, DicomNode, NodeConfig
from fracture.dicom.results import BANNER, TYPE_2_COPIED, evidence_region, read_report
from fracture.dicom.spool import read_summaries

pynetdicom = pytest.importorskip("pynetdicom")


def start_node(predictor, tmp_path: Path, **overrides) -> DicomNode:
    settings = {
        "spool": tmp_path / "spool",
        "port": free_port(),
        "host": "127.0.0.1",
        "allowed_callers": frozenset({"PACS"}),
        "store": tmp_path / "store",
        "quiet_seconds": 0.5,
        "retry_seconds": 0.5,
    }
    config = NodeConfig(**(settings | overrides))
    node = DicomNode(config, predictor)
    node.start()
    return node


def send(node: DicomNode, datasets, calling: str = "PACS") -> list[int]:
    """C-STORE ``datasets`` to the node; the status of each, or [] if the association failed."""
    ae = pynetdicom.AE(ae_title=calling)
    ae.add_requested_context(DX_SOP_CLASS, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ExplicitVRLittleEndian)  # CT
    assoc = ae.associate("127.0.0.1", node.config.port, ae_title=node.config.ae_title)
    if not assoc.is_established:
        return []
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def rounds(node: DicomNode) -> list[dict]:
    return read_summaries(node.config.spool)


def test_study_is_scored_once_into_a_report_and_one_capture_per_image(
    tiny_predictor, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    node = start_node(tiny_predictor, tmp_path)
    try:
        study = make_study(3)
        assert send(node, study) == [0, 0, 0]
        assert send(node, study[:1]) == [0]  # resent image: acknowledged, not rescored
        assert wait_for(
            lambda: len(rounds(node)) == 1 and len(list((tmp_path / "store").rglob("*.dcm"))) == 4,
            60,
        )
        time.sleep(1.5)  # a second round would have appeared by now
        assert len(rounds(node)) == 1
    finally:
        node.stop()
    files = sorted((tmp_path / "store").rglob("*.dcm"))
    objects = [pydicom.dcmread(path) for path in files]
    captures = [o for o in objects if o.SOPClassUID == SC_SOP_CLASS]
    (report,) = [o for o in objects if o.SOPClassUID == COMPREHENSIVE_SR]
    assert len(captures) == 3
    sources = {str(ds.SOPInstanceUID) for ds in study}
    for capture in captures:
        assert capture.StudyInstanceUID == study[0].StudyInstanceUID
        assert capture.SeriesInstanceUID != study[0].SeriesInstanceUID
        assert capture.PatientID == PATIENT_ID and str(capture.PatientName) == PATIENT_NAME
        assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID in sources
        assert capture.BurnedInAnnotation == "YES"
    assert report.StudyInstanceUID == study[0].StudyInstanceUID and report.PatientID == PATIENT_ID
    values = read_report(report)
    expected = tiny_predictor.predict([_encode(ds) for ds in study])
    best = max(expected, key=lambda p: p.probability)
    assert values["probability"] == pytest.approx(best.probability, abs=1e-6)
    assert values["present"] == (best.probability >= tiny_predictor.threshold)
    assert values["model_name"] == "tiny-test" and values["model_version"] == "1"
    assert values["strongest_image"] in sources
    assert "out_of_distribution" in values
    # identifiers are in the results, never in the logs
    assert PATIENT_ID not in caplog.text and "Testpatient" not in caplog.text
    assert node.health()["scored_studies"] == 1


def _encode(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_refusals_give_error_statuses_and_the_node_keeps_serving(tiny_predictor, tmp_path):
    node = start_node(tiny_predictor, tmp_path)
    try:
        assert send(node, make_study(1), calling="STRANGER") == []  # association rejected
        good, no_pixels, truncated, ct = make_study(4, seed=1)
        del no_pixels.PixelData
        truncated.PixelData = truncated.PixelData[:1000]
        ct.Modality = "CT"
        ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        statuses = send(node, [no_pixels, truncated, ct, good])
        assert statuses[0] not in (0,) and statuses[0] >= 0xA000
        assert statuses[1] >= 0xA000 and statuses[2] >= 0xA000
        assert statuses[3] == 0
        assert node.health()["refused"] == 3
        assert wait_for(lambda: len(rounds(node)) == 1, 60)
    finally:
        node.stop()
    assert rounds(node)[0]["instances"] and len(rounds(node)[0]["images"]) == 1


def test_kill_before_scoring_loses_nothing_and_scores_once(tiny_predictor, tmp_path):
    study = make_study(4, seed=2)
    first = start_node(tiny_predictor, tmp_path, quiet_seconds=3600)  # never scores by itself
    assert send(first, study[:2]) == [0, 0]
    # A crash: the server goes away without stop(), its threads never commit.
    first._server.shutdown()
    first._stop.set()
    second = start_node(tiny_predictor, tmp_path, quiet_seconds=3)
    try:
        assert send(second, study[2:] + study[:1]) == [0, 0, 0]
        assert wait_for(lambda: len(rounds(second)) == 1, 60)
        time.sleep(4)  # a second round would have appeared by now
        assert len(rounds(second)) == 1
        assert len(rounds(second)[0]["images"]) == 4
        # a restart after scoring does not score again
        third = DicomNode(second.config, tiny_predictor)
        assert third.spool.pending() == []
    finally:
        second.stop()


def test_forward_destination_down_then_up_gets_everything(tiny_predictor, tmp_path):
    from pynetdicom import AE, StoragePresentationContexts, evt

    received: list[str] = []

    def on_store(event):
        received.append(str(event.dataset.SOPClassUID))
        return 0

    port = free_port()
    node = start_node(
        tiny_predictor, tmp_path, store=None, forward=Destination.parse(f"ARCHIVE@127.0.0.1:{port}")
    )
    try:
        assert send(node, make_study(2, seed=3)) == [0, 0]
        assert wait_for(lambda: node.counters.failed_deliveries >= 1, 60)
        assert received == [] and len(rounds(node)) == 1
        archive = AE(ae_title="ARCHIVE")
        archive.supported_contexts = StoragePresentationContexts
        server = archive.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )
        try:
            assert wait_for(lambda: len(received) == 3, 60)
        finally:
            server.shutdown()
    finally:
        node.stop()
    assert sorted(received) == sorted([SC_SOP_CLASS] * 2 + [COMPREHENSIVE_SR])
    assert node.spool.undelivered(node.config.destinations()[0]) == []


def test_evidence_region_surrounds_the_hottest_blob():
    heat = np.zeros((50, 60), np.float32)
    heat[10:20, 30:45] = 1.0
    heat[40:45, 5:8] = 0.6  # a second, weaker blob is not included
    assert evidence_region(heat) == (30, 10, 44, 19)
    assert evidence_region(np.zeros((5, 5))) is None


def test_secondary_capture_shows_the_banner_and_overlay(tiny_predictor, tmp_path):
    node = start_node(tiny_predictor, tmp_path)
    try:
        study = make_study(1, seed=4)
        assert send(node, study) == [0]
        assert wait_for(lambda: list((tmp_path / "store").rglob("sc-*.dcm")), 60)
    finally:
        node.stop()
    (path,) = (tmp_path / "store").rglob("sc-*.dcm")
    capture = pydicom.dcmread(path).pixel_array
    grey = study[0].pixel_array
    assert capture.shape == (*grey.shape, 3)
    # the banner band is dark with bright red text, the overlay gives colour below it
    band = capture[: capture.shape[0] // 10]
    assert (band[..., 0].astype(int) - band[..., 2].astype(int) > 100).any()
    body = capture[capture.shape[0] // 4 :]
    assert np.abs(body[..., 0].astype(int) - body[..., 2].astype(int)).max() > 30
    assert BANNER.startswith("RESEARCH USE ONLY")


def test_report_and_summary_name_the_body_region_of_a_model_with_a_region_head(
    tiny_predictor, monkeypatch
):
    import numpy as np

    from fracture.dicom.scoring import score_instances, summary_images
    from fracture.inference.region import RegionHead

    study = make_study(2)
    plain = score_instances(tiny_predictor, study, [_encode(ds) for ds in study])
    assert "body_region" not in read_report(plain.objects[-1][1])
    assert all(row["body_region"] is None for row in summary_images(plain))

    # A head that is sure every image shows several regions.
    monkeypatch.setattr(
        tiny_predictor,
        "region_head",
        RegionHead(
            classes=("hand", "mixed"),
            weights=np.zeros((2048, 2), np.float32),
            bias=np.array([0.0, 6.0], np.float32),
        ),
    )
    monkeypatch.setattr(tiny_predictor, "ood_gate", None)
    named = score_instances(tiny_predictor, study, [_encode(ds) for ds in study])
    name, report = named.objects[-1]
    assert report.SOPClassUID == COMPREHENSIVE_SR
    assert read_report(report)["body_region"] == "several regions"
    assert [row["body_region"] for row in summary_images(named)] == ["several regions"] * 2


# --------------------------------------------------------------------------------------
# The one verdict in the report; a node that never spins


def _finding(ds, probability: float, in_distribution: bool):
    from fracture.dicom.results import ImageFinding
    from fracture.inference.verdict import decide

    return ImageFinding(
        str(ds.SOPClassUID),
        str(ds.SOPInstanceUID),
        probability,
        in_distribution,
        (2, 2, 10, 10),
        verdict=decide(probability, 0.5, in_distribution=in_distribution),
    )


def test_a_mixed_study_takes_its_finding_from_the_assessed_image():
    from fracture.dicom.results import StudyFinding, structured_report

    photo, radiograph = make_study(2, seed=5)
    finding = StudyFinding(
        (_finding(photo, 0.95, False), _finding(radiograph, 0.3, True)), 0.5, "m", "1"
    )
    values = read_report(
        pydicom.dcmread(io.BytesIO(_encode(structured_report([photo, radiograph], finding))))
    )
    assert values["assessed"] is True and values["present"] is False
    assert values["probability"] == pytest.approx(0.3)
    assert values["strongest_image"] == str(radiograph.SOPInstanceUID)
    assert values["not_assessed_images"] == [str(photo.SOPInstanceUID)]
    assert values["completion"] == "PARTIAL" and values["verification"] == "UNVERIFIED"
    # every image assessed: a complete report
    both = StudyFinding(
        (_finding(photo, 0.95, True), _finding(radiograph, 0.3, True)), 0.5, "m", "1"
    )
    values = read_report(structured_report([photo, radiograph], both))
    assert values["present"] is True and values["completion"] == "COMPLETE"
    assert values["not_assessed_images"] == []


@pytest.mark.parametrize("keyword", TYPE_2_COPIED)
def test_a_study_missing_a_type_2_attribute_is_scored_with_it_empty(tiny_predictor, keyword):
    from fracture.dicom.scoring import score_instances

    study = make_study(1, seed=6)
    delattr(study[0], keyword)
    scored = score_instances(tiny_predictor, study, [_encode(ds) for ds in study])
    assert scored.finding is not None and len(scored.objects) == 2
    for _, result in scored.objects:
        result = pydicom.dcmread(io.BytesIO(_encode(result)))
        assert keyword in result and not result[keyword].value
    assert keyword not in study[0]  # the source data set is left as it came


def test_a_study_that_always_fails_moves_to_failed_after_bounded_tries(
    tiny_predictor, tmp_path, caplog
):
    from fracture.dicom.spool import FAILURE_FILE, read_failures, retry_failed
    from fracture.views.inbox import failed_studies

    config = NodeConfig(
        spool=tmp_path / "spool", quiet_seconds=0, score_attempts=3, score_backoff_seconds=10
    )
    node = DicomNode(config, tiny_predictor)  # not started: the test drives the scorer's clock
    study = make_study(2, seed=7)
    for ds in study:
        node.spool.receive(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), _encode(ds))
    tries = []

    def broken(pending):
        tries.append(pending.key)
        raise AttributeError("'Dataset' object has no attribute 'Foo'", name="Foo")

    node.score = broken
    outcomes = []
    for step in range(50):  # far more rounds than tries: the node must stop on its own
        for pending in node.spool.pending():
            outcomes.append(node.score_when_due(pending, now=time.time() + step * 100))
    assert len(tries) == 3 and outcomes.count("failed") == 1
    assert node.spool.pending() == []
    (record,) = read_failures(config.spool)
    assert record["attempts"] == 3 and record["instances"] == 2
    assert "lack a DICOM attribute" in record["reason"] and "AttributeError" not in record["reason"]
    assert (Path(record["folder"]) / FAILURE_FILE).is_file()
    assert node.health()["failed_waiting"] == 1 and node.counters.failed_studies == 1
    (listed,) = failed_studies(config.spool, reveal=False)
    assert listed.reason == record["reason"] and listed.patient_name == "••••••"
    assert PATIENT_ID not in caplog.text and PATIENT_ID not in str(node.health())
    # a person retries: the instances go back, nothing was lost, and the next try scores
    assert retry_failed(config.spool, record["study_key"]) == 2
    assert read_failures(config.spool) == []
    del node.score
    (pending,) = node.spool.pending()
    assert node.score_when_due(pending, now=time.time() + 10_000) == "scored"
    assert len(rounds(node)) == 1 and len(rounds(node)[0]["images"]) == 2


def test_backoff_doubles_between_tries(tiny_predictor, tmp_path):
    config = NodeConfig(
        spool=tmp_path / "spool", quiet_seconds=0, score_attempts=4, score_backoff_seconds=10
    )
    node = DicomNode(config, tiny_predictor)
    ds = make_study(1, seed=8)[0]
    node.spool.receive(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), _encode(ds))
    node.score = lambda pending: (_ for _ in ()).throw(ValueError("bad header"))
    (pending,) = node.spool.pending()
    start = time.time() + 1
    assert node.score_when_due(pending, now=start) == "retry"
    assert node.score_when_due(pending, now=start + 9) == "waiting"
    assert node.score_when_due(pending, now=start + 10) == "retry"
    assert node.score_when_due(pending, now=start + 10 + 19) == "waiting"
    assert node.score_when_due(pending, now=start + 10 + 20) == "retry"
