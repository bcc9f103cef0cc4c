"""The Streamlit dashboard, driven by Streamlit's AppTest (no browser).

The app runs in this process, so the tiny test model and the fake ImageNet
weights from conftest stand in for the real ones: FRACTURE_MODELS_DIR points at
a copy of the tiny model, and weight resolution is patched.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fracture.config import get_settings

from app_helpers import add_evaluation, png_bytes

streamlit_testing = pytest.importorskip("streamlit.testing.v1")
AppTest = streamlit_testing.AppTest

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app.py"
TIMEOUT = 180
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def app_env(tmp_path_factory, tiny_model_dir, fake_imagenet_weights):
    """Folders and settings for the app: the tiny model as ``default``, empty data and runs."""
    import fracture.model.imagenet as weights

    base = tmp_path_factory.mktemp("app")
    models = base / "models"
    shutil.copytree(tiny_model_dir, models / "default")
    add_evaluation(models / "default")
    (base / "data").mkdir()
    (base / "runs").mkdir()
    patch = pytest.MonkeyPatch()
    # A missing config file: a developer's own fracture.toml must not leak into the test.
    patch.setenv("FRACTURE_CONFIG", str(base / "no-such-config.toml"))
    patch.setenv("FRACTURE_MODELS_DIR", str(models))
    patch.setenv("FRACTURE_DATA_DIR", str(base / "data"))
    patch.setenv("FRACTURE_RUNS_DIR", str(base / "runs"))
    patch.setenv("FRACTURE_CACHE_DIR", str(base / "cache"))
    patch.setenv("FRACTURE_BATCH_SIZE", "4")
    patch.delenv("FRACTURE_ADMIN_PASSWORD", raising=False)
    resolved = weights.ResolvedWeights(path=fake_imagenet_weights, sha256="fake", source="explicit")
    patch.setattr(weights, "resolve_imagenet_weights", lambda *a, **k: resolved)
    get_settings.cache_clear()
    yield SimpleNamespace(base=base, models=models, data=base / "data", runs=base / "runs")
    patch.undo()
    get_settings.cache_clear()


@pytest.fixture
def fresh_settings(app_env):
    """Re-read settings before and after a test that changes the environment."""
    get_settings.cache_clear()
    yield app_env
    get_settings.cache_clear()


def _app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT)


def _open(page: str) -> AppTest:
    at = _app().run()
    assert not at.exception, [e.value for e in at.exception]
    if page != "app_pages/predict.py":
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _plotly_charts(at: AppTest) -> list:
    return at.get("plotly_chart")


def _plotly_array(value) -> np.ndarray:
    """An array from a chart's JSON: a list, or plotly's typed-array form (base64 ``bdata``)."""
    import base64

    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = [int(n) for n in str(value.get("shape", len(flat))).split(",")]
        return flat.reshape(shape)
    return np.asarray(value)


def _texts(at: AppTest) -> str:
    parts = []
    for kind in (
        "markdown",
        "caption",
        "info",
        "warning",
        "error",
        "success",
        "subheader",
        "title",
        "header",
    ):
        parts += [str(element.value) for element in at.get(kind)]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------
# Every page renders


@pytest.mark.parametrize(
    "page",
    ["app_pages/predict.py", "app_pages/dataset.py", "app_pages/train.py", "app_pages/model.py"],
)
def test_each_page_renders_without_exceptions(app_env, page):
    at = _open(page)
    assert at.title[0].value == Path(page).stem.capitalize()


def test_sidebar_shows_model_operating_point_and_notice(app_env):
    # AppTest keeps the entry point's elements for the first page only (after
    # switch_page it reports the page's own elements), so the shared sidebar is
    # checked here and, on every page, by the browser test.
    at = _open("app_pages/predict.py")
    sidebar = "\n".join(str(m.value) for m in at.sidebar.markdown)
    assert "tiny-test" in sidebar and "version 1" in sidebar
    captions = "\n".join(str(c.value) for c in at.sidebar.caption)
    assert "Validation AUROC" in captions and "not for diagnosis" in captions
    assert "high sensitivity, threshold 50.0%" in captions
    # The selector is on the page itself: a phone folds the sidebar away.
    radio = at.radio(key="operating_point_choice")
    assert radio.label == "Operating point" and radio.value == "high_sensitivity"
    assert list(radio.options) == ["High sensitivity", "High specificity"]
    assert any("Threshold 50.0%" in str(c.value) for c in at.caption)
    radio.set_value("high_specificity").run()
    assert any("Threshold 70.0%" in str(c.value) for c in at.caption)
    assert any("high specificity, threshold 70.0%" in str(c.value) for c in at.sidebar.caption)
    # The choice survives a visit to another page.
    at.switch_page("app_pages/model.py").run()
    at.switch_page("app_pages/predict.py").run()
    assert at.radio(key="operating_point_choice").value == "high_specificity"


def test_model_page_shows_card_and_evaluation_plots(app_env):
    at = _open("app_pages/model.py")
    texts = _texts(at)
    assert "Known limitations" in texts and "Validation results" in texts
    # ROC, PR, reliability, one confusion matrix per operating point, subgroups.
    assert len(_plotly_charts(at)) >= 6
    labels = [m.label for m in at.metric]
    assert "AUROC without hardware" in labels and "Grad-CAM pointing game" in labels
    versions = at.dataframe[-1].value
    assert versions["name"].tolist() == ["default"] and bool(versions["active"].iloc[0])
    # Nothing to roll back to: the button says so by being disabled.
    assert next(b for b in at.button if b.label == "Roll back").disabled


def test_model_page_reads_summary_then_charts_then_the_card_folded_away(app_env):
    at = _open("app_pages/model.py")
    main = list(at.main)
    kinds = [type(element).__name__ for element in main]
    first_metric = kinds.index("Metric")
    first_chart = next(i for i, e in enumerate(main) if e.type == "plotly_chart")
    (card,) = [e for e in at.expander if e.label == "Full model card"]
    assert (
        first_metric < first_chart < main.index(card)
        if card in main
        else first_metric < first_chart
    )
    # The card's headings sit below the page's: no page-sized model name.
    card_text = "\n".join(str(m.value) for m in card.markdown)
    assert "Known limitations" in card_text
    assert not any(line.startswith(("# ", "## ")) for line in card_text.splitlines())
    assert [str(h.value) for h in at.header].count("Validation results") == 1


def test_model_page_has_no_raw_json_and_no_machine_paths(app_env):
    at = _open("app_pages/model.py")
    shown = _texts(at) + "\n".join(f"{m.label} {m.value}" for m in at.metric)
    assert "{" not in shown and "}" not in shown
    assert str(app_env.base) not in shown and "/tmp" not in shown
    assert not at.get("json")
    # Calibration is described with its before/after error, whichever way it went.
    assert "expected calibration error" in shown


def test_no_model_gives_advice_not_a_crash(app_env, tmp_path, monkeypatch):
    monkeypatch.setenv("FRACTURE_MODELS_DIR", str(tmp_path / "empty-models"))
    get_settings.cache_clear()
    try:
        for page in ("app_pages/predict.py", "app_pages/model.py"):
            at = _open(page)
            assert "No usable model" in _texts(at)
    finally:
        get_settings.cache_clear()


# --------------------------------------------------------------------------------------
# Predict


def test_predict_one_upload_shows_probability_and_overlay(app_env):
    at = _open("app_pages/predict.py")
    at.file_uploader[0].upload("knee.png", png_bytes(1), "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    probability = next(m for m in at.metric if m.label == "Fracture probability")
    # Whole percent, and never 0 % or 100 %: the ends are shown as bounds.
    assert probability.value in ("< 1%", "> 99%") or (
        probability.value.endswith("%") and 1 <= int(probability.value[:-1]) <= 99
    )
    charts = [json.loads(chart.proto.spec) for chart in _plotly_charts(at)]
    assert len(charts) == 2  # the viewer (image with its map) and the gauge
    assert charts[0]["data"][0]["source"].startswith("data:image/jpeg;base64,")

    reports = {button.proto.label: button.proto for button in at.get("download_button")}
    assert set(reports) == {"Report (PDF)", "Report (PNG, for chat)"}

    # Moving the opacity slider re-blends without running the model again.
    from app_pages import _common

    calls = []
    served = _common._load_served_model(
        str(app_env.models / "default"), _common._fingerprint(app_env.models / "default")
    )
    original = served.single.predict
    served.single.predict = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        at.slider(key="overlay_alpha").set_value(0.9).run()
    finally:
        served.single.predict = original
    assert not at.exception and calls == []


def test_predict_batch_with_broken_files_lists_error_rows(app_env):
    at = _open("app_pages/predict.py")
    uploader = at.file_uploader[0]
    uploader.upload("a.png", png_bytes(2), "image/png")
    uploader.upload("empty.png", b"", "image/png")
    uploader.upload("notes.png", b"just some text, not an image", "image/png")
    uploader.upload("b.png", png_bytes(3), "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert len(table) == 4
    assert table["label"].tolist()[-2:] == ["could not be read", "could not be read"]
    assert set(table["file"].tolist()[-2:]) == {"empty.png", "notes.png"}
    scored = table["probability"].dropna().tolist()
    assert len(scored) == 2 and scored == sorted(scored, reverse=True)
    counts = {m.label: m.value for m in at.metric}
    assert counts["Could not be read"] == "2"
    labels = [button.proto.label for button in at.get("download_button")]
    # the batch's CSV, ZIP and PDF report, then the shown image's own reports
    assert labels == [
        "Download results (CSV)",
        "Download overlays with boxes (ZIP)",
        "Report of every image (PDF)",
        "Report (PDF)",
        "Report (PNG, for chat)",
    ]
    # The most suspicious image is shown with its probability.
    assert any(m.label == "Fracture probability" for m in at.metric)


def _button(at: AppTest, label: str):
    (button,) = [b for b in at.button if b.label == label]
    return button


def test_predict_batch_previous_and_next_visit_every_row_once_in_table_order(app_env):
    at = _open("app_pages/predict.py")
    uploader = at.file_uploader[0]
    for name, seed in (("d.png", 4), ("a.png", 5), ("c.png", 6), ("b.png", 7)):
        uploader.upload(name, png_bytes(seed), "image/png")
    uploader.upload("broken.png", b"not an image", "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    order = at.dataframe[0].value["file"].tolist()
    assert len(order) == 5 and order[-1] == "broken.png"
    seen = [at.subheader[0].value]
    assert _button(at, "Previous").disabled
    while not _button(at, "Next").disabled:
        _button(at, "Next").click().run()
        assert not at.exception, [e.value for e in at.exception]
        seen.append(at.subheader[0].value)
    assert seen == order
    back = [at.subheader[0].value]
    while not _button(at, "Previous").disabled:
        _button(at, "Previous").click().run()
        back.append(at.subheader[0].value)
    assert back == order[::-1]
    # A click on a cell of another row shows that row (the table's selection state).
    at.session_state["batch_table"] = {
        "selection": {"rows": [], "columns": [], "cells": [(2, "file")]}
    }
    at.run()
    assert at.subheader[0].value == order[2]
    assert f"Image 3 of {len(order)}" in _texts(at)


def test_predict_single_broken_upload_shows_an_error(app_env):
    at = _open("app_pages/predict.py")
    at.file_uploader[0].upload("scan.png", b"%PDF-1.4 not really", "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("PDF" in str(e.value) for e in at.error)


def _flag_everything(monkeypatch, predictor) -> None:
    """Make ``predictor`` flag every input as out of distribution (the gate's verdict)."""
    import dataclasses

    original_predict = predictor.predict
    original_iter = getattr(predictor, "iter_predict", None)

    def flagged(*args, **kwargs):
        return [
            dataclasses.replace(p, in_distribution=False, ood_score=9.0) if p.ok else p
            for p in original_predict(*args, **kwargs)
        ]

    def flagged_iter(*args, **kwargs):
        for p in original_iter(*args, **kwargs):
            yield dataclasses.replace(p, in_distribution=False, ood_score=9.0) if p.ok else p

    monkeypatch.setattr(predictor, "predict", flagged)
    if original_iter is not None:
        monkeypatch.setattr(predictor, "iter_predict", flagged_iter)


def _served(app_env):
    from app_pages import _common

    return _common._load_served_model(
        str(app_env.models / "default"), _common._fingerprint(app_env.models / "default")
    )


def test_predict_out_of_distribution_upload_is_not_assessed(app_env, monkeypatch):
    at = _open("app_pages/predict.py")
    _flag_everything(monkeypatch, _served(app_env).single)
    at.file_uploader[0].upload("selfie.png", png_bytes(8), "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Not assessed" in str(w.value) for w in at.warning)
    assert any("does not look like the bone radiographs" in str(w.value) for w in at.warning)
    labels = {m.label: m.value for m in at.metric}
    assert labels == {"Result": "Not assessed"}  # no label, no probability
    assert len(_plotly_charts(at)) == 0  # no gauge
    assert len(at.image) == 1  # the image, without its heat map
    at.toggle(key=next(k for k in at.session_state if str(k).startswith("show_anyway_"))).set_value(
        True
    ).run()
    # The map, shown on request in the viewer, without any box: a box would read as a finding.
    (viewer,) = [json.loads(chart.proto.spec) for chart in _plotly_charts(at)]
    assert not viewer["layout"].get("shapes")


def test_predict_batch_counts_out_of_distribution_as_not_assessed(app_env, monkeypatch):
    at = _open("app_pages/predict.py")
    _flag_everything(monkeypatch, _served(app_env).batch)
    _flag_everything(monkeypatch, _served(app_env).single)
    uploader = at.file_uploader[0]
    uploader.upload("cat.png", png_bytes(4), "image/png")
    uploader.upload("dog.png", png_bytes(5), "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    counts = {m.label: m.value for m in at.metric}
    assert (counts["Fracture"], counts["Normal"], counts["Not assessed"]) == ("0", "0", "2")
    table = at.dataframe[0].value
    assert table["label"].tolist() == ["not assessed", "not assessed"]
    assert table["shown_probability"].tolist() == ["", ""]


def test_predict_dicom_offers_a_redacted_header(app_env):
    from app_helpers import PATIENT_NAME, dicom_bytes

    at = _open("app_pages/predict.py")
    at.file_uploader[0].upload("study.dcm", dicom_bytes(3), "application/dicom")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(m.label == "Fracture probability" for m in at.metric)
    expander = next(e for e in at.expander if "DICOM header" in e.label)
    assert len(expander.dataframe) == 0  # read only when opened
    # Open it as a click would: the expander's state lives under its key.
    key = next(k for k in at.session_state if str(k).startswith("dicom_"))
    at.session_state[key] = True
    at.run()
    header = next(e for e in at.expander if "DICOM header" in e.label).dataframe[0].value
    shown = "\n".join(f"{a} {v}" for a, v in zip(header["attribute"], header["value"]))
    assert "Modality" in shown and PATIENT_NAME not in shown and "P-12345" not in shown


def test_predict_recognises_a_dicom_without_preamble_by_its_content(app_env):
    """Older PACS exports write the data set without the 128-byte preamble and 'DICM'.
    The loader decodes it by content whatever its name says; the page must treat it
    as DICOM by content too (header panel), through fracture.io.dicom.looks_like_dicom,
    not by the name nor by looking for 'DICM' itself."""
    from fracture.io.dicom import DICOM_MAGIC, DICOM_MAGIC_OFFSET

    from app_helpers import dicom_bytes

    part10 = dicom_bytes(4)
    assert part10[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC
    bare = part10[DICOM_MAGIC_OFFSET + len(DICOM_MAGIC) :]  # starts at the file meta group
    at = _open("app_pages/predict.py")
    # A name that does not say DICOM (the uploader only takes listed suffixes).
    at.file_uploader[0].upload("IM000001.tif", bare, "image/tiff")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(m.label == "Fracture probability" for m in at.metric)
    assert any("DICOM header" in e.label for e in at.expander)


# --------------------------------------------------------------------------------------
# Dataset


def test_dataset_page_offers_fracatlas_and_says_plainly_when_there_is_no_network(
    app_env, monkeypatch
):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("FRACTURE_FRACATLAS_API", f"http://127.0.0.1:{closed}/api")
    at = _open("app_pages/dataset.py")
    assert "CC BY 4.0" in _texts(at) and "10.1038/s41597-023-02432-4" in _texts(at)
    next(b for b in at.button if b.label == "Download FracAtlas").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("could not be downloaded" in str(e.value) for e in at.error)
    assert any("no network" in str(c.value) and "Manual route" in str(c.value) for c in at.code)
    assert not (app_env.data / "fracatlas").exists()


def test_dataset_page_offers_phantoms_then_shows_them(app_env):
    at = _open("app_pages/dataset.py")
    assert "synthetic, not clinical" in _texts(at).lower() or "No dataset" in _texts(at)
    generate = next(b for b in at.button if "phantoms" in b.label)
    generate.click().run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    assert (app_env.data / "phantoms" / "README.md").is_file()
    assert "Synthetic phantoms, not clinical data" in _texts(at)
    assert len(_plotly_charts(at)) >= 3  # balance, regions, sizes
    assert len(at.image) == 12  # one page of thumbnails
    next(b for b in at.button if b.label == "Check for duplicates").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("No identical files across splits" in str(s.value) for s in at.success)


# --------------------------------------------------------------------------------------
# Train: the admin gate and starting a run


def test_train_page_refuses_without_the_admin_password(fresh_settings, monkeypatch):
    monkeypatch.setenv("FRACTURE_ADMIN_PASSWORD", PASSWORD)
    get_settings.cache_clear()
    at = _open("app_pages/train.py")
    assert not any(b.label == "Start training" for b in at.button)
    assert "needs the admin password" in _texts(at)

    password_box = next(t for t in at.text_input if t.label == "Admin password")
    password_box.input("wrong guess")
    next(b for b in at.button if b.label == "Unlock").click()
    at.run()
    assert any("Wrong password" in str(e.value) for e in at.error)
    assert "admin_ok" not in at.session_state or at.session_state["admin_ok"] is not True

    password_box = next(t for t in at.text_input if t.label == "Admin password")
    password_box.input(PASSWORD)
    next(b for b in at.button if b.label == "Unlock").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["admin_ok"] is True
    # Only the boolean is kept: the password is in no session value.
    assert all(PASSWORD not in repr(at.session_state[k]) for k in at.session_state)
    assert any(b.label == "Start training" for b in at.button)


def test_train_page_is_open_without_a_configured_password(fresh_settings):
    at = _open("app_pages/train.py")
    assert any(b.label == "Start training" for b in at.button)
    assert "No training runs yet" in _texts(at)


def test_train_page_first_visit_offers_data_instead_of_an_error(
    fresh_settings, tmp_path, monkeypatch
):
    from fracture.data.phantoms import synthesize_phantoms

    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("FRACTURE_DATA_DIR", str(data))
    get_settings.cache_clear()
    at = _open("app_pages/train.py")
    assert not at.error, [e.value for e in at.error]
    assert "synthetic phantom set" in _texts(at) and "FracAtlas" in _texts(at)
    assert not any(b.label.startswith("Use ") for b in at.button)
    # Once a dataset is in the default folder, one click puts it in the form.
    synthesize_phantoms(data / "phantoms", 20, size=64, seed=0)
    at.run()
    next(b for b in at.button if b.label == "Use phantoms").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert next(t for t in at.text_input if t.label == "Dataset folder").value == str(
        data / "phantoms"
    )
    assert any("phantom" in str(s.value).lower() for s in at.success)
    assert not at.warning and not at.error


def test_deleting_a_run_needs_a_tick_first(fresh_settings):
    run_dir = fresh_settings.runs / "failed-run"
    run_dir.mkdir()
    (run_dir / "status.json").write_text('{"state": "failed", "message": "out of memory"}')
    at = _open("app_pages/train.py")
    delete = next(b for b in at.button if b.label == "Delete this run")
    assert delete.disabled and run_dir.is_dir()
    next(c for c in at.checkbox if "for good" in c.label).check().run()
    next(b for b in at.button if b.label == "Delete this run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not run_dir.exists()
    assert "Deleted run failed-run" in _texts(at)


def test_train_form_refuses_a_bad_folder_before_any_process_starts(fresh_settings, monkeypatch):
    import subprocess

    import fracture.training.jobs as jobs

    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a) or 1 / 0)
    bad = fresh_settings.base / "scans*" / "not_a_dataset"
    bad.mkdir(parents=True)
    (bad / "notes.txt").write_text("no images here")
    at = _open("app_pages/train.py")
    next(t for t in at.text_input if t.label == "Dataset folder").input(str(bad)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("cannot be trained on" in str(e.value) for e in at.error)
    # The reason is shown once, literally: the * of the folder's name survives.
    codes = [str(c.value) for c in at.code]
    assert len([c for c in codes if "scans*" in c]) == 1
    start = next(b for b in at.button if b.label == "Start training")
    assert start.disabled  # AppTest, like a browser, cannot click it
    assert started == []
    # The core refuses too, before it launches anything.
    with pytest.raises(ValueError):
        jobs.start_training(bad, settings=get_settings())
    assert started == []


def test_train_form_shows_the_counts_of_a_good_folder(fresh_settings, tmp_path):
    from fracture.data.phantoms import synthesize_phantoms

    synthesize_phantoms(tmp_path / "ph", 20, size=64, seed=0)
    at = _open("app_pages/train.py")
    next(t for t in at.text_input if t.label == "Dataset folder").input(str(tmp_path / "ph")).run()
    message = " ".join(str(s.value) for s in at.success)
    assert "synthetic phantoms" in message and "train:" in message and "val:" in message
    assert not next(b for b in at.button if b.label == "Start training").disabled


def test_train_start_passes_the_form_and_reports_a_busy_trainer(
    fresh_settings, monkeypatch, tmp_path
):
    import fracture.training.jobs as jobs
    from fracture.data.phantoms import synthesize_phantoms

    calls = []

    def busy(data_root, run_name=None, *, config, settings=None, **kwargs):
        calls.append((data_root, run_name, config))
        raise jobs.JobBusyError("Training run 'other' (pid 1) is already in progress")

    monkeypatch.setattr(jobs, "start_training", busy)
    synthesize_phantoms(tmp_path / "ph", 20, size=64, seed=0)
    at = _open("app_pages/train.py")
    next(t for t in at.text_input if t.label == "Dataset folder").input(str(tmp_path / "ph")).run()
    next(n for n in at.number_input if n.label == "Fine-tune epochs").set_value(3)
    next(s for s in at.selectbox if s.label == "Image size (px)").set_value(384)
    next(t for t in at.toggle if t.label == "Augmentation").set_value(False)
    next(b for b in at.button if b.label == "Start training").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    ((data_root, run_name, config),) = calls
    assert data_root == str(tmp_path / "ph") and run_name is None
    assert (config.epochs, config.image_size, config.augment) == (3, 384, False)
    assert any("already in progress" in str(e.value) for e in at.error)


def test_train_form_offers_the_task_for_fracture_types_and_passes_it(
    fresh_settings, monkeypatch, tmp_path
):
    import fracture.training.jobs as jobs
    from fracture.data.phantoms import synthesize_phantoms

    calls = []

    def busy(data_root, run_name=None, *, config, settings=None, **kwargs):
        calls.append(config)
        raise jobs.JobBusyError("Training run 'other' (pid 1) is already in progress")

    monkeypatch.setattr(jobs, "start_training", busy)
    classes = ["transverse", "oblique", "displaced", "normal"]
    synthesize_phantoms(tmp_path / "types", 24, size=64, seed=0, classes=classes)
    at = _open("app_pages/train.py")
    next(t for t in at.text_input if t.label == "Dataset folder").input(str(tmp_path / "types"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    message = " ".join(str(s.value) for s in at.success)
    assert all(name in message for name in classes), message
    assert any(c.proto.id for c in _plotly_charts(at))  # the class balance
    task = next(r for r in at.radio if r.label == "What the model learns")
    assert task.value == "classes"
    task.set_value("fracture").run()
    assert "fractured" in " ".join(str(s.value) for s in at.success)  # types merged
    next(b for b in at.button if b.label == "Start training").click()
    at.run()
    assert [config.task for config in calls] == ["fracture"]


def test_train_page_shows_the_live_confusion_matrix_of_a_k_class_run(fresh_settings):
    import json
    import os
    import time

    run = fresh_settings.runs / "types-live"
    run.mkdir()
    now = time.time()
    status = {"state": "running", "pid": os.getpid(), "started": now, "updated": now}
    (run / "status.json").write_text(json.dumps({**status, "epoch": 2, "epochs": 5}))
    rows = [{"epoch": e, "phase": "head", "train_loss": 1.0, "val_loss": 0.9} for e in (1, 2)]
    (run / "metrics.json").write_text(json.dumps(rows))
    matrices = [{"epoch": e, "matrix": [[3, 1, 0], [0, 4, 0], [1, 0, 3]]} for e in (1, 2)]
    confusion = {"classes": ["oblique", "transverse", "type-B"], "epochs": matrices}
    (run / "confusion.json").write_text(json.dumps(confusion))
    try:
        at = _open("app_pages/train.py")
        assert not at.exception, [e.value for e in at.exception]
        figures = [json.loads(chart.proto.spec) for chart in _plotly_charts(at)]
        heatmaps = [
            trace for figure in figures for trace in figure["data"] if trace["type"] == "heatmap"
        ]
        assert len(heatmaps) == 1
        assert _plotly_array(heatmaps[0]["text"]).tolist() == matrices[-1]["matrix"]
        assert list(heatmaps[0]["y"]) == [f"true {name}" for name in confusion["classes"]]
        assert "ranks first" in _texts(at)
    finally:
        shutil.rmtree(run)


# --------------------------------------------------------------------------------------
# Train: a finished run


@pytest.fixture(scope="module")
def finished_run(app_env):
    """A real (tiny, random-init) training run on 24 phantoms, finished in the runs folder."""
    import signal

    from fracture.config import Settings
    from fracture.data.phantoms import synthesize_phantoms
    from fracture.training.config import TrainConfig
    from fracture.training.trainer import train

    data = app_env.base / "train-phantoms"
    synthesize_phantoms(data, 24, size=64, seed=0)
    config = TrainConfig(
        image_size=64,
        fine_tune_from="conv5_block2_out",
        head_epochs=1,
        epochs=1,
        batch_size=8,
        views=1,
        augment=False,
        seed=0,
    )
    settings = Settings(cache_dir=app_env.base / "cache", runs_dir=app_env.runs)
    # train() installs a SIGTERM handler for the dashboard's Cancel; keep pytest's own.
    previous = signal.getsignal(signal.SIGTERM)
    try:
        train(data, app_env.runs / "tiny-run", config, settings=settings, pretrained=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return app_env.runs / "tiny-run"


@pytest.mark.slow
def test_train_page_shows_a_finished_run(finished_run, fresh_settings):
    at = _open("app_pages/train.py")
    run_picker = next(s for s in at.selectbox if s.label == "Run")
    assert run_picker.value == str(finished_run)
    keys = [chart.proto.id for chart in _plotly_charts(at)]
    assert len(keys) == 3, keys  # training curves, confusion matrix, ROC
    assert any(m.label == "State" and m.value == "Completed" for m in at.metric)
    comparison = at.dataframe[0].value
    assert "AUROC, fracture against normal" in comparison["metric"].tolist()
    assert any(b.label == "Promote" for b in at.button)
    assert any(b.label == "Discard" for b in at.button)


@pytest.mark.slow
def test_train_page_promotes_a_finished_run(finished_run, fresh_settings, monkeypatch):
    import fracture.model.registry as registry

    calls = []

    def fake_promote(candidate, *, name=None, settings=None):
        calls.append(Path(candidate))
        return SimpleNamespace(name="tiny-run-1")

    # The real promotion is tested in test_registry; here only the page's wiring.
    monkeypatch.setattr(registry, "promote", fake_promote)
    at = _open("app_pages/train.py")
    # The run trained on phantoms: promoting it needs the explicit confirmation first.
    next(c for c in at.checkbox if c.label.startswith("I understand")).check().run()
    next(b for b in at.button if b.label == "Promote").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert calls == [finished_run / "model"]
    assert any("Promoted as tiny-run-1" in str(s.value) for s in at.success)


# --------------------------------------------------------------------------------------
# Synthetic models: provenance, confirmation, banner


def _synthetic_model(source: Path, dest: Path) -> Path:
    """A copy of ``source`` whose card says it was trained on synthetic phantoms."""
    import dataclasses

    from fracture.model.folder import ModelFolder, read_config

    shutil.copytree(source, dest)
    config, card = read_config(dest)
    training_data = {
        "name": "Synthetic phantom long bones (generated by fracture)",
        "kind": "synthetic phantoms",
        "licence": None,
        "citation": None,
        "fingerprint": "ab" * 32,
        "counts": {"train": {"fractured": 10, "normal": 10, "total": 20}},
    }
    # A new name makes new checksums: the copy is a model of its own, not the source promoted.
    ModelFolder(dest).rewrite_config(
        dataclasses.replace(config, name="phantom-demo"),
        card,
        name="phantom-demo",
        training_data=training_data,
    )
    return dest


@pytest.fixture
def synthetic_active(fresh_settings, tmp_path, monkeypatch):
    """A models folder whose active model was trained on phantoms, with a real one beside it."""
    models = tmp_path / "models"
    shutil.copytree(fresh_settings.models / "default", models / "default")
    _synthetic_model(fresh_settings.models / "default", models / "phantom-demo")
    (models / "ACTIVE").write_text("phantom-demo\n")
    monkeypatch.setenv("FRACTURE_MODELS_DIR", str(models))
    get_settings.cache_clear()
    from app_pages import _common

    _common._lookup_active_model.clear()
    yield models
    _common._lookup_active_model.clear()


def test_a_synthetic_active_model_puts_a_banner_on_every_page(synthetic_active):
    at = _open("app_pages/predict.py")
    for page in (
        "app_pages/predict.py",
        "app_pages/dataset.py",
        "app_pages/train.py",
        "app_pages/model.py",
    ):
        at.switch_page(page).run()
        assert not at.exception, [e.value for e in at.exception]
        assert any(
            "trained on synthetic phantoms; its output means nothing for real "
            "radiographs" in str(w.value)
            for w in at.warning
        ), page


def test_a_synthetic_models_card_has_no_fracatlas_text(synthetic_active):
    at = _open("app_pages/model.py")
    texts = _texts(at)
    assert "synthetic phantoms" in texts.lower()
    limitations = texts.lower().split("known limitations")[1]
    assert "FracAtlas" not in texts and "hardware" not in limitations


def test_activating_a_synthetic_version_needs_a_confirmation(fresh_settings, tmp_path, monkeypatch):
    from fracture.model import registry

    models = tmp_path / "models"
    shutil.copytree(fresh_settings.models / "default", models / "default")
    _synthetic_model(fresh_settings.models / "default", models / "phantom-demo")
    monkeypatch.setenv("FRACTURE_MODELS_DIR", str(models))
    get_settings.cache_clear()
    at = _open("app_pages/model.py")
    assert at.selectbox[0].value == "phantom-demo"
    activate = next(b for b in at.button if b.label == "Activate")
    assert activate.disabled
    next(c for c in at.checkbox if "synthetic phantoms" in c.label).check().run()
    next(b for b in at.button if b.label == "Activate").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert registry.active_name(get_settings()) == "phantom-demo"


def test_promoting_a_synthetic_run_needs_a_confirmation(fresh_settings, tmp_path, monkeypatch):
    import json

    import fracture.model.registry as registry

    runs = tmp_path / "runs"
    run = runs / "phantom-run"
    _synthetic_model(fresh_settings.models / "default", run / "model")
    (run / "status.json").write_text(json.dumps({"state": "completed", "started": 1.0}))
    monkeypatch.setenv("FRACTURE_RUNS_DIR", str(runs))
    get_settings.cache_clear()
    calls = []
    monkeypatch.setattr(
        registry,
        "promote",
        lambda candidate, **k: calls.append(candidate) or SimpleNamespace(name="phantom-demo-1"),
    )
    at = _open("app_pages/train.py")
    assert not at.exception, [e.value for e in at.exception]
    promote = next(b for b in at.button if b.label == "Promote")
    assert promote.disabled
    next(c for c in at.checkbox if "promote it anyway" in c.label).check().run()
    next(b for b in at.button if b.label == "Promote").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert calls == [run / "model"]


def test_reruns_keep_the_keras_state_but_still_close_matplotlib_figures(monkeypatch):
    """Streamlit's after-run cleanup would clear the Keras session on every rerun."""
    import sys

    import keras
    from streamlit.runtime.scriptrunner import script_runner

    from app_pages import _common as common

    cleared = []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *a, **k: cleared.append(1))
    shipped = script_runner._clean_problem_modules
    if not getattr(shipped, "keeps_keras", False):  # an app test in this process patched it
        shipped()
        assert cleared == [1]  # Streamlit's own cleanup, as shipped, clears it
        cleared.clear()
    # Streamlit's cleanup as it is before the app starts, whatever ran before this test.
    monkeypatch.setattr(script_runner, "_clean_problem_modules", keras.backend.clear_session)
    closed = []
    monkeypatch.setitem(
        sys.modules, "matplotlib.pyplot", SimpleNamespace(close=lambda which: closed.append(which))
    )
    common.keep_keras_state_between_reruns()
    common.keep_keras_state_between_reruns()  # idempotent
    script_runner._clean_problem_modules()
    assert cleared == [] and closed == ["all"]
