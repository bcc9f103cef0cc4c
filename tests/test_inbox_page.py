"""The Inbox page in AppTest: scored studies listed for triage, identifiers masked behind the gate."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from dicom_helpers import PATIENT_ID, encoded, make_study

from fracture.config import get_settings
from fracture.dicom.scoring import score_instances
from fracture.dicom.spool import Spool

streamlit_testing = pytest.importorskip("streamlit.testing.v1")
ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "inbox secret"


@pytest.fixture(scope="module")
def spool_with_studies(tmp_path_factory, tiny_model_dir, fake_imagenet_weights):
    """A node spool with two scored studies, made by the node's own scoring code."""
    from fracture.dicom.node import _summary
    from fracture.inference.predictor import Predictor
    from fracture.model.folder import load_model

    predictor = Predictor(load_model(tiny_model_dir, fake_imagenet_weights), batch_size=4)
    root = tmp_path_factory.mktemp("inbox") / "spool"
    spool = Spool(root)
    probabilities = []
    for seed, count in ((10, 2), (11, 1)):
        study = make_study(count, seed=seed)
        for ds in study:
            spool.receive(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), encoded(ds))
        (pending,) = [p for p in spool.pending() if len(p.files) == count]
        headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in pending.files]
        scored = score_instances(predictor, headers, list(pending.files))
        spool.commit(pending, scored.objects, _summary(scored, pending.last_arrival))
        probabilities.append(scored.finding.probability)
    return root, sorted(probabilities, reverse=True)


@pytest.fixture
def inbox_env(spool_with_studies, tiny_model_dir, monkeypatch, tmp_path):
    import shutil

    import fracture.model.imagenet as weights

    root, probabilities = spool_with_studies
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / "default")
    monkeypatch.setenv("FRACTURE_CONFIG", str(tmp_path / "no-such-config.toml"))
    monkeypatch.setenv("FRACTURE_MODELS_DIR", str(models))
    monkeypatch.setenv("FRACTURE_DICOM_SPOOL", str(root))
    monkeypatch.setenv("FRACTURE_ADMIN_PASSWORD", PASSWORD)
    resolved = weights.ResolvedWeights(path=Path("unused"), sha256="fake", source="explicit")
    monkeypatch.setattr(weights, "resolve_imagenet_weights", lambda *a, **k: resolved)
    get_settings.cache_clear()
    yield probabilities
    get_settings.cache_clear()


def open_inbox():
    at = streamlit_testing.AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    at.switch_page("app_pages/inbox.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_inbox_lists_studies_most_suspicious_first_with_identifiers_masked(inbox_env):
    at = open_inbox()
    assert at.title[0].value == "Inbox"
    (table,) = at.dataframe
    frame = table.value
    assert list(frame["Probability"]) == pytest.approx(inbox_env)
    assert set(frame["Patient ID"]) == {"••••••"} and "Testpatient Jane" not in set(
        frame["Patient"]
    )
    assert set(frame["Images"]) == {2, 1}
    # newest first reorders; the most recent study is the second one made
    at.radio[0].set_value("Newest first").run()
    assert list(at.dataframe[0].value["Images"]) == [1, 2]


def test_inbox_reveals_identifiers_after_the_admin_password(inbox_env):
    at = open_inbox()
    at.text_input[0].input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception
    frame = at.dataframe[0].value
    assert set(frame["Patient ID"]) == {PATIENT_ID}
    assert "Testpatient Jane" in set(frame["Patient"])


def test_opening_a_study_shows_its_result_images(inbox_env):
    at = open_inbox()
    counts = list(at.dataframe[0].value["Images"])
    for index, count in enumerate(counts):
        at.selectbox[0].select_index(index).run()
        assert not at.exception, [e.value for e in at.exception]
        images = at.get("image")
        assert len(images) == count
        assert all("probability" in str(image.proto.imgs[0].caption) for image in images)
    assert any("probability" in str(s.value) for s in at.subheader)
