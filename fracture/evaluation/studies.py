"""Study-level results: one score per study from the scores of its images (MURA).

MURA (Rajpurkar, Irvin, Bagul et al., "MURA: Large Dataset for Abnormality Detection in
Musculoskeletal Radiographs", arXiv:1712.06957, 2017) labels *studies*, not images: a
radiologist reads all views of one examination and calls the study normal or abnormal,
and every image inherits that label. A model's figures are therefore reported per study,
from one score per study, and the leaderboard ranks models by Cohen's kappa between the
study-level decision and the radiologists' label (Cohen 1960).

How the images' scores become the study's score:

* ``"max"`` (the default, as issue 13 specifies): a study is as abnormal as its most
  abnormal view. A finding is often visible on one view only, and the maximum does not
  let the normal-looking views dilute it.
* ``"mean"``: the arithmetic mean of the views' probabilities, the rule of the MURA
  paper's DenseNet-169 baseline. It is reported beside the maximum so that a figure can
  be compared with published ones.

Decisions use the model's own operating points (thresholds on the calibrated probability,
chosen on images): the study-level sensitivity, specificity and kappa are those of the
model as deployed. The maximum over several views sits above a typical single view, so
these thresholds flag somewhat more studies than images; kappa shows what that costs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from fracture.evaluation.metrics import binary_report
from fracture.evaluation.multiclass import cohen_kappa

__all__ = ["AGGREGATES", "study_scores", "study_level_report", "format_study_level"]

AGGREGATES = ("max", "mean")


def study_scores(
    labels: ArrayLike,
    probabilities: ArrayLike,
    studies: Sequence[str],
    aggregate: str = "max",
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Study ids (sorted), their labels and their aggregated probabilities.

    Raises ``ValueError`` when a study's images disagree on the label: in MURA the label
    belongs to the study, so a disagreement means the records were mixed up.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if isinstance(studies, (str, bytes)):
        raise ValueError("studies must be a sequence of study ids, not a single string")
    keys = np.asarray([str(study) for study in studies], dtype=object)
    if not labels.size == probabilities.size == keys.size:
        raise ValueError(
            f"labels ({labels.size}), probabilities ({probabilities.size}) and studies "
            f"({keys.size}) differ in length"
        )
    if labels.size == 0:
        raise ValueError("no images to aggregate")
    ids, inverse = np.unique(keys, return_inverse=True)
    n_studies = ids.size
    counts = np.bincount(inverse, minlength=n_studies)
    positives = np.bincount(inverse, weights=labels, minlength=n_studies)
    mixed = np.flatnonzero((positives > 0) & (positives < counts))
    if mixed.size:
        raise ValueError(
            f"{mixed.size} stud{'y' if mixed.size == 1 else 'ies'} mix normal and abnormal "
            f"images (e.g. {ids[mixed[0]]}); a study has one label"
        )
    if aggregate == "max":
        scores = np.full(n_studies, -np.inf)
        np.maximum.at(scores, inverse, probabilities)
    else:
        scores = np.bincount(inverse, weights=probabilities, minlength=n_studies) / counts
    return [str(study) for study in ids], (positives > 0).astype(np.int64), scores


def _decisions(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    flagged = scores >= threshold
    tp = int(np.sum(flagged & (labels == 1)))
    fp = int(np.sum(flagged & (labels == 0)))
    fn = int(np.sum(~flagged & (labels == 1)))
    tn = int(np.sum(~flagged & (labels == 0)))
    return {
        "threshold": float(threshold),
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "kappa": cohen_kappa([[tn, fp], [fn, tp]]),
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def study_level_report(
    labels: ArrayLike,
    probabilities: ArrayLike,
    studies: Sequence[str],
    thresholds: Mapping[str, float],
    *,
    operating_point: str,
    regions: Sequence[str | None] | None = None,
    aggregate: str = "max",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Figures per study: AUROC, and decisions with Cohen's kappa at every operating point.

    ``labels`` (0 normal / 1 abnormal), ``probabilities`` (calibrated) and ``studies``
    (a study id) are per image; ``thresholds`` maps operating-point names to thresholds,
    and ``operating_point`` names the main one. Returns :func:`binary_report` of the
    study scores at the main threshold (AUROC with its bootstrap interval, ROC, confusion
    matrix, ...) plus ``aggregate``, ``n_images``, ``n_studies``, ``kappa`` (main operating
    point), ``operating_points`` (``{name: {threshold, sensitivity, specificity, kappa,
    confusion_matrix}}``) and, when ``regions`` are given (one per image, constant within
    a study), ``by_region``: ``{region: {n_studies, n_positive, auroc, kappa}}``, the
    leaderboard's per-study-type breakdown.
    """
    if operating_point not in thresholds:
        raise ValueError(f"operating point {operating_point!r} is not among {sorted(thresholds)}")
    ids, study_labels, scores = study_scores(labels, probabilities, studies, aggregate)
    report = binary_report(
        study_labels,
        scores,
        thresholds[operating_point],
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    points = {
        str(name): _decisions(study_labels, scores, float(value))
        for name, value in thresholds.items()
    }
    report.update(
        {
            "aggregate": aggregate,
            "n_images": int(np.asarray(labels).size),
            "n_studies": len(ids),
            "operating_point": operating_point,
            "kappa": points[operating_point]["kappa"],
            "operating_points": points,
        }
    )
    if regions is not None:
        if len(regions) != len(studies):
            raise ValueError(f"{len(regions)} regions for {len(studies)} images")
        region_of = {str(study): region for study, region in zip(studies, regions)}
        study_regions = np.asarray([region_of[study] or "unknown" for study in ids], dtype=object)
        by_region = {}
        for region in sorted(set(study_regions)):
            members = study_regions == region
            part = binary_report(
                study_labels[members],
                scores[members],
                thresholds[operating_point],
                n_bootstrap=0,
            )
            by_region[region] = {
                "n_studies": int(members.sum()),
                "n_positive": part["n_positive"],
                "auroc": part["auroc"],
                "kappa": cohen_kappa(part["confusion_matrix"]),
            }
        report["by_region"] = by_region
    return report


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_study_level(report: Mapping[str, Any]) -> str:
    """Plain-text summary of :func:`study_level_report`."""
    rule = "highest" if report["aggregate"] == "max" else "mean"
    lines = [
        f"Studies: {report['n_studies']} ({report['n_images']} images; a study scores the "
        f"{rule} probability of its images)",
        f"Study AUROC  {_fmt(report.get('auroc'))}"
        + (
            f" [95% CI {_fmt(report['auroc_ci'][0])}-{_fmt(report['auroc_ci'][1])}]"
            if report.get("auroc_ci")
            else ""
        ),
    ]
    for name, point in report["operating_points"].items():
        lines.append(
            f"  at {name.replace('_', ' ')} (threshold {point['threshold']:.4f}): "
            f"Cohen's kappa {_fmt(point['kappa'])}, sensitivity {_fmt(point['sensitivity'])}, "
            f"specificity {_fmt(point['specificity'])}"
        )
    mean_rule = report.get("mean_rule")
    if mean_rule:
        lines.append(
            f"  with the MURA paper's mean over images: AUROC {_fmt(mean_rule['auroc'])}, "
            f"kappa {_fmt(mean_rule['kappa'])}"
        )
    for region, entry in (report.get("by_region") or {}).items():
        lines.append(
            f"  {region:<12} studies {entry['n_studies']:>5}  AUROC {_fmt(entry['auroc'])}  "
            f"kappa {_fmt(entry['kappa'])}"
        )
    return "\n".join(lines)
