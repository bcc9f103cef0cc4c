"""K-class evaluation and MURA study-level figures, checked against scikit-learn.

The module computes its counts with numpy (bincount) and its kappa from the confusion
matrix; scikit-learn computes them its own way here, so the comparisons can fail.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import (
    cohen_kappa_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.preprocessing import label_binarize

from fracture.evaluation.metrics import binary_report, expected_calibration_error
from fracture.evaluation.multiclass import (
    classwise_ece,
    cohen_kappa,
    confusion_matrix_k,
    format_multiclass,
    multiclass_report,
    one_vs_rest_auroc,
)
from fracture.evaluation.studies import format_study_level, study_level_report, study_scores

from conftest import write_png


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _scores(
    seed: int, n: int = 300, k: int = 4, separation: float = 1.2, decimals: int | None = None
):
    """Labels and softmax probabilities of a moderately good K-class classifier."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), labels] += separation
    probabilities = _softmax(logits)
    if decimals is not None:
        # Rounding makes many exact ties between cases, which AUROC must count as half.
        # In whole steps of 10**-decimals; the rounding error goes to each row's
        # largest value, so rows sum to 1 again and equal values are equal floats.
        steps = 10**decimals
        counts = np.round(probabilities * steps).astype(int)
        counts[np.arange(n), counts.argmax(axis=1)] += steps - counts.sum(axis=1)
        probabilities = counts / steps
    return labels, probabilities


def _none_for_nan(values) -> list:
    return [None if np.isnan(value) else float(value) for value in values]


@pytest.mark.parametrize("seed, decimals", [(0, None), (1, None), (2, 1), (3, 2)])
def test_confusion_matrix_and_per_class_metrics_match_sklearn(seed, decimals):
    labels, probabilities = _scores(seed, decimals=decimals)
    report = multiclass_report(labels, probabilities, ["a", "b", "c", "d"])
    predicted = probabilities.argmax(axis=1)
    expected = confusion_matrix(labels, predicted, labels=[0, 1, 2, 3])
    assert report["confusion_matrix"] == expected.tolist()
    precision, recall, _, support = precision_recall_fscore_support(
        labels, predicted, labels=[0, 1, 2, 3], zero_division=np.nan
    )
    assert [entry["sensitivity"] for entry in report["per_class"]] == pytest.approx(recall.tolist())
    assert [entry["precision"] for entry in report["per_class"]] == pytest.approx(
        precision.tolist()
    )
    assert [entry["n"] for entry in report["per_class"]] == support.tolist()
    assert report["kappa"] == pytest.approx(cohen_kappa_score(labels, predicted))
    assert report["accuracy"] == pytest.approx(np.mean(predicted == labels))
    json.dumps(report, allow_nan=False)


@pytest.mark.parametrize("seed, decimals", [(0, None), (4, 1), (5, 2)])
def test_macro_and_micro_auroc_match_sklearn_with_and_without_ties(seed, decimals):
    labels, probabilities = _scores(seed, decimals=decimals)
    if decimals == 1:  # coarse rounding: the ties must really be there
        assert len(np.unique(probabilities[:, 0])) < 12
    result = one_vs_rest_auroc(labels, probabilities)
    assert result["macro"] == pytest.approx(
        roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
    )
    indicator = label_binarize(labels, classes=[0, 1, 2, 3])
    assert result["micro"] == pytest.approx(
        roc_auc_score(indicator, probabilities, average="micro")
    )
    assert result["per_class"] == pytest.approx(
        roc_auc_score(indicator, probabilities, average=None).tolist()
    )


def test_a_class_never_predicted_has_no_precision_and_still_counts_its_misses():
    labels, probabilities = _scores(6, k=3)
    # Class 2 is never the most probable: its probability is capped below another's.
    probabilities[:, 2] = np.minimum(probabilities[:, 2], 0.5 * probabilities[:, :2].max(axis=1))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    report = multiclass_report(labels, probabilities, ["x", "y", "z"])
    z = report["per_class"][2]
    assert z["n_predicted"] == 0 and z["precision"] is None
    assert z["sensitivity"] == 0.0 and z["n"] == int(np.sum(labels == 2))
    # Its cases appear as misses in its row, and its AUROC is still a ranking figure.
    assert sum(report["confusion_matrix"][2]) == z["n"]
    assert z["auroc"] == pytest.approx(roc_auc_score(labels == 2, probabilities[:, 2]))
    _, recall, _, _ = precision_recall_fscore_support(
        labels, probabilities.argmax(1), labels=[0, 1, 2], zero_division=np.nan
    )
    assert [e["sensitivity"] for e in report["per_class"]] == pytest.approx(recall.tolist())
    assert report["kappa"] == pytest.approx(cohen_kappa_score(labels, probabilities.argmax(1)))


