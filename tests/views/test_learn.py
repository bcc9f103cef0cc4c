"""The Learn page's logic (fracture.views.learn): drawing a round and scoring it, no Streamlit."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from fracture.data.phantoms import synthesize_phantoms
from fracture.evaluation.localisation import TOLERANCE
from fracture.inference.prediction import Prediction
from fracture.views import browse, learn


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return synthesize_phantoms(tmp_path_factory.mktemp("learn") / "phantoms", 60, size=64, seed=3)


def test_the_same_seed_draws_the_same_cases_and_another_seed_others(phantoms):
    first = learn.draw_round(phantoms, "val", 8, seed=11)
    again = learn.draw_round(phantoms, "val", 8, seed=11)
    other = learn.draw_round(phantoms, "val", 8, seed=12)
    assert [c.path for c in first] == [c.path for c in again]
    assert [c.path for c in first] != [c.path for c in other]
    assert len({c.path for c in first}) == 8


def test_the_order_the_files_were_listed_in_does_not_change_the_round(phantoms):
    import dataclasses

    shuffled = dataclasses.replace(phantoms, records=list(reversed(phantoms.records)))
    assert [c.path for c in learn.draw_round(shuffled, "val", 8, seed=5)] == [
        c.path for c in learn.draw_round(phantoms, "val", 8, seed=5)
    ]


def test_a_round_is_half_fractured_with_boxes_and_only_from_the_split(phantoms):
    cases = learn.draw_round(phantoms, "val", 9, seed=0)
    val_paths = {r.path for r in phantoms.split("val")}
    assert {c.path for c in cases} <= val_paths
    assert sum(c.fractured for c in cases) == 5
    assert all(c.boxes for c in cases if c.fractured)
    assert all(not c.boxes for c in cases if not c.fractured)
    truth = {r.path: r.label for r in phantoms.records}
    assert all(truth[c.path] == int(c.fractured) for c in cases)


def test_a_round_never_draws_from_train_and_says_when_a_split_is_too_small(phantoms):
    with pytest.raises(ValueError, match="never from 'train'"):
        learn.draw_round(phantoms, "train", 4, seed=0)
    with pytest.raises(ValueError, match="a round of 500 needs 500"):
        learn.draw_round(phantoms, "val", 500, seed=0)
    assert learn.eligible_splits(phantoms) == ["val"]


def _case(fractured: bool, name: str = "x.png") -> learn.Case:
    boxes = ((0.4, 0.4, 0.6, 0.6),) if fractured else ()
    return learn.Case(path=Path(name), name=name, fractured=fractured, boxes=boxes)


def _model(verdict: str, point=None, probability=0.5) -> learn.ModelAnswer:
    return learn.ModelAnswer(probability=probability, verdict=verdict, point=point)


def test_a_scripted_round_is_scored_for_the_student_and_the_model():
    inside, outside = (0.5, 0.5), (0.1, 0.1)
    edge = (0.6 + TOLERANCE * 0.9, 0.5)  # within the tolerance of the box's edge
    rounds = [
        # fractured cases: the student finds 3 of 4, points inside on 2 (one at the edge)
        learn.CaseResult(_case(True), "fracture", inside, _model("fracture", inside)),
        learn.CaseResult(_case(True), "fracture", edge, _model("normal", inside)),
        learn.CaseResult(_case(True), "fracture", outside, _model("fracture", outside)),
        # answering normal is not pointing, even with a point typed in
        learn.CaseResult(_case(True), "normal", inside, _model("not assessed")),
        # normal cases: the student is right on 2 of 3, the model on 1 (one not assessed)
        learn.CaseResult(_case(False), "normal", None, _model("normal")),
        learn.CaseResult(_case(False), "normal", None, _model("fracture", outside)),
        learn.CaseResult(_case(False), "fracture", inside, _model("not assessed")),
    ]
    score = learn.score_round(rounds)
    student, model = score["student"], score["model"]
    assert (student["sensitivity"]["hits"], student["sensitivity"]["n"]) == (3, 4)
    assert (student["specificity"]["hits"], student["specificity"]["n"]) == (2, 3)
    assert (student["pointing"]["hits"], student["pointing"]["n"]) == (2, 4)
    # the model: fracture on 2 of 4 fractured; its peak inside on 2 (a normal label still points)
    assert (model["sensitivity"]["hits"], model["specificity"]["hits"]) == (2, 1)
    assert model["pointing"]["hits"] == 2
    assert score["model_not_assessed"] == 2
    low, high = student["sensitivity"]["ci"]
    assert low < 0.75 < high
    rows = learn.summary_rows(score)
    assert rows[0]["you"].startswith("75% (3 of 4") and rows[2]["model"].startswith("50% (2 of 4")


def test_the_round_csv_has_one_row_per_case_with_both_answers():
    rounds = [
        learn.CaseResult(
            _case(True, "a.png"), "fracture", (0.5, 0.5), _model("fracture", (0.2, 0.3), 0.81)
        ),
        learn.CaseResult(_case(False, "b.png"), "normal", None, _model("not assessed", None, 0.4)),
    ]
    text = learn.round_csv(
        rounds,
        dataset="phantoms",
        split="val",
        seed=7,
        operating_point="high_sensitivity",
        threshold=0.5,
    ).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(learn.CSV_COLUMNS)
    assert [r["file"] for r in rows] == ["a.png", "b.png"]
    assert rows[0]["student_pointing_hit"] == "1" and rows[0]["model_pointing_hit"] == "0"
    assert rows[1]["student_pointing_hit"] == "" and rows[1]["model_answer"] == "not_assessed"
    assert rows[0]["model_probability"] == "0.8100" and rows[0]["seed"] == "7"


def test_the_models_answer_points_at_its_heat_maps_peak_and_not_when_unjudged():
    heat = np.zeros((10, 20), np.float32)
    heat[7, 3] = 1.0
    scored = Prediction(
        source="a", status="ok", probability=0.9, in_distribution=True, heatmap=heat
    )
    answer = learn.model_answer(scored, threshold=0.5)
    assert answer.verdict == "fracture"
    assert answer.point == pytest.approx((3.5 / 20, 7.5 / 10))
    flagged = Prediction(
        source="a", status="ok", probability=0.9, in_distribution=False, heatmap=heat
    )
    assert learn.model_answer(flagged, 0.5).point is None
    assert learn.model_answer(flagged, 0.5).verdict == "not assessed"
    flat = Prediction(source="a", status="ok", probability=0.1, heatmap=np.zeros((4, 4)))
    assert learn.model_answer(flat, 0.5).point is None


def test_dataset_folders_put_fracatlas_first(tmp_path):
    for name in ("zeta", "FracAtlas", "alpha", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / "file.txt").write_text("x")
    assert [p.name for p in browse.dataset_folders(tmp_path)] == ["FracAtlas", "alpha", "zeta"]
    assert browse.dataset_folders(tmp_path / "missing") == []
