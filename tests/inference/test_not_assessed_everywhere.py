"""One image the out-of-distribution gate flags, through every output: none gives it a label.

The rule (fracture.inference.verdict): an image the model cannot judge is "not
assessed", with the reason, everywhere: the Predict page, the command line's CSV,
the dashboard's CSV and ZIP, the DICOM Structured Report (parsed back from the data
set), the Secondary Capture's caption and the Inbox row. The image is a generated
non-radiograph (colour noise), and the model's gate is a real one whose threshold
sits below any distance, so it flags every input through the Predictor's own code
path (not a monkeypatched prediction).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_helpers import dx_instance, encoded
from PIL import Image
from pydicom.uid import generate_uid

from fracture.config import get_settings

LABELS = ("fracture suspected", "no fracture found")


def _no_label(text: str) -> None:
    lowered = text.lower()
    for words in LABELS:
        assert words not in lowered, text


def _photo(seed: int = 0) -> np.ndarray:
    """A colourful noise 'photo': nothing like a radiograph."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)


def _photo_png(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_photo(seed)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def flagging_model(tmp_path_factory, tiny_model_dir, fake_imagenet_weights) -> Path:
    """A copy of the tiny model whose OOD gate flags every input."""
    from fracture.inference.ood import fit_ood_gate
    from fracture.inference.predictor import Predictor
    from fracture.model.folder import ModelFolder, load_model
    from fracture.model.network import POOL_LAYER

    from conftest import radiograph_like

    folder = tmp_path_factory.mktemp("flagging") / "default"
    shutil.copytree(tiny_model_dir, folder)
    predictor = Predictor(load_model(folder, fake_imagenet_weights), batch_size=4)
    scored = predictor.predict([radiograph_like(seed) for seed in range(12)])
    features = np.stack([p.features[POOL_LAYER] for p in scored])
    gate = fit_ood_gate(features[:8], features[8:], n_components=2)
    gate = dataclasses.replace(gate, threshold=1e-9)  # every distance is above it
    model = ModelFolder(folder)
    gate.save(model.ood_path)
    model.rewrite_card(model.read_card())
    return folder


@pytest.fixture(scope="module")
def predictor(flagging_model, fake_imagenet_weights):
    from fracture.inference.predictor import Predictor
    from fracture.model.folder import load_model

    served = Predictor(load_model(flagging_model, fake_imagenet_weights), batch_size=4)
    assert served.ood_gate is not None
    return served


def test_the_gate_flags_the_photo(predictor):
    (prediction,) = predictor.predict([_photo()], with_cam=True)
    assert prediction.ok and prediction.in_distribution is False
    assert prediction.label == "not_assessed"
    assert prediction.verdict().reason


def test_command_line_csv(flagging_model, tmp_path, use_fake_weights):
    from fracture.cli.main import main

    image = tmp_path / "cat.png"
    image.write_bytes(_photo_png())
    out = tmp_path / "out.csv"
    assert main(["predict", str(image), "--model", str(flagging_model), "--out", str(out)]) == 0
    (row,) = csv.DictReader(out.open())
    assert row["prediction"] == "not_assessed"
    assert row["in_distribution"] == "false"
    assert all(row[f"box_{n}"] == "" for n in ("x0", "y0", "x1", "y1")) and row["box_style"] == ""


def test_dashboard_csv_and_zip(predictor):
    from fracture.views import results

    threshold = predictor.threshold
    table = results.predictions_csv(
        predictor.iter_predict([_photo_png()], names=["cat.png"], with_cam=True),
        threshold,
        model_name="tiny-test",
        model_version="1",
    ).decode()
    (row,) = csv.DictReader(io.StringIO(table))
    assert row["prediction"] == "not_assessed" and row["box_x0"] == ""
    archive = zipfile.ZipFile(
        io.BytesIO(
            results.overlay_zip(
                predictor.iter_predict([_photo_png()], names=["cat.png"], with_cam=True),
                0.4,
                threshold,
                model_name="tiny-test",
                model_version="1",
            )
        )
    )
    (member,) = archive.namelist()
    caption = Image.open(io.BytesIO(archive.read(member))).text["Description"]
    assert "RESEARCH USE ONLY" in caption and "tiny-test v1" in caption
    assert "NOT ASSESSED" in caption
    _no_label(caption)
    assert "FRACTURE:" not in caption and "NORMAL:" not in caption


def _flagged_study():
    study_uid, series_uid = generate_uid(), generate_uid()
    grey = (_photo()[..., 0].astype(np.uint16)) * 16
    return [dx_instance(grey, study_uid, series_uid, 1)]


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def test_dicom_report_capture_and_inbox(predictor, tmp_path):
    from fracture.dicom.node import _summary
    from fracture.dicom.results import ABSENT, FRACTURE, PRESENT, read_report
    from fracture.dicom.scoring import score_instances
    from fracture.dicom.spool import Spool
    from fracture.views.inbox import inbox_studies

    study = _flagged_study()
    spool = Spool(tmp_path / "spool")
    for ds in study:
        spool.receive(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), encoded(ds))
    (pending,) = spool.pending()
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in pending.files]
    scored = score_instances(predictor, headers, list(pending.files))
    assert scored.finding is not None and not scored.finding.assessed

    # The SR, read back from its bytes as a PACS would
    name, report = scored.objects[-1]
    sr = pydicom.dcmread(io.BytesIO(encoded(report)))
    codes = {
        (c.CodeValue, c.CodingSchemeDesignator)
        for item in _walk(sr.ContentSequence)
        for c in item.get("ConceptCodeSequence", [])
    }
    names = {(item.ConceptNameCodeSequence[0].CodeValue) for item in _walk(sr.ContentSequence)}
    assert (PRESENT.value, "SCT") not in codes and (ABSENT.value, "SCT") not in codes
    assert FRACTURE.value not in names
    values = read_report(sr)
    assert values["assessed"] is False and "present" not in values and "probability" not in values
    assert "NOT ASSESSED" in values["title"]
    assert "does not look like the bone radiographs" in values["not_assessed"]
    assert values["not_assessed_images"] == [str(study[0].SOPInstanceUID)]
    assert sr.CompletionFlag == "PARTIAL" and sr.VerificationFlag == "UNVERIFIED"
    assert "NOT ASSESSED" in sr.SeriesDescription

    # The Secondary Capture: its caption (burned in, and in Image Comments)
    ((capture_name, capture),) = [(n, o) for n, o in scored.objects if n.startswith("sc-")]
    comments = str(pydicom.dcmread(io.BytesIO(encoded(capture))).ImageComments)
    assert "NOT ASSESSED" in comments
    _no_label(comments)

    # The Inbox row
    spool.commit(pending, scored.objects, _summary(scored, pending.last_arrival))
    (row_study,) = inbox_studies(tmp_path / "spool", reveal=False)
    row = row_study.row()
    assert row["Probability"] is None
    assert row["Result"].startswith("not assessed")
    _no_label(row["Result"])
    assert all(probability is None for _, probability, _ in row_study.captures)


