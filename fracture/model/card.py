"""Model cards (Mitchell et al., "Model Cards for Model Reporting", FAT* 2019).

A card travels inside every model folder as ``model_card.json`` (for the
dashboard and for checksums) and ``model_card.md`` (for people); writing them
is :class:`fracture.model.folder.ModelFolder`'s job.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol, cast

from fracture.data.records import region_words, summary_classes
from fracture.model.config import ModelConfig
from fracture.model.reports import EvaluationReport, ModelCard

__all__ = [
    "build_card",
    "render_card_markdown",
    "calibration_facts",
    "calibration_sentence",
    "limitations_for",
    "INTENDED_USE",
]

INTENDED_USE = (
    "Research and education demo, not a medical device. It must not be used to diagnose, "
    "triage or treat patients."
)
# True of every model this project trains, whatever its data.
GENERAL_LIMITATIONS = [
    "Probabilities are calibrated on the validation split; calibration does not transfer to "
    "other populations or prevalences.",
    "The out-of-distribution gate flags unusual inputs; a flagged input is not assessed (no "
    "label is given), and the gate can also flag unusual radiographs of the trained kind.",
]
# Facts measured on FracAtlas: they belong on FracAtlas models only.
FRACATLAS_LIMITATIONS = [
    "Trained on FracAtlas only (one source, hand/leg/hip/shoulder radiographs); other "
    "institutions, devices and body parts are out of distribution.",
    "Shortcut risk: orthopaedic hardware (plates, screws) appears in about 14% of fractured "
    "FracAtlas images and almost never in normal ones, so metal can raise the score by itself. "
    "See the hardware-free subgroup AUROC.",
    "Small fractures: the median FracAtlas box is about 6.5% of the image side; hairline "
    "fractures below the network's resolution can be missed.",
    "FracAtlas has no patient identifiers, so the train/val split cannot be made by patient; "
    "validation figures may be optimistic.",
]
SYNTHETIC_LIMITATIONS = [
    "Trained on SYNTHETIC PHANTOMS (computer-drawn long bones), not on radiographs of people. "
    "Its output means nothing for real radiographs; use it only to try the pipeline.",
    "Its validation figures measure how well it separates drawn phantoms, not fractures.",
]
UNKNOWN_DATA_LIMITATIONS = [
    "The training data was not recognised as a published dataset: what it holds, where it "
    "comes from and under which licence are not recorded here. Judge the model only with that "
    "knowledge.",
]


def limitations_for(training_data: dict[str, Any]) -> list[str]:
    """The known limitations of a model trained on ``training_data`` (a card's section)."""
    from fracture.data.provenance import FRACATLAS_NAME, KIND_SYNTHETIC

    if training_data.get("kind") == KIND_SYNTHETIC:
        specific = SYNTHETIC_LIMITATIONS
    elif training_data.get("name") == FRACATLAS_NAME:
        specific = FRACATLAS_LIMITATIONS
    else:
        specific = UNKNOWN_DATA_LIMITATIONS
    return [*specific, *GENERAL_LIMITATIONS]


class Summarised(Protocol):
    """Something fitted that describes itself for the card: the OOD gate, the calibration."""

    def summary(self) -> dict[str, Any]: ...


def build_card(
    *,
    model_config: ModelConfig,
    train_config: dict[str, Any],
    dataset: Any,
    report: EvaluationReport,
    history: list[dict[str, Any]],
    best_epoch: int,
    training_seconds: float,
    imagenet_sha256: str,
    commit: str | None,
    class_counts: dict[str, dict[str, int]] | None = None,
    ood_gate: Summarised | None = None,
    calibration: Summarised | None = None,
    architecture: str | None = None,
    sections: Mapping[str, Any] | None = None,
) -> ModelCard:
    """Collect everything a reviewer needs to judge a model into one dict.

    ``class_counts`` are the images per split and class that training and
    validation actually used (``{"train": {class: n, ..., "total": n}}``), which
    can differ from the dataset's counts (unreadable files, merged classes).
    ``ood_gate`` and ``calibration`` are the fitted gate and calibration, each
    described by its ``summary()``; the heat map's scale is ``model_config``'s.
    ``architecture`` replaces the default description of the network, and
    ``sections`` adds what only one recipe knows (e.g. how boxes trained the heat map).
    """
    from fracture.data.provenance import describe_dataset

    training_data = {**describe_dataset(dataset), "root": str(dataset.root)}
    output = (
        f"softmax over {model_config.num_outputs} classes"
        if model_config.is_multiclass
        else "sigmoid output"
    )
    card: ModelCard = {
        "name": model_config.name,
        "version": model_config.version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": commit,
        "seed": train_config.get("seed"),
        "architecture": architecture
        or f"ResNet-50 (ImageNet) + GAP + dropout + dense logit, {output}",
        "multiclass": model_config.is_multiclass,
        "classes": model_config.class_names,
        "normal_class": (
            None
            if model_config.normal_index is None
            else model_config.class_names[model_config.normal_index]
        ),
        "class_counts": class_counts,
        "image_size": model_config.image_size,
        "fine_tune_from": model_config.fine_tune_from,
        "imagenet_weights_sha256": imagenet_sha256,
        "training_data": training_data,
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
        "limitations": limitations_for(training_data),
    }
    if ood_gate is not None:
        card["ood"] = ood_gate.summary()
    if calibration is not None:
        card["calibration"] = calibration.summary()
    card["evidence_scale"] = model_config.evidence_scale
    return cast(ModelCard, {**card, **(sections or {})})


def headline(report: EvaluationReport) -> dict[str, Any]:
    keys = (
        "auroc",
        "auroc_ci",
        "accuracy",
        "balanced_accuracy",
        "pr_auc",
        "sensitivity",
        "specificity",
        "brier",
        "ece",
        "ece_uncalibrated",
        "n",
        "n_positive",
    )
    headline = {k: report.get(k) for k in keys if k in report}
    # A K-class report's top-level accuracy is any fracture against normal at the
    # operating point (where it has a normal class); the K-class accuracy lives apart.
    classes = report.get("multiclass") or {}
    if report.get("macro_auroc") is not None and classes.get("accuracy") is not None:
        headline["macro_auroc"] = report["macro_auroc"]
        headline["class_accuracy"] = classes["accuracy"]
        headline["n_classes"] = len(classes.get("class_names") or report.get("classes") or [])
    subgroups = report.get("subgroups") or {}
    free = subgroups.get("hardware_free") or {}
    # Only where some image has hardware: otherwise the subgroup is the whole split.
    if free.get("n") is not None and report.get("n") is not None and free["n"] < report["n"]:
        headline["hardware_free_auroc"] = free.get("auroc")
    headline["operating_points"] = report.get("operating_points")
    return headline


def _precision_line(card: ModelCard) -> str:
    precision = card.get("inference_precision") or "float32"
    evidence = card.get("inference_precision_evidence") or {}
    if evidence.get("auroc_fp32") is None:
        return f"- Arithmetic when predicting: {precision}"
    return (
        f"- Arithmetic when predicting: {precision} (validation AUROC "
        f"{_fmt(evidence.get('auroc_bf16'), 3)} in bfloat16, "
        f"{_fmt(evidence.get('auroc_fp32'), 3)} in float32; "
        f"{_fmt(evidence.get('speedup'), 1)} times as fast)"
    )


def _fmt(value: Any, digits: int = 2) -> str:
    """A number rounded to ``digits`` decimals; "not recorded" for a missing one."""
    if value is None:
        return "not recorded"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.{digits}f}"
    return str(value)


