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
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "inbox secret"


@pytest.fixture(scope="module")
def spool_with_studies(tmp_path_factory, tiny_predictor):
    """A node spool with two scored studies, made by the node's own scoring code."""
    from fracture.dicom.node import _summary

    predictor = tiny_predictor
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
    yield from _environment(spool_with_studies, tiny_model_dir, monkeypatch, tmp_path, PASSWORD)


@pytest.fixture
def open_inbox_env(spool_with_studies, tiny_model_dir, monkeypatch, tmp_path):
    """The same spool, on a dashboard with no admin password configured."""
    yield from _environment(spool_with_studies, tiny_model_dir, monkeypatch, tmp_path, None)


def _environment(spool_with_studies, tiny_model_dir, monkeypatch, tmp_path, password):
    import shutil

    import fracture.model.imagenet as weights

    root, probabilities = spool_with_studies
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / "default")
    monkeypatch.setenv("FRACTURE_CONFIG", str(tmp_path / "no-such-config.toml"))
    monkeypatch.setenv("FRACTURE_MODELS_DIR", str(models))
    monkeypatch.setenv("FRACTURE_DICOM_SPOOL", str(root))
    if password is None:
        monkeypatch.delenv("FRACTURE_ADMIN_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("FRACTURE_ADMIN_PASSWORD", password)
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


def _page_text(at) -> str:
    parts = [
        str(e.value)
        for kind in ("markdown", "caption", "subheader", "selectbox")
        for e in at.get(kind)
        if hasattr(e, "value")
    ]
    parts += [str(option) for box in at.selectbox for option in box.options]
    for table in at.dataframe:
        parts.append(table.value.to_string())
    return "\n".join(parts)


def test_without_an_admin_password_identifiers_stay_masked_and_the_page_says_how(open_inbox_env):
    at = open_inbox()
    frame = at.dataframe[0].value
    assert set(frame["Patient ID"]) == {"••••••"} and set(frame["Patient"]) == {"••••••"}
    text = _page_text(at)
    assert PATIENT_ID not in text and "Testpatient" not in text
    assert not at.text_input  # no gate to open: nothing would check the password
    assert any("FRACTURE_ADMIN_PASSWORD" in str(c.value) for c in at.caption)


def test_a_failed_study_is_listed_with_its_reason_and_can_be_retried(inbox_env):
    from fracture.dicom.spool import PendingStudy, read_failures

    root = Path(get_settings().dicom_spool)
    spool = Spool(root)
    study = make_study(1, seed=12)
    spool.receive(str(study[0].StudyInstanceUID), str(study[0].SOPInstanceUID), encoded(study[0]))
    (pending,) = [
        p for p in spool.pending() if p.key not in {r["study_key"] for r in read_failures(root)}
    ]
    reason = "the results could not be built: the images lack a DICOM attribute they need"
    spool.fail(
        PendingStudy(pending.key, pending.files, pending.last_arrival),
        {
            "reason": reason,
            "attempts": 3,
            "patient_name": "Testpatient^Jane",
            "patient_id": PATIENT_ID,
        },
    )
    try:
        at = open_inbox()
        assert any(reason in str(m.value) for m in at.markdown)
        assert PATIENT_ID not in _page_text(at) and "Testpatient" not in _page_text(at)
        next(b for b in at.button if b.label == "Retry").click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert read_failures(root) == []
        assert [p.key for p in Spool(root).pending()] == [pending.key]
    finally:
        for path in (root / "incoming" / pending.key).glob("*"):
            path.unlink()
        (root / "incoming" / pending.key).rmdir()
