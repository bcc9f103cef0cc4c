"""The evaluation report as plain text, for the terminal (``python -m fracture evaluate``).

:func:`format_report` reads the dictionary that
:func:`fracture.evaluation.metrics.evaluation_report` (or ``binary_report``) returns;
it computes nothing, so what it prints is what the report JSON holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fracture.model.reports import EvaluationReport

__all__ = ["format_report"]


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_ci(ci: Sequence[float] | None) -> str:
    return "" if not ci else f"[95% CI {_fmt(ci[0])}-{_fmt(ci[1])}]"


def _confusion_table(confusion: Mapping[str, int]) -> list[str]:
    cells = [str(confusion[key]) for key in ("tn", "fp", "fn", "tp")]
    width = max(len("fracture"), *(len(cell) for cell in cells))
    corner = "true \\ pred"
    rule = "+" + "-" * 15 + ("+" + "-" * (width + 2)) * 2 + "+"
    return [
        rule,
        f"| {corner:<13} | {'normal':>{width}} | {'fracture':>{width}} |",
        rule,
        f"| {'normal':<13} | {cells[0]:>{width}} | {cells[1]:>{width}} |",
        f"| {'fracture':<13} | {cells[2]:>{width}} | {cells[3]:>{width}} |",
        rule,
    ]


def _subgroup_line(label: str, entry: Mapping[str, Any]) -> str:
    return (
        f"  {label:<24} n={entry['n']:>5}  fractures={entry['n_positive']:>4}  "
        f"AUROC {_fmt(entry.get('auroc'))} {_fmt_ci(entry.get('auroc_ci'))}".rstrip()
    )


def format_report(report: EvaluationReport) -> str:
    """A plain-text summary of :func:`evaluation_report` (or :func:`binary_report`) output.

    AUROC with its bootstrap interval, PR-AUC, Brier and ECE (before and after
    temperature scaling when known), one line per operating point, the
    confusion matrix at the main operating point as a 2x2 table, subgroup
    AUROCs and the pointing game when present. ASCII only, so it survives any
    terminal or log file.
    """
    lines = [
        f"Cases: {report['n']}  (fractures {report['n_positive']}, "
        f"prevalence {_fmt(report.get('prevalence'))})",
        f"AUROC        {_fmt(report.get('auroc'))} {_fmt_ci(report.get('auroc_ci'))}".rstrip(),
        f"PR-AUC       {_fmt(report.get('pr_auc'))}",
    ]
    brier = f"Brier        {_fmt(report.get('brier'))}"
    ece = f"ECE          {_fmt(report.get('ece'))}"
    if "brier_uncalibrated" in report:
        brier += f"  (before temperature scaling {_fmt(report['brier_uncalibrated'])})"
    if "ece_uncalibrated" in report:
        ece += f"  (before temperature scaling {_fmt(report['ece_uncalibrated'])})"
    lines += [brier, ece]
    if "temperature" in report:
        lines.append(f"Temperature  {_fmt(report['temperature'])}")

    main_name = report.get("operating_point", "threshold")
    points: Mapping[str, Mapping[str, Any]] = report.get("operating_points") or {}
    if not points:
        points = {main_name: report}
    header = ("Operating point", "threshold", "sens", "spec", "PPV", "NPV")
    lines += ["", f"{header[0]:<20} {header[1]:>9}" + "".join(f" {h:>6}" for h in header[2:])]
    for name, point in points.items():
        marker = " *" if name == main_name and len(points) > 1 else ""
        lines.append(
            f"{name + marker:<20} {_fmt(point['threshold'], 4):>9} {_fmt(point['sensitivity']):>6} "
            f"{_fmt(point['specificity']):>6} {_fmt(point.get('ppv')):>6} "
            f"{_fmt(point.get('npv')):>6}"
        )
    if len(points) > 1:
        lines.append("(* main operating point)")
    lines += ["", f"Confusion matrix at {main_name} (threshold {_fmt(report['threshold'], 4)}):"]
    lines += _confusion_table(report["confusion"])

    subgroups = report.get("subgroups") or {}
    if subgroups:
        lines += ["", "Subgroups:"]
        for group, entry in (subgroups.get("region") or {}).items():
            lines.append(_subgroup_line(f"region {group}", entry))
        if "hardware_free" in subgroups:
            lines.append(_subgroup_line("without hardware", subgroups["hardware_free"]))
    pointing = report.get("pointing_game")
    if pointing:
        lines += [
            "",
            f"Pointing game: {pointing['hits']}/{pointing['n']} hits, "
            f"score {_fmt(pointing['score'])}",
        ]
    located = report.get("localisation")
    if located and located["pointing_game"]["n"]:
        tolerant, drawn = located["pointing_game_tolerant"], located["drawn_box_hit_rate"]
        lines += [
            f"Pointing game within {tolerant['tolerance']:.0%} of the side: "
            f"{tolerant['hits']}/{tolerant['n']} hits, score {_fmt(tolerant['rate'])} "
            f"{_fmt_ci(tolerant['ci'])}",
            f"Heat-map energy inside the boxes: {_fmt(located['energy_inside_boxes'])}",
            f"Drawn box hits a true box (IoU >= {drawn['min_iou']}): "
            f"{drawn['hits']}/{drawn['n']}, rate {_fmt(drawn['rate'])} {_fmt_ci(drawn['ci'])}",
        ]
    return "\n".join(lines)
