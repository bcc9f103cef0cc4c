"""Context for one result: how the model did on validation at this operating point and region.

A probability means little without the error rates behind its label. This puts
beside a result the validation sensitivity and specificity at the operating
point in use, with their 95% intervals, and what the model's ``evaluation.json``
holds for the body region the region head named. Nothing is measured here: the
rates and their confusion counts are the evaluation report's own; the intervals
are the Wilson intervals of those counts (:func:`wilson_rate`, the one the
evaluation uses for every other rate).

The report stores sensitivity and specificity for the whole validation split
only; per region it stores the AUROC with its interval and the counts (see
:func:`fracture.evaluation.metrics.subgroup_auroc`). So a region gets its own
line in those terms, and the operating-point figures are always the overall
ones, said as such. Streamlit-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from fracture.evaluation.proportions import wilson_rate
from fracture.model.reports import EvaluationReport

__all__ = ["ResultContext", "result_context"]


@dataclass(frozen=True)
class ResultContext:
    """What the page says beside a result, line by line (empty when nothing was evaluated)."""

    rates: str  # overall sensitivity and specificity at the operating point, with intervals
    region: str  # the region's own validation figure, or why there is none
    note: str = ""  # e.g. "the region is uncertain: overall figures"


def _rate(hits: int, n: int) -> str:
    rate = wilson_rate(hits, n)
    if rate["rate"] is None:
        return "not measured"
    low, high = rate["ci"]
    return f"{rate['rate']:.0%} ({low:.0%}-{high:.0%}, {hits} of {n})"


def result_context(
    report: EvaluationReport | None,
    operating_point: str,
    region: str | None,
    region_words: str | None = None,
    *,
    has_region_head: bool = True,
) -> ResultContext | None:
    """The context of a result at ``operating_point`` for the predicted ``region``.

    ``region`` is the region head's name for the image ("hand"), None when the head
    was unsure (or the model has none: ``has_region_head`` False); ``region_words``
    is how the page says it. None when the model has no evaluation at that point.
    """
    if not report:
        return None
    point = (report.get("operating_points") or {}).get(operating_point)
    if not point or "confusion" not in point:
        return None
    counts = point["confusion"]
    tp, fn, tn, fp = (int(counts[key]) for key in ("tp", "fn", "tn", "fp"))
    rates = (
        f"Validation at this operating point, all regions: sensitivity "
        f"{_rate(tp, tp + fn)}, specificity {_rate(tn, tn + fp)} (95% intervals)."
    )
    regions = (report.get("subgroups") or {}).get("region") or {}
    entry = regions.get(region) if region else None
    name = region_words or region or ""
    if region is None:
        why = "is uncertain" if has_region_head else "is not named by this model"
        return ResultContext(rates, "", f"The body region {why}, so these are the overall figures.")
    if entry is None:
        return ResultContext(
            rates, f"The validation split had no {name} radiographs to report on separately."
        )
    n, positives = int(entry["n"]), int(entry["n_positive"])
    if entry.get("auroc") is None:
        line = (
            f"Validation images labelled {name}: {n}, {positives} with a fracture: too few "
            "of one kind to measure how well the model separates them."
        )
    else:
        ci = entry.get("auroc_ci")
        interval = f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else ""
        line = (
            f"Validation images labelled {name}: AUROC {entry['auroc']:.2f}{interval}, "
            f"{n} images, {positives} with a fracture."
        )
    return ResultContext(
        rates,
        line,
        "The evaluation holds no rates per region, so the rates are overall.",
    )