def test_a_class_absent_from_the_labels_is_left_out_of_the_macro_average():
    labels, probabilities = _scores(7, k=3)
    labels[labels == 1] = 0  # nobody of class 1 in this split
    result = one_vs_rest_auroc(labels, probabilities)
    assert result["per_class"][1] is None and result["n_macro"] == 2
    indicator = label_binarize(labels, classes=[0, 1, 2])
    expected = roc_auc_score(indicator[:, [0, 2]], probabilities[:, [0, 2]], average="macro")
    assert result["macro"] == pytest.approx(expected)
    report = multiclass_report(labels, probabilities)
    assert report["per_class"][1]["sensitivity"] is None
    assert report["per_class"][1]["roc"] is None
    json.dumps(report, allow_nan=False)


def test_two_classes_reduce_to_the_binary_figures():
    rng = np.random.default_rng(8)
    labels = (rng.random(400) < 0.3).astype(int)
    fracture = np.clip(rng.normal(0.35 + 0.3 * labels, 0.18), 0.001, 0.999)
    fracture[np.isclose(fracture, 0.5)] = 0.51  # argmax and ">= 0.5" differ only on exact ties
    probabilities = np.stack([1.0 - fracture, fracture], axis=1)
    report = multiclass_report(labels, probabilities, ["normal", "fracture"])
    binary = binary_report(labels, fracture, 0.5, n_bootstrap=0)
    assert report["per_class"][1]["auroc"] == pytest.approx(binary["auroc"])
    assert report["auroc_macro"] == pytest.approx(binary["auroc"])
    assert report["confusion_matrix"] == binary["confusion_matrix"]
    assert report["per_class"][1]["sensitivity"] == pytest.approx(binary["sensitivity"])
    assert report["per_class"][1]["precision"] == pytest.approx(binary["ppv"])
    assert report["per_class"][0]["sensitivity"] == pytest.approx(binary["specificity"])
    assert report["per_class"][1]["ece"] == pytest.approx(binary["ece"])


def test_classwise_ece_is_the_mean_of_each_class_against_the_rest():
    labels, probabilities = _scores(9, k=3, separation=2.0)
    mean, per_class = classwise_ece(labels, probabilities, n_bins=10)
    expected = [
        expected_calibration_error((labels == k).astype(int), probabilities[:, k])[0]
        for k in range(3)
    ]
    assert per_class == pytest.approx(expected)
    assert mean == pytest.approx(np.mean(expected))
    # Hand-made: all cases say (0.8, 0.2) and 80 % are class 0: perfectly calibrated.
    labels = np.array([0] * 8 + [1] * 2)
    probabilities = np.tile([0.8, 0.2], (10, 1))
    assert classwise_ece(labels, probabilities)[0] == pytest.approx(0.0, abs=1e-12)


def test_kappa_from_a_confusion_matrix_matches_sklearn_and_is_undefined_for_one_class():
    rng = np.random.default_rng(10)
    truth, guess = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    guess[:120] = truth[:120]
    assert cohen_kappa(confusion_matrix_k(truth, guess, 3)) == pytest.approx(
        cohen_kappa_score(truth, guess)
    )
    assert cohen_kappa([[5, 0], [0, 0]]) is None


def test_bad_inputs_are_refused_with_clear_messages():
    labels, probabilities = _scores(11, n=20, k=3)
    with pytest.raises(ValueError, match="sum to 1"):
        multiclass_report(labels, probabilities * 0.5)
    with pytest.raises(ValueError, match="class indices 0..2"):
        multiclass_report(labels + 3, probabilities)
    with pytest.raises(ValueError, match="2 class names for 3"):
        multiclass_report(labels, probabilities, ["a", "b"])
    with pytest.raises(ValueError, match="labels for"):
        multiclass_report(labels[:5], probabilities)


