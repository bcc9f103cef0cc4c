"""Model cards (Mitchell et al., "Model Cards for Model Reporting", FAT* 2019).

A card travels inside every model folder as ``model_card.json`` (for the
dashboard and for checksums) and ``model_card.md`` (for people); writing them
is :class:`fracture.model.folder.ModelFolder`'s job.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fracture.model.folder import ModelConfig

__all__ = [
    "build_card",
    "render_card_markdown",
    "FRACATLAS_CITATION",
    "INTENDED_USE",
]

FRACATLAS_CITATION = (
    "Abedeen, I., Rahman, M.A., Prottyasha, F.Z. et al. FracAtlas: A Dataset for Fracture "
    "Classification, Localization and Segmentation of Musculoskeletal Radiographs. "
    "Scientific Data 10, 521 (2023). doi:10.1038/s41597-023-02432-4. Licence: CC BY 4.0."
)
INTENDED_USE = (
    "Research and education demo, not a medical device. It must not be used to diagnose, "
    "triage or treat patients."
)
KNOWN_LIMITATIONS = [
    "Trained on FracAtlas only (one source, hand/leg/hip/shoulder radiographs); other "
    "institutions, devices and body parts are out of distribution.",
    "Shortcut risk: orthopaedic hardware (plates, screws) appears in about 14% of fractured "
    "training images and almost never in normal ones, so metal can raise the score by itself. "
    "See the hardware-free subgroup AUROC.",
    "Small fractures: the median FracAtlas box is about 6.5% of the image side; hairline "
    "fractures below the network's resolution can be missed.",
    "No patient identifiers exist in FracAtlas, so the train/val split cannot be made by "
    "patient; val figures may be optimistic.",
    "Probabilities are calibrated on the validation split by Platt scaling (a temperature and a "
    "bias); calibration does not transfer to other populations or prevalences.",
    "The out-of-distribution gate measures an image against the nearest class of training "
    "radiographs; it knows only what the training images looked like, not whether an image is "
    "a valid radiograph in general.",
]


def build_card(
    *,
    model_config: ModelConfig,
    train_config: dict[str, Any],
    dataset: Any,
    report: dict[str, Any],
    history: list[dict[str, Any]],
    best_epoch: int,
    training_seconds: float,
    imagenet_sha256: str,
    commit: str | None,
) -> dict[str, Any]:
    """Collect everything a reviewer needs to judge a model into one dict."""
    is_fracatlas = "fracatlas" in str(dataset.root).lower()
    return {
        "name": model_config.name,
        "version": model_config.version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": commit,
        "seed": train_config.get("seed"),
        "architecture": "ResNet-50 (ImageNet) + GAP + dropout + dense logit, sigmoid output",
        "image_size": model_config.image_size,
        "fine_tune_from": model_config.fine_tune_from,
        "imagenet_weights_sha256": imagenet_sha256,
        "training_data": {
            "root": str(dataset.root),
            "layout": dataset.layout,
            "counts": dataset.summary(),
            "citation": FRACATLAS_CITATION if is_fracatlas else None,
            "licence": "CC BY 4.0" if is_fracatlas else "see the dataset's own licence",
        },
        "train_config": train_config,
        "training_seconds": round(training_seconds, 1),
        "best_epoch": best_epoch,
        "history": history,
        "temperature": model_config.temperature,
        "prior_shift": model_config.prior_shift,
        "thresholds": model_config.thresholds,
        "operating_point": model_config.operating_point,
        "val_metrics": headline(report),
        "intended_use": INTENDED_USE,
        "limitations": KNOWN_LIMITATIONS,
    }


def headline(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("auroc", "auroc_ci", "pr_auc", "sensitivity", "specificity", "brier", "ece")
    headline = {k: report.get(k) for k in keys if k in report}
    subgroups = report.get("subgroups") or {}
    if "hardware_free" in subgroups:
        headline["hardware_free_auroc"] = subgroups["hardware_free"].get("auroc")
    headline["operating_points"] = report.get("operating_points")
    return headline


def _precision_line(card: dict[str, Any]) -> str:
    precision = card.get("inference_precision") or "float32"
    evidence = card.get("inference_precision_evidence") or {}
    if evidence.get("auroc_fp32") is None:
        return f"- Inference precision: {precision}"
    return (
        f"- Inference precision: {precision} (`fracture bench`: val AUROC bfloat16 "
        f"{_fmt(evidence.get('auroc_bf16'))} vs float32 {_fmt(evidence.get('auroc_fp32'))}, "
        f"{_fmt(evidence.get('speedup'))}x the float32 speed)"
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"[{_fmt(value[0])}, {_fmt(value[1])}]"
    return str(value)


def _percent_ci(entry: dict[str, Any] | None, key: str = "rate") -> str:
    if not entry or entry.get(key) is None:
        return "not measured"
    ci = entry.get("ci") or entry.get(f"{key}_ci")
    interval = f" (95% interval {ci[0]:.0%} to {ci[1]:.0%})" if ci else ""
    return f"{entry[key]:.0%}{interval}"


def _heat_map_lines(card: dict[str, Any]) -> list[str]:
    """How the heat map was trained and how well it points, when the card knows."""
    lines: list[str] = []
    if card.get("box_supervision"):
        lines += ["", "## How the radiologists' boxes were used", card["box_supervision"]]
    located = card.get("localisation")
    if located and located.get("pointing_game", {}).get("n"):
        game = located["pointing_game"]
        lines += [
            "",
            f"## Where the heat map points (validation, {game['n']} fractured images with boxes)",
            f"- Peak inside a radiologist's box: {_percent_ci(game)}",
            f"- Peak within 3% of the image side of a box: "
            f"{_percent_ci(located.get('pointing_game_tolerant'))}",
            f"- Share of the heat inside the boxes: {located.get('energy_inside_boxes', 0):.0%}",
            f"- Drawn box overlaps a true box (IoU >= 0.1): "
            f"{_percent_ci(located.get('drawn_box_hit_rate'))}",
            f"- Reference, not like for like: {located.get('reference')}",
        ]
    calibration = card.get("calibration")
    if calibration:
        lines += [
            "",
            "## Calibration and operating points",
            f"- {calibration['method']}; expected calibration error "
            f"{calibration['ece_before']:.3f} before, {calibration['ece_after_out_of_fold']:.3f} "
            f"after (out of fold: each image calibrated by a fit that did not see it)",
            f"- Thresholds: {calibration['threshold_method']}",
        ]
        for name, point in (calibration.get("operating_points") or {}).items():
            lines.append(
                f"- {name.replace('_', '-')} threshold {point['threshold']:.3f}: sensitivity "
                f"{_percent_ci(point, 'sensitivity')}, specificity "
                f"{_percent_ci(point, 'specificity')}"
            )
    return lines


def render_card_markdown(card: dict[str, Any]) -> str:
    """The human-readable model card."""
    metrics = card.get("val_metrics", {})
    data = card.get("training_data", {})
    lines = [
        f"# Model card: {card.get('name')} (version {card.get('version')})",
        "",
        f"**Intended use.** {card.get('intended_use')}",
        "",
        "## Model",
        f"- Architecture: {card.get('architecture')}",
        f"- Input: {card.get('image_size')} px letterboxed RGB; fine-tuned after "
        f"`{card.get('fine_tune_from')}`",
        f"- Calibration: Platt scaling fitted on val, temperature {_fmt(card.get('temperature'))}"
        f" after a shift of {_fmt(card.get('prior_shift'))}",
        _precision_line(card),
        "- Thresholds: "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in (card.get("thresholds") or {}).items())
        + f"; default `{card.get('operating_point')}`",
        f"- Trained {card.get('created')} from commit `{card.get('git_commit')}`, seed "
        f"{card.get('seed')}, in {_fmt(card.get('training_seconds'))} s (best epoch "
        f"{card.get('best_epoch')})",
        *_heat_map_lines(card),
        "",
        "## Training data",
        f"- {data.get('root')} ({data.get('layout')} layout), licence {data.get('licence')}",
        f"- Counts: {data.get('counts')}",
    ]
    if data.get("citation"):
        lines.append(f"- Citation: {data['citation']}")
    lines += [
        "",
        "## Validation metrics",
        "| metric | value |",
        "| --- | --- |",
    ]
    for key in (
        "auroc",
        "auroc_ci",
        "pr_auc",
        "sensitivity",
        "specificity",
        "brier",
        "ece",
        "hardware_free_auroc",
    ):
        if key in metrics:
            lines.append(f"| {key} | {_fmt(metrics[key])} |")
    for name, point in (metrics.get("operating_points") or {}).items():
        lines.append(
            f"| {name}: sensitivity / specificity | {_fmt(point.get('sensitivity'))} / "
            f"{_fmt(point.get('specificity'))} |"
        )
    ood = card.get("ood")
    if ood:
        lines += [
            "",
            "## Out-of-distribution gate",
            f"- {ood.get('method')}",
            f"- Fitted on {ood.get('n_train')} training images; threshold {_fmt(ood.get('threshold'))} "
            f"set on {ood.get('n_heldout')} validation images for a "
            f"{_fmt(ood.get('false_alarm_rate'))} false-alarm rate.",
            "- Inputs above the threshold are flagged `in_distribution = false`: their "
            "probability is unreliable.",
        ]
    lines += ["", "## Known limitations"]
    lines += [f"- {item}" for item in card.get("limitations", [])]
    return "\n".join(lines) + "\n"
