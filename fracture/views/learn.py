"""The Learn page, computed without Streamlit: draw a round of cases, score the student and the model.

A student sees a radiograph from a dataset with radiologists' boxes, answers
fracture or normal, and points at the fracture; then the truth is revealed beside
the model's answer. A round of N cases ends with three figures for the student
and the same three for the model on the same cases:

* **sensitivity**: fractured cases answered fracture;
* **specificity**: normal cases answered normal;
* **pointing score**: fractured cases where the point lies in a radiologists'
  box, grown by :data:`fracture.evaluation.localisation.TOLERANCE` of the image
  side. The student's point is where they clicked (answering normal is not
  pointing, so it is a miss); the model's is its heat map's peak, as in the
  pointing game of Zhang et al. (ECCV 2016), the one rule of
  :func:`fracture.evaluation.localisation.point_in_boxes` for both.

Each figure comes with its Wilson 95% interval: ten cases cannot tell 70% from
90%, and a student should see that. Cases come only from a val or test split,
never from train, where the model has seen the answers. A round is drawn from a
seed, so a teacher can give a whole class the same round; nothing is stored
beyond the session except the CSV a student downloads.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fracture.data.records import Dataset, Record, relative_posix
from fracture.evaluation.localisation import TOLERANCE, map_peak, point_in_boxes
from fracture.evaluation.proportions import wilson_rate
from fracture.inference.prediction import Prediction
from fracture.inference.verdict import FRACTURE, NORMAL
from fracture.views.results import verdict

__all__ = [
    "ANSWERS",
    "CSV_COLUMNS",
    "LEARN_SPLITS",
    "Case",
    "CaseResult",
    "ModelAnswer",
    "draw_round",
    "eligible_splits",
    "model_answer",
    "round_csv",
    "score_round",
    "summary_rows",
]

Box = tuple[float, float, float, float]
# Never train: the model has learnt those images' answers, so comparing with it there is unfair.
LEARN_SPLITS = ("val", "test")
ANSWERS = (FRACTURE, NORMAL)
CSV_COLUMNS = (
    "case",
    "file",
    "truth",
    "student_answer",
    "student_x",
    "student_y",
    "student_pointing_hit",
    "model_probability",
    "model_answer",
    "model_x",
    "model_y",
    "model_pointing_hit",
    "dataset",
    "split",
    "seed",
    "operating_point",
    "threshold",
)


@dataclass(frozen=True)
class Case:
    """One radiograph of a round: where it is and the radiologists' truth."""

    path: Path
    name: str  # relative to the dataset root; shown only after the round (it may name the class)
    fractured: bool
    boxes: tuple[Box, ...]  # normalised x0, y0, x1, y1; at least one when fractured
    region: str | None = None


@dataclass(frozen=True)
class ModelAnswer:
    """The model's answer on one case: probability, verdict, where its heat map peaks, its box."""

    probability: float | None
    verdict: str  # "fracture", "normal", "not assessed", or "" (the file could not be scored)
    point: tuple[float, float] | None  # normalised peak of the heat map; None when flat or unjudged
    box: Box | None = None
    box_style: str | None = None


@dataclass(frozen=True)
class CaseResult:
    """A case with the student's answer and point, and the model's answer."""

    case: Case
    answer: str  # "fracture" or "normal"
    point: tuple[float, float] | None  # where the student clicked, normalised; None: no click
    model: ModelAnswer

    @property
    def student_hit(self) -> bool | None:
        """Whether the student pointed into a box; None for a normal case (nothing to point at)."""
        return _pointing_hit(self.case, self.point if self.answer == FRACTURE else None)

    @property
    def model_hit(self) -> bool | None:
        """Whether the model's heat-map peak lies in a box; None for a normal case."""
        point = self.model.point if self.model.verdict in ANSWERS else None
        return _pointing_hit(self.case, point)


def _pointing_hit(case: Case, point: tuple[float, float] | None) -> bool | None:
    if not case.fractured:
        return None
    return point is not None and point_in_boxes(point, case.boxes, tolerance=TOLERANCE)


def eligible_splits(dataset: Dataset) -> list[str]:
    """The splits a round may draw from: val and test, where they hold a fractured case with a box.

    Empty for a dataset of several classes (a round asks fracture or normal).
    """
    if dataset.classes is not None:
        return []
    return [name for name in LEARN_SPLITS if _candidates(dataset.split(name))[0]]


def _candidates(records: Sequence[Record]) -> tuple[list[Record], list[Record]]:
    # Fractured cases need a box to point at; a binary dataset only (label 1 = fractured).
    fractured = sorted((r for r in records if r.label == 1 and r.boxes), key=lambda r: r.path)
    normal = sorted((r for r in records if r.label == 0), key=lambda r: r.path)
    return fractured, normal