def test_predict_page(flagging_model, tmp_path, monkeypatch, fake_imagenet_weights):
    import fracture.model.imagenet as weights

    streamlit_testing = pytest.importorskip("streamlit.testing.v1")
    models = tmp_path / "models"
    shutil.copytree(flagging_model, models / "default")
    monkeypatch.setenv("FRACTURE_CONFIG", str(tmp_path / "no-such-config.toml"))
    monkeypatch.setenv("FRACTURE_MODELS_DIR", str(models))
    monkeypatch.setenv("FRACTURE_CACHE_DIR", str(tmp_path / "cache"))
    resolved = weights.ResolvedWeights(path=fake_imagenet_weights, sha256="fake", source="explicit")
    monkeypatch.setattr(weights, "resolve_imagenet_weights", lambda *a, **k: resolved)
    get_settings.cache_clear()
    try:
        root = Path(__file__).resolve().parents[2]
        at = streamlit_testing.AppTest.from_file(str(root / "app.py"), default_timeout=180).run()
        at.file_uploader[0].upload("cat.png", _photo_png(), "image/png")
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        metrics = {m.label: m.value for m in at.metric}
        assert metrics == {"Result": "Not assessed"}
        shown = " ".join(
            str(e.value) for kind in ("markdown", "warning", "caption") for e in at.get(kind)
        )
        _no_label(shown)
    finally:
        get_settings.cache_clear()
