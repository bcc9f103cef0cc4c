"""Studies on the Predict page (fracture.views.studies): grouping and the one study verdict.

Unit tests on hand-made predictions (no network), then the page itself with AppTest:
a folder of three views gives one study row with the maximum over its assessed views,
and a flagged view is excluded and listed.
"""

from __future__ import annotations

import dataclasses

import pytest
from test_app import _open, _served, app_env  # noqa: F401 - the dashboard's fixture, shared

from fracture.inference.prediction import Prediction
from fracture.io.dicom import study_instance_uid
from fracture.views import studies


def _prediction(name: str, probability: float | None, *, flagged: bool = False, ok: bool = True):
    return Prediction(
        source=name,
        status="ok" if ok else "error",
        probability=probability,
        threshold=0.5,
        in_distribution=not flagged,
        error=None if ok else "unreadable",
    )


def test_a_study_is_as_suspicious_as_its_most_suspicious_assessed_view():
    predictions = [
        _prediction("p1/ap.png", 0.2),
        _prediction("p1/lat.png", 0.7),
        _prediction("p1/obl.png", 0.4),
        _prediction("p1/photo.png", 0.99, flagged=True),
        _prediction("p2/ap.png", 0.1),
        _prediction("p2/lat.png", 0.3),
        _prediction("alone.png", 0.9),
    ]
    names = [p.source for p in predictions]
    groups = ["p1"] * 4 + ["p2"] * 2 + [None]
    rows = studies.study_rows(predictions, names, groups, threshold=0.5)
    assert [row.study for row in rows] == ["p1", "p2"]  # most suspicious first; no lone image
    first, second = rows
    # The flagged view's 0.99 neither raises nor lowers the study: it is excluded and listed.
    assert first.probability == pytest.approx(0.7) and first.finding == "fracture"
    assert first.views == ("p1/lat.png", "p1/obl.png", "p1/ap.png")
    assert first.excluded == ("p1/photo.png",)
    assert second.finding == "normal" and second.probability == pytest.approx(0.3)
    # At a lower threshold the second study turns fracture too (the verdict follows the point).
    lower = studies.study_rows(predictions, names, groups, threshold=0.25)
    assert [row.finding for row in lower] == ["fracture", "fracture"]
    frame = studies.studies_frame(rows)
    assert frame["excluded"].tolist() == ["p1/photo.png (not assessed)", ""]
    assert frame["probability"].tolist() == ["70%", "30%"]


def test_a_study_without_an_assessed_view_is_not_assessed():
    predictions = [_prediction("a", 0.9, flagged=True), _prediction("b", None, ok=False)]
    (row,) = studies.study_rows(predictions, ["a", "b"], ["s", "s"], threshold=0.5)
    assert row.finding == "not assessed" and row.probability is None
    assert row.excluded == ("a",) and row.unreadable == ("b",)
    assert "b (could not be read)" in studies.studies_frame([row])["excluded"][0]


def test_folder_studies_are_sub_folders_below_the_chosen_folder():
    names = ["xrays/p1/a.png", "xrays/p1/b.png", "xrays/c.png"]
    root = studies.common_root(names)
    assert root == "xrays"
    assert [studies.folder_of(n, root) for n in names] == ["p1", "p1", None]
    assert studies.common_root(["a.png", "p/b.png"]) is None
    assert studies.folder_of("p/q/a.png") == "p/q"


def test_the_study_uid_is_read_from_a_dicom_header_only():
    from dicom_helpers import encoded, make_study

    first, second = (encoded(ds) for ds in make_study(2))
    uid = study_instance_uid(first)
    assert uid and uid == study_instance_uid(second)
    assert study_instance_uid(b"\x89PNG not dicom") is None
    assert studies.study_name(uid).endswith(uid[-8:]) and uid not in studies.study_name(uid)


# --------------------------------------------------------------------------------------
# The page


@pytest.fixture
def page(app_env):  # noqa: F811
    return _open("app_pages/predict.py")


def test_predict_folder_of_three_views_gives_one_study_row(app_env, page, monkeypatch):  # noqa: F811
    from app_helpers import png_bytes

    # The batch view scores through the shared queue (fracture.views.batch).
    batch = _served(app_env).single
    original = batch.iter_predict

    def one_flagged(*args, **kwargs):
        for p in original(*args, **kwargs):
            flag = p.ok and p.source.endswith("photo.png")
            yield dataclasses.replace(p, in_distribution=False) if flag else p

    monkeypatch.setattr(batch, "iter_predict", one_flagged)
    at = page
    (mode,) = [r for r in at.radio if r.label == "Upload"]
    mode.set_value("Folder").run()
    uploader = at.file_uploader[0]
    for name, seed in (("ap", 11), ("lat", 12), ("obl", 13), ("photo", 14)):
        uploader.upload(f"case/patient1/{name}.png", png_bytes(seed), "image/png")
    uploader.upload("case/other.png", png_bytes(15), "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    images = at.dataframe[0].value
    (study_frame,) = [d.value for d in at.dataframe if "study" in d.value.columns]
    assert len(study_frame) == 1
    row = study_frame.iloc[0]
    assert row["study"] == "patient1"
    assessed = images[
        images["file"].str.startswith("case/patient1/")
        & images["label"].isin(["fracture", "normal"])
    ]
    assert len(assessed) == 3
    best = assessed.loc[assessed["probability"].idxmax()]
    assert row["probability"] == best["shown_probability"]
    assert row["finding"] == best["label"]
    assert row["excluded"] == "case/patient1/photo.png (not assessed)"
    assert set(row["views"].split(", ")) == set(assessed["file"])