def test_format_multiclass_names_every_class_and_the_matrix():
    labels, probabilities = _scores(12, k=3)
    text = format_multiclass(
        multiclass_report(labels, probabilities, ["transverse", "oblique", "normal"])
    )
    assert "transverse" in text and "macro" in text and "Confusion matrix" in text
    text.encode("ascii")


# --------------------------------------------------------------------------
# Study level (MURA)
# --------------------------------------------------------------------------


def test_study_scores_take_the_maximum_or_the_mean_of_a_studys_images():
    studies = ["s2", "s1", "s2", "s3", "s1", "s2"]
    labels = [1, 0, 1, 0, 0, 1]
    probabilities = [0.2, 0.4, 0.9, 0.3, 0.1, 0.4]
    ids, study_labels, scores = study_scores(labels, probabilities, studies, "max")
    assert ids == ["s1", "s2", "s3"]
    assert study_labels.tolist() == [0, 1, 0]
    assert scores.tolist() == pytest.approx([0.4, 0.9, 0.3])
    _, _, means = study_scores(labels, probabilities, studies, "mean")
    assert means.tolist() == pytest.approx([0.25, 0.5, 0.3])
    with pytest.raises(ValueError, match="mix normal and abnormal"):
        study_scores([1, 0], [0.5, 0.5], ["s", "s"])


def test_study_level_report_matches_sklearn_on_the_study_scores():
    rng = np.random.default_rng(13)
    n_studies = 60
    study_labels = (rng.random(n_studies) < 0.4).astype(int)
    sizes = rng.integers(1, 4, n_studies)
    studies = np.repeat([f"XR_HAND/patient{i:05d}/study1" for i in range(n_studies)], sizes)
    labels = np.repeat(study_labels, sizes)
    probabilities = np.clip(rng.normal(0.3 + 0.3 * labels, 0.2), 0, 1)
    regions = ["hand" if i % 2 else "wrist" for i in range(n_studies)]
    image_regions = np.repeat(regions, sizes).tolist()
    thresholds = {"high_sensitivity": 0.4, "high_specificity": 0.7}
    report = study_level_report(
        labels,
        probabilities,
        studies.tolist(),
        thresholds,
        operating_point="high_sensitivity",
        regions=image_regions,
        n_bootstrap=50,
    )
    maxima = np.array([probabilities[studies == s].max() for s in sorted(set(studies))])
    assert report["n_studies"] == n_studies and report["n_images"] == labels.size
    assert report["auroc"] == pytest.approx(roc_auc_score(study_labels, maxima))
    for name, threshold in thresholds.items():
        decisions = (maxima >= threshold).astype(int)
        point = report["operating_points"][name]
        assert point["kappa"] == pytest.approx(cohen_kappa_score(study_labels, decisions))
    assert report["kappa"] == report["operating_points"]["high_sensitivity"]["kappa"]
    hands = np.array(regions) == "hand"
    assert report["by_region"]["hand"]["auroc"] == pytest.approx(
        roc_auc_score(study_labels[hands], maxima[hands])
    )
    json.dumps(report, allow_nan=False)
    assert "kappa" in format_study_level(report)


def _mura_tree(root, rng) -> dict[str, int]:
    """A small MURA folder set of generated images; bright images stand for abnormal."""
    labels = {}
    for first, split in ((0, "train"), (10, "valid")):  # no patient in both splits
        for region in ("XR_HAND", "XR_ELBOW"):
            for patient in range(first, first + 4):
                for study in (1, 2):
                    positive = (patient + study) % 2 == 0
                    folder = (
                        root
                        / split
                        / region
                        / f"patient{patient:05d}"
                        / f"study{study}_{'positive' if positive else 'negative'}"
                    )
                    for view in range(int(rng.integers(1, 4))):
                        write_png(folder / f"image{view + 1}.png", seed=int(rng.integers(1 << 30)))
                    labels[f"{region}/patient{patient:05d}/{folder.name}"] = int(positive)
    return labels