def _percent_ci(entry: dict[str, Any] | None, key: str = "rate") -> str:
    if not entry or entry.get(key) is None:
        return "not measured"
    ci = entry.get("ci") or entry.get(f"{key}_ci")
    interval = f" (95% interval {ci[0]:.0%} to {ci[1]:.0%})" if ci else ""
    return f"{entry[key]:.0%}{interval}"


def _heat_map_lines(card: ModelCard, report: EvaluationReport | None = None) -> list[str]:
    """How the heat map was trained and how well it points, when the card knows."""
    lines: list[str] = []
    if card.get("box_supervision"):
        lines += ["", "## How the radiologists' boxes were used", card["box_supervision"]]
    located = card.get("localisation")
    if located and located.get("pointing_game", {}).get("n"):
        game = located["pointing_game"]
        lines += [
            "",
            '## Where the classifier\'s Grad-CAM points (the "why" view; validation, '
            f"{game['n']} fractured images with boxes)",
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
            "- " + calibration_sentence(report, card),
            f"- Thresholds: {calibration['threshold_method']}",
        ]
        for name, point in (calibration.get("operating_points") or {}).items():
            lines.append(
                f"- {name.replace('_', '-')} threshold {point['threshold']:.1%}: sensitivity "
                f"{_percent_ci(point, 'sensitivity')}, specificity "
                f"{_percent_ci(point, 'specificity')}"
            )
    return lines


