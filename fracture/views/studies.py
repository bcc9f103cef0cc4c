"""Studies on the Predict page: several views of one patient read as one row.

A radiograph series is read as a whole: a fracture seen on the lateral view and
missed on the AP is still a fracture. Uploads are grouped by their DICOM
StudyInstanceUID or, in folder mode, by their sub-folder; each group's finding
and probability come from :func:`fracture.inference.verdict.study_verdict`, the
same function the DICOM node uses, so the page and the node never disagree.
Views the out-of-distribution gate flagged are excluded from the study's
probability and listed.

Streamlit-free; the page only calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from fracture.inference.prediction import Prediction
from fracture.inference.verdict import NOT_ASSESSED, study_verdict
from fracture.views.results import format_probability

if TYPE_CHECKING:  # pragma: no cover - pandas loads lazily with the frame
    import pandas as pd

__all__ = ["StudyRow", "common_root", "folder_of", "studies_frame", "study_rows", "study_name"]


def folder_of(name: str, root: str | None = None) -> str | None:
    """The sub-folder of an uploaded file's relative path below ``root``; None at the top level.

    A browser names a folder upload's files ``<chosen folder>/<sub-folders>/<file>``:
    the chosen folder (``root``, see :func:`common_root`) is the upload, not a study.
    """
    parent = PurePosixPath(name.replace("\\", "/")).parent
    if root is not None:
        try:
            parent = parent.relative_to(root)
        except ValueError:
            pass
    return None if str(parent) in ("", ".") else str(parent)


def common_root(names: Sequence[str]) -> str | None:
    """The folder every name lies in (the folder the user chose), or None."""
    parents = [PurePosixPath(name.replace("\\", "/")).parts[:-1] for name in names]
    if not parents or not all(parents):
        return None
    first = parents[0][0]
    return first if all(parts[0] == first for parts in parents) else None


def study_name(study_uid: str) -> str:
    """A DICOM study as the page names it: the UID's last digits, never the patient."""
    return f"DICOM study ...{study_uid[-8:]}"


@dataclass(frozen=True)
class StudyRow:
    """One study: its finding at the threshold, its probability, and which views made it."""

    study: str
    finding: str  # "fracture", "normal", or "not assessed"
    probability: float | None  # of the most suspicious assessed view
    views: tuple[str, ...]  # assessed views, the strongest first
    excluded: tuple[str, ...]  # flagged by the out-of-distribution gate
    unreadable: tuple[str, ...]


def study_rows(
    predictions: Sequence[Prediction],
    names: Sequence[str],
    studies: Sequence[str | None],
    threshold: float,
) -> list[StudyRow]:
    """One row per study of two or more images (``studies[i]`` names image i's study, or None).

    Most suspicious first; studies without an assessed view last, in name order.
    """
    groups: dict[str, list[int]] = {}
    for index, study in enumerate(studies):
        if study is not None:
            groups.setdefault(study, []).append(index)
    rows = []
    for study, members in groups.items():
        if len(members) < 2:
            continue
        result = study_verdict([predictions[i].verdict(threshold) for i in members])
        assessed = sorted(
            result.assessed,
            key=lambda i: -(predictions[members[i]].probability or 0.0),
        )
        finding = result.verdict.finding or (
            "not assessed" if result.verdict.label == NOT_ASSESSED else ""
        )
        rows.append(
            StudyRow(
                study=study,
                finding=finding,
                probability=result.verdict.probability if result.strongest is not None else None,
                views=tuple(names[members[i]] for i in assessed),
                excluded=tuple(names[members[i]] for i in result.not_assessed),
                unreadable=tuple(names[members[i]] for i in result.failed),
            )
        )
    rows.sort(key=lambda row: (row.probability is None, -(row.probability or 0.0), row.study))
    return rows


def studies_frame(rows: Sequence[StudyRow]) -> "pd.DataFrame":
    """The studies as the page's table: plain words, the file names of each group."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "study": row.study,
                "finding": row.finding,
                "probability": format_probability(row.probability)
                if row.probability is not None
                else "",
                "views": ", ".join(row.views),
                "excluded": ", ".join(
                    [f"{name} (not assessed)" for name in row.excluded]
                    + [f"{name} (could not be read)" for name in row.unreadable]
                ),
            }
            for row in rows
        ],
        columns=["study", "finding", "probability", "views", "excluded"],
    )