def test_evaluate_reports_study_level_figures_on_a_mura_folder(
    tmp_path, tiny_model_dir, use_fake_weights
):
    from fracture.evaluation.evaluate import evaluate_model, format_evaluation
    from fracture.inference.predictor import load_predictor

    _mura_tree(tmp_path / "mura", np.random.default_rng(14))
    predictor = load_predictor(tiny_model_dir)
    report = evaluate_model(
        tmp_path / "mura", predictor=predictor, split="val", pointing_game=False, n_bootstrap=0
    )
    # Independently: score every val image, group by its study folder, take the maximum.
    paths = sorted((tmp_path / "mura" / "valid").rglob("*.png"))
    scored = predictor.predict([str(p) for p in paths])
    by_study: dict[str, list[float]] = {}
    labels: dict[str, int] = {}
    for path, result in zip(paths, scored):
        key = "/".join(path.parent.parts[-3:])
        by_study.setdefault(key, []).append(result.probability)
        labels[key] = int(path.parent.name.endswith("positive"))
    keys = sorted(by_study)
    maxima = np.array([max(by_study[k]) for k in keys])
    truth = np.array([labels[k] for k in keys])
    study = report["study_level"]
    assert study["n_studies"] == len(keys) and study["n_images"] == len(paths)
    assert study["auroc"] == pytest.approx(roc_auc_score(truth, maxima), abs=1e-6)
    threshold = predictor.config.threshold
    assert study["kappa"] == pytest.approx(
        cohen_kappa_score(truth, (maxima >= threshold).astype(int)), abs=1e-6
    )
    assert set(study["by_region"]) == {"hand", "elbow"}
    text = format_evaluation(report)
    assert "Study AUROC" in text and "kappa" in text


def test_evaluate_reports_per_class_figures_for_a_k_class_model(tmp_path):
    from inference.test_class_inference import CLASSES, _phantom, _phantom_model
    from PIL import Image

    from fracture.evaluation.evaluate import evaluate_model, format_evaluation
    from fracture.inference.predictor import Predictor
    from fracture.model.folder import LoadedModel, ModelConfig

    rng = np.random.default_rng(15)
    root = tmp_path / "types"
    for name in CLASSES:
        for index in range(8):
            row, col = (int(v) for v in rng.integers(2, 30, 2))
            kind = [] if name == "normal" else [(name, row, col)]
            # Some images get the other type's line too, so the classes overlap.
            if index % 3 == 0 and name != "normal":
                other = "transverse" if name == "longitudinal" else "longitudinal"
                kind.append((other, int(rng.integers(2, 30)), int(rng.integers(2, 30))))
            image = _phantom(kind).astype(np.uint8)
            image += rng.integers(0, 30, image.shape).astype(np.uint8)
            path = root / "val" / name / f"{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    config = ModelConfig(
        image_size=64,
        classes=CLASSES,
        thresholds={"high_sensitivity": 0.3, "high_specificity": 0.6},
        name="phantom-types",
    )
    predictor = Predictor(LoadedModel(_phantom_model(), config, {}, None), batch_size=4)
    report = evaluate_model(root, predictor=predictor, split="val", n_bootstrap=0)

    paths = sorted((root / "val").rglob("*.png"))
    scored = predictor.predict([str(p) for p in paths])
    labels = np.array([CLASSES.index(p.parent.name) for p in paths])
    probabilities = np.array([list(r.class_probabilities.values()) for r in scored])
    multiclass = report["multiclass"]
    assert multiclass["class_names"] == CLASSES
    assert (
        multiclass["confusion_matrix"]
        == confusion_matrix(labels, probabilities.argmax(1), labels=[0, 1, 2]).tolist()
    )
    assert multiclass["auroc_macro"] == pytest.approx(
        roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"), abs=1e-6
    )
    # The binary figures are those of any fracture: 1 - P(normal) against "not normal".
    normal = CLASSES.index("normal")
    assert report["auroc"] == pytest.approx(
        roc_auc_score(labels != normal, 1 - probabilities[:, normal]), abs=1e-6
    )
    assert set(report["operating_points"]) == {"high_sensitivity", "high_specificity"}
    json.dumps(report, allow_nan=False)
    text = format_evaluation(report)
    assert "macro" in text and "transverse" in text and "AUROC" in text

    # A fracture/normal dataset cannot measure a model of fracture types.
    binary = tmp_path / "binary"
    for name in ("fractured", "normal"):
        write_png(binary / "val" / name / "a.png", seed=1)
    with pytest.raises(ValueError, match="fracture/normal dataset"):
        evaluate_model(binary, predictor=predictor, split="val")