def _localiser_lines(card: ModelCard) -> list[str]:
    """The localisation head: how it was trained and its validation figures, with intervals."""
    located = card.get("localiser")
    if not located:
        return []
    weight = card.get("localiser_weight") or 0.0
    effect = (
        "Its training never changed the classifier; the calibration then adds its peak (how "
        f"sure it is that a fracture's centre lies anywhere) to the classifier's logit, with "
        f"weight {weight:.2f}, because that raised the out-of-fold validation AUROC (see "
        "Calibration below)."
        if weight
        else "It was trained on the radiologists' boxes after the classifier, on its frozen "
        "features, so it leaves the probability exactly as it was."
    )
    lines = [
        "",
        "## Where the fracture is: the localisation head",
        "A second head on the same ResNet-50 pass marks where a fracture is: a map of how "
        "likely each place is a fracture's centre, and boxes with scores (CenterNet, Zhou et "
        f"al. 2019), trained on the radiologists' boxes. {effect} Boxes are drawn only "
        "on an image labelled fracture: dotted at the high-sensitivity point, solid at the "
        "high-specificity one.",
    ]
    if located.get("trained_on"):
        lines.append(f"- Training: {located['trained_on']}.")
    if located.get("box_threshold") is not None:
        lines.append(
            f"- A box is shown from a score of {located['box_threshold']:.2f} (the best F1 of "
            "box detection on held-out training images)."
        )
    game = located.get("pointing_game") or {}
    if game.get("n"):
        lines += [
            f"- Validation, {game['n']} fractured images with boxes: the map's peak lies inside "
            f"a radiologist's box in {_percent_ci(game)}; within 3% of the image side in "
            f"{_percent_ci(located.get('pointing_game_tolerant'))}; "
            f"{located.get('energy_inside_boxes', 0):.0%} of the map's mass lies inside the boxes.",
        ]
    if located.get("ap50") is not None:
        interval = _interval(located.get("ap50_ci"))
        lines.append(
            f"- Box AP50 on fractured validation images (as YOLOv8 computes it): "
            f"{located['ap50']:.2f}"
            + (f" (95% interval {interval})" if interval else "")
            + f". Reference: {located.get('reference', '')}."
        )
    false_boxes = located.get("false_boxes_per_normal") or {}
    if false_boxes:
        lines.append(
            f"- Boxes drawn per normal validation image ({located.get('n_normal', 0):,}): "
            + ", ".join(
                f"{value:.2f} at the {_plain(name)} point"
                for name, value in false_boxes.items()
                if value is not None
            )
            + "."
        )
    return lines


def _region_head_lines(report: dict[str, Any] | None) -> list[str]:
    """The body-region head: what it was fitted on and its validation accuracy per region."""
    if not report or not report.get("per_region"):
        return []
    trained = ", ".join(
        f"{region_words(name)} {count:,}" for name, count in report.get("train_counts", {}).items()
    )
    lines = [
        "",
        "## Body region",
        "A second head on the same pooled features names the body region (multinomial "
        "logistic regression, fitted after training on the training images' region labels; "
        "the network and the fracture head are unchanged by it). It names a region only at "
        "a probability of 0.5 or more, and not for inputs the out-of-distribution check flags.",
        f"- Fitted on {report.get('n_train', 0):,} training images ({trained}).",
        "",
        f"Validation accuracy on {report.get('n', 0):,} images:",
        "",
        "| Region | Accuracy (95% interval) | Images |",
        "|---|---|---|",
    ]
    for name, rate in report["per_region"].items():
        lines.append(f"| {region_words(name)} | {_percent_ci(rate)} | {rate.get('n', 0):,} |")
    single = report.get("single_region_accuracy") or {}
    if single.get("n"):
        lines.append(f"| all single-region images | {_percent_ci(single)} | {single['n']:,} |")
    return lines