def draw_round(dataset: Dataset, split: str, n: int, seed: int) -> list[Case]:
    """``n`` cases from ``split`` (val or test), half fractured where the split allows, in a
    seeded order.

    The same dataset, split, ``n`` and ``seed`` give the same cases in the same
    order, whatever order the files were listed in. Half fractured, not the
    split's share (FracAtlas val is about one in six): with few fractured cases
    a round could not measure sensitivity at all. Fractured images without a
    box are left out (there is nothing to point at).
    """
    if split not in LEARN_SPLITS:
        raise ValueError(
            f"a round draws from {' or '.join(LEARN_SPLITS)}, never from {split!r}: "
            "the model has seen the answers of its training images"
        )
    if dataset.classes is not None:
        raise ValueError("a round needs a fractured-or-normal dataset, not one of several classes")
    if n < 1:
        raise ValueError(f"a round has at least one case, got {n}")
    fractured, normal = _candidates(dataset.split(split))
    if len(fractured) + len(normal) < n:
        raise ValueError(
            f"the {split} split has {len(fractured)} fractured case(s) with boxes and "
            f"{len(normal)} normal case(s); a round of {n} needs {n}"
        )
    rng = np.random.default_rng(seed)
    n_fractured = min(len(fractured), max(n - len(normal), math.ceil(n / 2)))
    chosen = [fractured[i] for i in rng.choice(len(fractured), n_fractured, replace=False)]
    chosen += [normal[i] for i in rng.choice(len(normal), n - n_fractured, replace=False)]
    order = rng.permutation(n)
    return [
        Case(
            path=record.path,
            name=relative_posix(record.path, dataset.root),
            fractured=record.label == 1,
            boxes=tuple(tuple(float(v) for v in box) for box in record.boxes),  # type: ignore[misc]
            region=record.region,
        )
        for record in (chosen[i] for i in order)
    ]


def model_answer(prediction: Prediction, threshold: float) -> ModelAnswer:
    """The model's answer on a case, from a prediction made with its heat map.

    An input the out-of-distribution check flags gets no label and no point: the
    model cannot judge it, and the round counts that as neither right answer.
    """
    label = verdict(prediction, threshold)
    judged = label in ANSWERS
    point = map_peak(prediction.heatmap) if judged and prediction.heatmap is not None else None
    return ModelAnswer(
        probability=prediction.probability,
        verdict=label,
        point=point,
        box=prediction.box if judged else None,
        box_style=prediction.box_style if judged else None,
    )


def score_round(results: Sequence[CaseResult]) -> dict[str, Any]:
    """Sensitivity, specificity and pointing score of the student and of the model, same cases.

    Returns ``{"student": {...}, "model": {...}, "n", "n_fractured", "n_normal",
    "model_not_assessed"}``; each figure is a :func:`wilson_rate` result. The
    model's "not assessed" answers count as wrong on both sides: it gave no answer.
    """
    fractured = [r for r in results if r.case.fractured]
    normal = [r for r in results if not r.case.fractured]

    def figures(answer_of, hit_of) -> dict[str, Any]:
        return {
            "sensitivity": wilson_rate(
                sum(answer_of(r) == FRACTURE for r in fractured), len(fractured)
            ),
            "specificity": wilson_rate(sum(answer_of(r) == NORMAL for r in normal), len(normal)),
            "pointing": wilson_rate(sum(bool(hit_of(r)) for r in fractured), len(fractured)),
        }

    return {
        "student": figures(lambda r: r.answer, lambda r: r.student_hit),
        "model": figures(lambda r: r.model.verdict, lambda r: r.model_hit),
        "n": len(results),
        "n_fractured": len(fractured),
        "n_normal": len(normal),
        "model_not_assessed": sum(r.model.verdict not in ANSWERS for r in results),
    }


def _percent_with_interval(entry: dict[str, Any]) -> str:
    if entry["rate"] is None:
        return "no cases"
    low, high = entry["ci"]
    return (
        f"{100 * entry['rate']:.0f}% ({entry['hits']} of {entry['n']}; "
        f"95% CI {100 * low:.0f}–{100 * high:.0f}%)"
    )


def summary_rows(score: dict[str, Any]) -> list[dict[str, str]]:
    """The round's result as table rows: one per figure, the student beside the model."""
    names = {
        "sensitivity": "Sensitivity (fractures found)",
        "specificity": "Specificity (normals called normal)",
        "pointing": "Pointing score (point inside a radiologists' box)",
    }
    return [
        {
            "figure": label,
            "you": _percent_with_interval(score["student"][key]),
            "model": _percent_with_interval(score["model"][key]),
        }
        for key, label in names.items()
    ]


def _number(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _hit(value: bool | None) -> str:
    return "" if value is None else str(int(value))


def round_csv(
    results: Sequence[CaseResult],
    *,
    dataset: str,
    split: str,
    seed: int,
    operating_point: str,
    threshold: float,
) -> bytes:
    """The student's round as CSV (one row per case, :data:`CSV_COLUMNS`), for them to keep."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for number, result in enumerate(results, start=1):
        student_point = result.point if result.answer == FRACTURE else None
        model_point = result.model.point
        writer.writerow(
            {
                "case": number,
                "file": result.case.name,
                "truth": FRACTURE if result.case.fractured else NORMAL,
                "student_answer": result.answer,
                "student_x": _number(student_point[0] if student_point else None),
                "student_y": _number(student_point[1] if student_point else None),
                "student_pointing_hit": _hit(result.student_hit),
                "model_probability": _number(result.model.probability),
                "model_answer": result.model.verdict.replace(" ", "_"),
                "model_x": _number(model_point[0] if model_point else None),
                "model_y": _number(model_point[1] if model_point else None),
                "model_pointing_hit": _hit(result.model_hit),
                "dataset": dataset,
                "split": split,
                "seed": seed,
                "operating_point": operating_point,
                "threshold": _number(threshold),
            }
        )
    return buffer.getvalue().encode("utf-8")