def _hardware_head_lines(report: dict[str, Any] | None) -> list[str]:
    """The hardware head: what it was fitted on, its validation accuracy and AUROC."""
    if not report or not report.get("accuracy"):
        return []
    auroc = report.get("auroc")
    return [
        "",
        "## Metal implant caution",
        "A third head on the same pooled features says whether orthopaedic metal (plates, "
        "screws, nails) is visible (logistic regression, fitted after training on the training "
        "images' hardware labels; the fracture probability is unchanged by it). Where it is at "
        'least 50% sure, every result adds: "metal implant visible: the score may reflect the '
        'implant", because metal is the shortcut a fracture model learns first.',
        f"- Fitted on {report.get('n_train', 0):,} training images "
        f"({report.get('train_counts', {}).get('present', 0):,} with metal).",
        f"- Validation ({report.get('n', 0):,} images, {report.get('n_hardware', 0):,} with "
        f"metal): accuracy {_percent_ci(report['accuracy'])}"
        + (f", AUROC {auroc:.3f}" if isinstance(auroc, (int, float)) else "")
        + f"; metal found in {_percent_ci(report.get('sensitivity') or {})} of the images that "
        f"have it.",
    ]


def _percent(value: Any, digits: int = 0) -> str:
    if not isinstance(value, (int, float)):
        return "not recorded"
    return f"{100 * value:.{digits}f}%"


def _interval(ci: Any, digits: int = 2) -> str:
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or None in ci:
        return ""
    return f"{ci[0]:.{digits}f} to {ci[1]:.{digits}f}"


def _plain(identifier: Any) -> str:
    """``high_sensitivity`` -> ``high sensitivity``."""
    return str(identifier or "").replace("_", " ")


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or seconds < 0:
        return "an unrecorded time"
    minutes = round(seconds / 60)
    if minutes < 1:
        return "under a minute"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def _when(created: Any) -> str:
    if not created:
        return "at an unrecorded time"
    return str(created).replace("T", " ").rstrip("Z") + " UTC"


def _counts_table(counts: Mapping[str, Any]) -> list[str]:
    """Images per split and class: fractured and normal, or every class of a K-class set."""
    if not counts:
        return ["- Image counts: not recorded"]
    names = summary_classes(counts)
    lines = [
        "",
        "| split | " + " | ".join(names) + " | total |",
        "| --- | " + " | ".join("---:" for _ in names) + " | ---: |",
    ]
    for split, row in counts.items():
        row = row or {}
        cells = " | ".join(f"{row.get(name, 0):,}" for name in names)
        lines.append(f"| {split} | {cells} | {row.get('total', 0):,} |")
    return lines + [""]


def _classes_lines(card: ModelCard) -> list[str]:
    """What a K-class model names, and the images per class it learnt and was checked on."""
    classes = card.get("classes") or []
    if not card.get("multiclass") or not classes:
        return []
    normal = card.get("normal_class")
    lines = [
        "## Classes",
        f"- The model gives a probability for each of {len(classes)} classes: "
        + ", ".join(classes),
        (
            f'- Probability of any fracture: 1 minus that of "{normal}"'
            if normal
            else "- No class means normal, so there is no fracture-or-not threshold: the "
            "model names its most likely class"
        ),
    ]
    if counts := card.get("class_counts"):
        lines += ["- Images it was trained and validated on:", *_counts_table(counts)]
    return lines + [""]


def calibration_facts(
    report: EvaluationReport | None, card: ModelCard | None = None
) -> dict[str, Any]:
    """The one calibration method and the one calibration error every page and the card show.

    Both come from ``evaluation.json`` (``report``): the method as the calibration fit
    names it, and the expected calibration error **out of fold** where the fit recorded
    it (each validation image calibrated by a fit that did not see it: the honest
    figure, since the calibration was fitted on those images), else the error the
    evaluation measured on the validation split. The card (``card["calibration"]``)
    stands in for a report written before the fit was recorded there. Returns
    ``method``, ``ece`` (None when not measured), ``basis`` (how ``ece`` was measured) and
    ``before`` (the error before calibration from the same source, for the direction only).
    """
    report = report or {}
    fit = report.get("calibration_fit") or (card or {}).get("calibration") or {}
    temperature = fit.get("temperature", report.get("temperature"))
    method = fit.get("method") or (
        'Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", '
        f"ICML 2017), temperature {_fmt(temperature)}, fitted on the validation split"
    )
    if isinstance(fit.get("ece_after_out_of_fold"), (int, float)):
        return {
            "method": method,
            "ece": float(fit["ece_after_out_of_fold"]),
            "basis": "on the validation split, out of fold (each image calibrated by a fit "
            "that did not see it)",
            "before": _number(fit.get("ece_before")),
        }
    metrics = (card or {}).get("val_metrics") or {}
    return {
        "method": method,
        "ece": _number(report.get("ece", metrics.get("ece"))),
        "basis": "on the validation split",
        "before": _number(report.get("ece_uncalibrated", metrics.get("ece_uncalibrated"))),
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def calibration_sentence(report: EvaluationReport | None, card: ModelCard | None = None) -> str:
    """The calibration method and its one expected calibration error, in a sentence.

    Whether calibration lowered the error is said in words, truthfully, without a
    second figure beside the one every page shows.
    """
    facts = calibration_facts(report, card)
    if facts["ece"] is None:
        return f"{facts['method']}."
    sentence = (
        f"{facts['method']}; expected calibration error {_percent(facts['ece'], 1)} "
        f"{facts['basis']}"
    )
    before, after = facts["before"], facts["ece"]
    if before is None or round(after, 3) == round(before, 3):
        return sentence + "."
    if after < before:
        return sentence + ", lower than before calibration."
    return (
        sentence + ", higher than before calibration (the scaling minimises log loss, "
        "not this error)."
    )


def _metric_rows(
    metrics: dict[str, Any], multiclass: bool = False, ece: float | None = None
) -> list[str]:
    # A K-class model with a normal class reports any fracture's AUROC as "auroc"
    # and the mean over classes as "macro_auroc"; without one, "auroc" is the mean.
    with_normal = multiclass and "macro_auroc" in metrics
    rows = [
        (
            "AUROC, any fracture against normal"
            if with_normal
            else "AUROC, mean of each class against the rest"
            if multiclass
            else "Area under the ROC curve (AUROC)",
            _fmt(metrics.get("auroc")),
            _interval(metrics.get("auroc_ci")),
        ),
        ("AUROC, mean of each class against the rest", _fmt(metrics.get("macro_auroc")), "")
        if with_normal
        else None,
        (
            f"Accuracy over {metrics.get('n_classes') or 'the'} classes (most likely class)",
            _percent(metrics.get("class_accuracy")),
            "",
        )
        if with_normal
        else ("Accuracy (most likely class)", _percent(metrics.get("accuracy")), "")
        if multiclass
        else None,
        ("Accuracy, any fracture against normal", _percent(metrics.get("accuracy")), "")
        if with_normal
        else None,
        ("Area under the precision-recall curve", _fmt(metrics.get("pr_auc")), ""),
        (
            "AUROC on images without orthopaedic hardware",
            _fmt(metrics.get("hardware_free_auroc")),
            "",
        )
        if "hardware_free_auroc" in metrics
        else None,
        ("Brier score (0 is perfect)", _fmt(metrics.get("brier")), ""),
        # The one figure of calibration_facts, not the in-sample one beside it.
        ("Expected calibration error", _percent(ece, 1), "") if ece is not None else None,
    ]
    lines = ["| measure | value | 95% interval |", "| --- | ---: | --- |"]
    for row in rows:
        if row is not None and row[1] != "not recorded":
            lines.append(f"| {row[0]} | {row[1]} | {row[2] or '–'} |")
    for name, point in (metrics.get("operating_points") or {}).items():
        lines.append(
            f"| Sensitivity / specificity at {_plain(name)} (threshold "
            f"{_percent(point.get('threshold'), 1)}) | {_percent(point.get('sensitivity'))} / "
            f"{_percent(point.get('specificity'))} | – |"
        )
    return lines


def render_card_markdown(card: ModelCard, report: EvaluationReport | None = None) -> str:
    """The human-readable model card: plain words, rounded numbers, no machine paths.

    ``report`` (the folder's ``evaluation.json``) fills figures that older
    cards did not record. The limitations follow the recorded training data
    (:func:`limitations_for`), so a phantom model never carries FracAtlas facts.
    """
    from fracture.data.provenance import KIND_SYNTHETIC, training_data_of

    report = report or {}
    metrics = {
        **{
            k: report.get(k)
            for k in ("ece_uncalibrated", "n", "n_positive")
            if report.get(k) is not None
        },
        **(card.get("val_metrics") or {}),
    }
    data = training_data_of(card)
    kind = data.get("kind")
    lines = [f"# {card.get('name')}, version {card.get('version')}", ""]
    if kind == KIND_SYNTHETIC:
        lines += [
            "> **Trained on synthetic phantoms.** Its output means nothing for real radiographs.",
            "",
        ]
    lines += [
        f"**Intended use.** {card.get('intended_use') or INTENDED_USE}",
        "",
        "## Training data",
        f"- Dataset: {data.get('name')} ({kind})",
        f"- Licence: {data.get('licence') or 'not recorded'}",
    ]
    if data.get("citation"):
        lines.append(f"- Cite: {data['citation']}")
    if data.get("fingerprint"):
        lines.append(f"- Dataset fingerprint: `{str(data['fingerprint'])[:12]}`")
    lines += _counts_table(data.get("counts") or {})
    lines += _classes_lines(card)
    thresholds = card.get("thresholds") or {}
    lines += [
        "## Model",
        f"- Network: {card.get('architecture')}",
        f"- Input: {card.get('image_size')} × {card.get('image_size')} px (each image scaled to "
        f"fit, then padded); layers after `{card.get('fine_tune_from')}` were fine-tuned",
        "- Calibration: "
        + (
            f"{calibration_facts(report, card)['method']}, temperature "
            f"{_fmt(card['calibration'].get('temperature', card.get('temperature')))} "
            "(details below)."
            if card.get("calibration")
            else calibration_sentence(report, card)
        ),
        _precision_line(card),
        (
            "- Thresholds (a probability at or above one is labelled fracture): "
            + ", ".join(f"{_plain(k)} {_percent(v, 1)}" for k, v in thresholds.items())
            + f"; default {_plain(card.get('operating_point'))}"
            if thresholds
            else "- Thresholds: none (no normal class; the most likely class is reported)"
        ),
        f"- Trained {_when(card.get('created'))} in {_duration(card.get('training_seconds'))}, "
        f"best epoch {card.get('best_epoch')}, "
        f"seed {card.get('seed')}, source commit {card.get('git_commit') or 'not recorded'}",
        "",
        "## Validation results",
    ]
    if metrics.get("n"):
        fractured = (
            f" ({metrics['n_positive']:,} fractured)"
            if metrics.get("n_positive") is not None
            else ""
        )
        lines.append(f"On {metrics['n']:,} validation images{fractured} of the training dataset.")
        lines.append("")
    lines += _metric_rows(
        metrics, bool(card.get("multiclass")), calibration_facts(report, card)["ece"]
    )
    lines += _localiser_lines(card)
    lines += _heat_map_lines(card, report)
    ood = card.get("ood")
    if ood:
        layers = len(ood.get("layers") or [None])
        rate = ood.get("false_alarm_rate")
        flags = (
            f"each layer's threshold flags {_percent(rate, 0)} of {ood.get('n_heldout'):,} "
            f"validation images (together at most {_percent(rate * layers, 0)})"
            if layers > 1 and rate is not None
            else f"its threshold flags {_percent(rate, 0)} of {ood.get('n_heldout'):,} validation "
            f"images"
        )
        margin = ood.get("margin") or 1.0
        if margin > 1.0:
            flags = (
                f"each threshold is {margin:g} times the level at which it would flag "
                f"{_percent(rate, 0)} of {ood.get('n_heldout'):,} validation images, because "
                "a level set on that few images flagged several per cent of unseen fractures"
            )
        lines += [
            "",
            "## Out-of-distribution check",
            f"- {ood.get('method')}",
            f"- Fitted on {ood.get('n_train'):,} training images; {flags}. A flagged input is "
            f"not assessed: it gets no label.",
        ]
    lines += _region_head_lines(card.get("region_head"))
    lines += _hardware_head_lines(card.get("hardware_head"))
    lines += ["", "## Known limitations"]
    lines += [f"- {item}" for item in limitations_for(data)]
    return "\n".join(lines) + "\n"
