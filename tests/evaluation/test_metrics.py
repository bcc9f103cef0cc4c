"""Tests for fracture.evaluation.metrics: every number is checked against an independent
numpy computation (or a hand-worked case), not against the code under test."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from fracture.evaluation.metrics import (
    MAX_CURVE_POINTS,
    MISSING_GROUP,
    binary_report,
    calibrated_probability,
    choose_thresholds,
    evaluation_report,
    expected_calibration_error,
    fit_temperature,
    format_report,
    subgroup_auroc,
)

# --------------------------------------------------------------------------
# Independent reference computations
# --------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
    p = np.clip(probabilities, 1e-15, 1 - 1e-15)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def _ece(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    # Bins (a, b], first bin [0, b]: the rule the module documents.
    ids = np.clip(np.ceil(probabilities * n_bins).astype(int) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        members = ids == b
        if members.any():
            total += members.mean() * abs(labels[members].mean() - probabilities[members].mean())
    return total


def _pairwise_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    # Mann-Whitney: P(score of a fracture > score of a normal), ties count half.
    pos = scores[labels == 1][:, None]
    neg = scores[labels == 0][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def _counts(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, int]:
    flagged = probabilities >= threshold
    return {
        "tn": int(np.sum(~flagged & (labels == 0))),
        "fp": int(np.sum(flagged & (labels == 0))),
        "fn": int(np.sum(~flagged & (labels == 1))),
        "tp": int(np.sum(flagged & (labels == 1))),
    }


def _sens_spec(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float
) -> tuple[float, float]:
    flagged = probabilities >= threshold
    return float(np.mean(flagged[labels == 1])), float(np.mean(~flagged[labels == 0]))


def _scores(rng: np.random.Generator, n: int, separation: float = 1.5):
    """Labels and probabilities of a moderately good classifier (prevalence ~30 %)."""
    labels = (rng.random(n) < 0.3).astype(int)
    logits = rng.normal(0.0, 1.0, n) + separation * (labels - 0.5) * 2
    return labels, _sigmoid(logits)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240601)


# --------------------------------------------------------------------------
# Temperature scaling
# --------------------------------------------------------------------------


def test_fit_temperature_undoes_overconfidence(rng):
    true_logits = rng.normal(0.0, 1.5, 20_000)
    labels = (rng.random(true_logits.size) < _sigmoid(true_logits)).astype(int)
    reported = 4.0 * true_logits  # a network four times too sure of itself

    temperature = fit_temperature(reported, labels)

    assert temperature == pytest.approx(4.0, rel=0.08)
    before, after = _sigmoid(reported), calibrated_probability(reported, temperature)
    assert _nll(after, labels) < _nll(before, labels)
    assert _ece(after, labels) < _ece(before, labels) / 3
    # It is the minimiser, not merely an improvement.
    for nearby in (temperature * 1.05, temperature / 1.05):
        assert _nll(_sigmoid(reported / nearby), labels) > _nll(after, labels)


def test_fit_temperature_leaves_calibrated_logits_alone(rng):
    logits = rng.normal(0.0, 2.0, 20_000)
    labels = (rng.random(logits.size) < _sigmoid(logits)).astype(int)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.08)


def test_fit_temperature_warns_on_separable_logits():
    with pytest.warns(RuntimeWarning, match="search bound"):
        fit_temperature([-2.0, -1.0, 1.0, 2.0], [0, 0, 1, 1])


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        ([0.1, 0.2], [1, 1], "both normal and fracture"),
        ([], [], "empty"),
        ([0.1, np.nan], [0, 1], "NaN"),
        ([0.1, 0.2, 0.3], [0, 1], "same length"),
        ([0.1, 0.2], [0, 2], "0 \\(normal\\) / 1"),
    ],
)
def test_fit_temperature_rejects_bad_input(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        fit_temperature(logits, labels)


def test_calibrated_probability_is_stable_and_exact():
    logits = np.array([-1000.0, -3.0, 0.0, 2.0, 1000.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in exp would surface here
        probabilities = calibrated_probability(logits, 2.0)
    np.testing.assert_allclose(probabilities[1:4], _sigmoid(logits[1:4] / 2.0), rtol=1e-12)
    # The tails keep full relative precision instead of rounding to 0.
    assert probabilities[0] == pytest.approx(np.exp(-500.0), rel=1e-12)
    assert probabilities[-1] == 1.0
    assert calibrated_probability(np.zeros((2, 3)), 1.0).shape == (2, 3)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            calibrated_probability(logits, bad)


# --------------------------------------------------------------------------
# Operating points
# --------------------------------------------------------------------------


def test_choose_thresholds_meets_targets_and_is_extreme(rng):
    labels, probabilities = _scores(rng, 600)
    chosen = choose_thresholds(probabilities, labels)

    t_sens, t_spec = chosen["high_sensitivity"], chosen["high_specificity"]
    sens, spec = _sens_spec(labels, probabilities, t_sens)
    assert sens >= 0.90
    assert chosen["achieved"]["high_sensitivity"] == {"sensitivity": sens, "specificity": spec}
    sens, spec = _sens_spec(labels, probabilities, t_spec)
    assert spec >= 0.90
    assert chosen["achieved"]["high_specificity"] == {"sensitivity": sens, "specificity": spec}
    assert chosen["targets"] == {"min_sensitivity": 0.90, "min_specificity": 0.90}

    # "Highest" / "lowest": the next observed score beyond each threshold
    # breaks the constraint.
    above = probabilities[probabilities > t_sens].min()
    assert _sens_spec(labels, probabilities, above)[0] < 0.90
    below = probabilities[probabilities < t_spec].max()
    assert _sens_spec(labels, probabilities, below)[1] < 0.90
    json.dumps(chosen, allow_nan=False)


def test_choose_thresholds_on_separable_scores():
    labels = np.array([0] * 30 + [1] * 20)
    probabilities = np.concatenate([np.linspace(0.0, 0.4, 30), np.linspace(0.6, 1.0, 20)])
    chosen = choose_thresholds(probabilities, labels, min_sensitivity=1.0, min_specificity=1.0)
    # Both points sit at the lowest fracture score: perfect on both counts.
    assert chosen["high_sensitivity"] == pytest.approx(0.6)
    assert chosen["high_specificity"] == pytest.approx(0.6)
    for name in ("high_sensitivity", "high_specificity"):
        assert chosen["achieved"][name] == {"sensitivity": 1.0, "specificity": 1.0}
        report = binary_report(labels, probabilities, chosen[name], n_bootstrap=0)
        assert report["confusion"] == {"tn": 30, "fp": 0, "fn": 0, "tp": 20}
        assert report["auroc"] == 1.0


def test_threshold_convention_is_greater_or_equal():
    # Ties at the threshold: ">=" flags all three 0.5 cases, ">" would not.
    labels = np.array([0, 0, 0, 1, 1, 1])
    probabilities = np.array([0.1, 0.3, 0.5, 0.5, 0.7, 0.9])
    chosen = choose_thresholds(probabilities, labels, min_sensitivity=1.0)
    threshold = chosen["high_sensitivity"]
    assert threshold == 0.5
    assert chosen["achieved"]["high_sensitivity"] == {"sensitivity": 1.0, "specificity": 2 / 3}
    assert float(np.mean(probabilities[labels == 1] > threshold)) == 2 / 3  # the other convention
    report = binary_report(labels, probabilities, threshold, n_bootstrap=0)
    assert (report["sensitivity"], report["specificity"]) == (1.0, 2 / 3)


def test_choose_thresholds_flags_nothing_when_specificity_is_out_of_reach():
    # Five normals, the top score among them: any threshold that flags a case costs 20 % spec.
    labels = np.array([1, 1, 0, 0, 0, 0, 1, 0])
    probabilities = np.array([0.2, 0.3, 0.1, 0.15, 0.05, 0.12, 0.6, 0.9])
    with pytest.warns(RuntimeWarning, match="flags nothing"):
        chosen = choose_thresholds(probabilities, labels)
    assert chosen["high_specificity"] > probabilities.max()
    assert chosen["achieved"]["high_specificity"] == {"sensitivity": 0.0, "specificity": 1.0}
    assert binary_report(labels, probabilities, chosen["high_specificity"], n_bootstrap=0)[
        "confusion"
    ] == {"tn": 5, "fp": 0, "fn": 3, "tp": 0}


@pytest.mark.filterwarnings("ignore:No observed score reaches specificity:RuntimeWarning")
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 19)), min_size=2, max_size=60).filter(
        lambda rows: len({label for label, _ in rows}) == 2
    ),
    min_sensitivity=st.sampled_from([0.5, 0.8, 0.9, 0.95, 1.0]),
    min_specificity=st.sampled_from([0.5, 0.8, 0.9, 0.95, 1.0]),
)
def test_thresholds_are_extreme_under_ties(data, min_sensitivity, min_specificity):
    # Coarse scores force many ties, the case where conventions disagree.
    labels = np.array([label for label, _ in data])
    probabilities = np.array([score / 20 for _, score in data])
    chosen = choose_thresholds(
        probabilities, labels, min_sensitivity=min_sensitivity, min_specificity=min_specificity
    )

    t_sens = chosen["high_sensitivity"]
    assert t_sens in probabilities
    assert _sens_spec(labels, probabilities, t_sens)[0] >= min_sensitivity
    higher = probabilities[probabilities > t_sens]
    if higher.size:
        assert _sens_spec(labels, probabilities, higher.min())[0] < min_sensitivity

    t_spec = chosen["high_specificity"]
    assert t_spec in probabilities or t_spec > probabilities.max()
    assert _sens_spec(labels, probabilities, t_spec)[1] >= min_specificity
    lower = probabilities[probabilities < t_spec]
    if lower.size:
        assert _sens_spec(labels, probabilities, lower.max())[1] < min_specificity


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_sensitivity": 0.0}, "min_sensitivity"),
        ({"min_specificity": 1.5}, "min_specificity"),
    ],
)
def test_choose_thresholds_rejects_bad_targets(kwargs, message):
    with pytest.raises(ValueError, match=message):
        choose_thresholds([0.1, 0.9], [0, 1], **kwargs)


def test_choose_thresholds_rejects_logits_and_single_class():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        choose_thresholds([-2.0, 3.0], [0, 1])
    with pytest.raises(ValueError, match="both normal and fracture"):
        choose_thresholds([0.2, 0.3], [0, 0])


# --------------------------------------------------------------------------
# binary_report
# --------------------------------------------------------------------------


def test_binary_report_agrees_with_numpy(rng):
    labels, probabilities = _scores(rng, 400)
    threshold = 0.42
    report = binary_report(labels, probabilities, threshold, n_bootstrap=100, seed=3)

    c = _counts(labels, probabilities, threshold)
    assert report["confusion"] == c
    assert report["confusion_matrix"] == [[c["tn"], c["fp"]], [c["fn"], c["tp"]]]
    assert report["class_names"] == ["normal", "fracture"]
    assert report["sensitivity"] == c["tp"] / (c["tp"] + c["fn"])
    assert report["specificity"] == c["tn"] / (c["tn"] + c["fp"])
    assert report["ppv"] == c["tp"] / (c["tp"] + c["fp"])
    assert report["npv"] == c["tn"] / (c["tn"] + c["fn"])
    assert report["accuracy"] == (c["tp"] + c["tn"]) / labels.size
    assert report["n"] == 400 and report["n_positive"] == int(labels.sum())
    assert report["prevalence"] == labels.mean()
    assert report["threshold"] == threshold
    assert report["auroc"] == pytest.approx(_pairwise_auroc(labels, probabilities), abs=1e-12)
    assert report["brier"] == pytest.approx(np.mean((probabilities - labels) ** 2), abs=1e-12)
    assert report["ece"] == pytest.approx(_ece(probabilities, labels), abs=1e-12)
    assert 0.0 < report["pr_auc"] <= 1.0


def test_binary_report_is_json_without_nan_and_curves_are_thinned(rng):
    labels, probabilities = _scores(rng, 3000, separation=0.6)
    report = binary_report(labels, probabilities, 0.5, n_bootstrap=20)
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text) == report  # plain Python types only

    roc = report["roc"]
    assert 2 < len(roc["fpr"]) <= MAX_CURVE_POINTS
    assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"])
    assert (roc["fpr"][0], roc["tpr"][0], roc["thresholds"][0]) == (0.0, 0.0, None)
    assert (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
    pr = report["pr"]
    assert 2 < len(pr["precision"]) <= MAX_CURVE_POINTS
    assert len(pr["precision"]) == len(pr["recall"]) == len(pr["thresholds"])
    assert (pr["recall"][-1], pr["precision"][-1], pr["thresholds"][-1]) == (0.0, 1.0, None)


def test_auroc_ci_contains_estimate_and_shrinks_with_n(rng):
    widths = []
    for n in (150, 3000):
        labels, probabilities = _scores(rng, n, separation=0.8)
        report = binary_report(labels, probabilities, 0.5, n_bootstrap=200, seed=1)
        low, high = report["auroc_ci"]
        assert low <= report["auroc"] <= high
        assert report["n_bootstrap_used"] == 200
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(n): 4.5x narrower expected


def test_auroc_ci_is_seeded(rng):
    labels, probabilities = _scores(rng, 200)
    first = binary_report(labels, probabilities, 0.5, n_bootstrap=50, seed=7)["auroc_ci"]
    again = binary_report(labels, probabilities, 0.5, n_bootstrap=50, seed=7)["auroc_ci"]
    other = binary_report(labels, probabilities, 0.5, n_bootstrap=50, seed=8)["auroc_ci"]
    assert first == again and first != other
    assert binary_report(labels, probabilities, 0.5, n_bootstrap=0)["auroc_ci"] is None
    with pytest.raises(ValueError, match="seed"):
        binary_report(labels, probabilities, 0.5, seed=None)


def test_binary_report_single_class_uses_none(rng):
    probabilities = rng.random(30)
    report = binary_report(np.zeros(30, dtype=int), probabilities, 0.5, n_bootstrap=20)
    assert report["auroc"] is None and report["auroc_ci"] is None
    assert report["pr_auc"] is None and report["roc"] is None and report["pr"] is None
    assert report["sensitivity"] is None and report["npv"] is not None
    json.dumps(report, allow_nan=False)


def test_binary_report_accepts_bool_labels():
    report = binary_report([False, True, True], [0.2, 0.7, 0.4], 0.5, n_bootstrap=0)
    assert report["confusion"] == {"tn": 1, "fp": 0, "fn": 1, "tp": 1}


@pytest.mark.parametrize(
    ("labels", "probabilities", "threshold", "message"),
    [
        ([0, 1, 1], [0.1, 0.9], 0.5, "same length"),
        ([0, 1], [0.1, 1.2], 0.5, r"\[0, 1\]"),
        ([0, 1], [0.1, np.nan], 0.5, "NaN"),
        ([0, 1], [0.1, 0.9], 50, "threshold"),
        ([0, 1], [0.1, 0.9], float("nan"), "threshold"),
        (["no", "yes"], [0.1, 0.9], 0.5, "dtype"),
        ([[0, 1]], [[0.1, 0.9]], 0.5, "one-dimensional"),
    ],
)
def test_binary_report_rejects_bad_input(labels, probabilities, threshold, message):
    with pytest.raises(ValueError, match=message):
        binary_report(labels, probabilities, threshold, n_bootstrap=0)


# --------------------------------------------------------------------------
# Calibration error
# --------------------------------------------------------------------------


def test_ece_is_zero_when_every_bin_is_calibrated():
    # 20 cases at each bin centre, of which exactly centre * 20 are fractures.
    probabilities, labels = [], []
    for centre in np.arange(0.05, 1.0, 0.1):
        positives = round(centre * 20)
        probabilities += [centre] * 20
        labels += [1] * positives + [0] * (20 - positives)
    ece, curve = expected_calibration_error(labels, probabilities)
    assert ece == pytest.approx(0.0, abs=1e-12)
    assert curve["counts"] == [20] * 10
    np.testing.assert_allclose(curve["observed_frequency"], curve["mean_predicted"], atol=1e-12)


def test_ece_hand_computed_case():
    # Bin [0, 0.5]: conf (0.2 + 0.2 + 0.4) / 3 = 0.2667, acc 1/3 -> gap 1/15, weight 3/5.
    # Bin (0.5, 1]: conf (0.9 + 0.7) / 2 = 0.8, acc 1 -> gap 0.2, weight 2/5.
    # ECE = 3/5 * 1/15 + 2/5 * 0.2 = 0.04 + 0.08 = 0.12.
    ece, curve = expected_calibration_error([0, 1, 0, 1, 1], [0.2, 0.2, 0.4, 0.9, 0.7], n_bins=2)
    assert ece == pytest.approx(0.12, abs=1e-12)
    assert curve["bin_edges"] == [0.0, 0.5, 1.0]
    assert curve["counts"] == [3, 2]
    assert curve["mean_predicted"] == pytest.approx([0.8 / 3, 0.8])
    assert curve["observed_frequency"] == pytest.approx([1 / 3, 1.0])


def test_ece_edges_and_empty_bins():
    # A probability on an inner edge belongs to the bin below it.
    ece, curve = expected_calibration_error([1, 0], [0.5, 0.5], n_bins=4)
    assert curve["counts"] == [0, 2, 0, 0]
    assert curve["mean_predicted"] == [None, 0.5, None, None]
    assert curve["observed_frequency"] == [None, 0.5, None, None]
    assert ece == 0.0
    json.dumps(curve, allow_nan=False)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([1, 0], [0.5, 0.5], n_bins=0)


# --------------------------------------------------------------------------
# Subgroups
# --------------------------------------------------------------------------


def test_subgroup_auroc(rng):
    labels, probabilities = _scores(rng, 120)
    labels[100:110] = 0  # group "shoulder" has normals only
    groups = ["hand"] * 100 + ["shoulder"] * 10 + [None] * 10
    result = subgroup_auroc(labels, probabilities, groups, n_bootstrap=30)

    assert list(result) == sorted(["hand", "shoulder", MISSING_GROUP])
    hand = result["hand"]
    assert hand["n"] == 100 and hand["n_positive"] == int(labels[:100].sum())
    assert hand["auroc"] == pytest.approx(_pairwise_auroc(labels[:100], probabilities[:100]))
    assert hand["auroc_ci"][0] <= hand["auroc"] <= hand["auroc_ci"][1]
    assert result["shoulder"]["auroc"] is None and result["shoulder"]["auroc_ci"] is None
    assert result[MISSING_GROUP]["n"] == 10
    json.dumps(result, allow_nan=False)


def test_subgroup_auroc_rejects_bad_groups():
    with pytest.raises(ValueError, match="same length"):
        subgroup_auroc([0, 1], [0.2, 0.8], ["a"])
    with pytest.raises(ValueError, match="must be str"):
        subgroup_auroc([0, 1], [0.2, 0.8], ["a", 3])


# --------------------------------------------------------------------------
# The whole report
# --------------------------------------------------------------------------


@pytest.fixture
def evaluation(rng):
    """Overconfident validation and test logits, with thresholds fitted on validation."""

    def split(n):
        true_logits = rng.normal(-0.8, 1.5, n)
        labels = (rng.random(n) < _sigmoid(true_logits)).astype(int)
        return labels, 3.0 * true_logits

    val_labels, val_logits = split(1000)
    labels, logits = split(400)
    temperature = fit_temperature(val_logits, val_labels)
    thresholds = choose_thresholds(calibrated_probability(val_logits, temperature), val_labels)
    regions = list(rng.choice(["hand", "leg", "hip"], size=400))
    hardware = [bool(flag) for flag in rng.random(400) < 0.15]
    hardware[0] = None
    report = evaluation_report(
        labels,
        logits,
        temperature,
        thresholds,
        regions=regions,
        hardware=hardware,
        pointing={"hits": 7, "n": 9, "score": 7 / 9, "tolerance": 0.0},
        n_bootstrap=50,
    )
    return labels, logits, temperature, thresholds, hardware, report


def test_evaluation_report_contents(evaluation):
    labels, logits, temperature, thresholds, hardware, report = evaluation
    json.dumps(report, allow_nan=False)

    probabilities = _sigmoid(logits / temperature)
    assert report["temperature"] == temperature
    assert report["operating_point"] == "high_sensitivity"
    assert report["threshold"] == thresholds["high_sensitivity"]
    assert report["confusion"] == _counts(labels, probabilities, thresholds["high_sensitivity"])
    for name in ("high_sensitivity", "high_specificity"):
        point = report["operating_points"][name]
        assert point["threshold"] == thresholds[name]
        assert point["confusion"] == _counts(labels, probabilities, thresholds[name])
        assert (point["sensitivity"], point["specificity"]) == pytest.approx(
            _sens_spec(labels, probabilities, thresholds[name])
        )
    # Temperature keeps the ranking, so AUROC is that of the raw logits...
    assert report["auroc"] == pytest.approx(roc_auc_score(labels, logits))
    # ...while calibration improves.
    assert report["ece"] < report["ece_uncalibrated"]
    assert report["brier"] < report["brier_uncalibrated"]
    assert report["ece_uncalibrated"] == pytest.approx(_ece(_sigmoid(logits), labels))

    assert set(report["subgroups"]["region"]) == {"hand", "leg", "hip"}
    free = np.array([flag is False for flag in hardware])
    assert report["subgroups"]["hardware_free"]["n"] == int(free.sum())
    assert report["subgroups"]["hardware_free"]["auroc"] == pytest.approx(
        _pairwise_auroc(labels[free], probabilities[free])
    )
    assert report["pointing_game"]["hits"] == 7


def test_evaluation_report_takes_model_config_thresholds(rng):
    labels, probabilities = _scores(rng, 100)
    logits = np.log(probabilities / (1 - probabilities))
    report = evaluation_report(
        labels, logits, 1.0, {"high_sensitivity": 0.3, "high_specificity": 0.7}, n_bootstrap=0
    )
    assert report["threshold"] == 0.3 and "subgroups" not in report
    assert set(report["operating_points"]) == {"high_sensitivity", "high_specificity"}
    with pytest.raises(ValueError, match="operating_point"):
        evaluation_report(labels, logits, 1.0, {"high_specificity": 0.7}, n_bootstrap=0)
    with pytest.raises(ValueError, match="hardware"):
        evaluation_report(
            labels, logits, 1.0, {"high_sensitivity": 0.3}, hardware=["yes"] * 100, n_bootstrap=0
        )


def test_format_report_shows_the_key_numbers(evaluation):
    *_, report = evaluation
    text = format_report(report)
    low, high = report["auroc_ci"]
    for number in (report["auroc"], low, high, report["pr_auc"], report["brier"], report["ece"]):
        assert f"{number:.3f}" in text
    for name, point in report["operating_points"].items():
        assert name in text
        assert f"{point['sensitivity']:.3f}" in text and f"{point['specificity']:.3f}" in text
    for count in report["confusion"].values():
        assert f" {count} |" in text
    for region, entry in report["subgroups"]["region"].items():
        assert f"region {region}" in text and f"{entry['auroc']:.3f}" in text
    assert "without hardware" in text
    assert "7/9" in text
    # A bare binary_report formats too.
    labels = np.array([0, 1, 1, 0])
    bare = format_report(binary_report(labels, [0.1, 0.8, 0.4, 0.6], 0.5, n_bootstrap=0))
    assert "AUROC" in bare and "n/a" not in bare.split("\n")[1]


def test_calibrate_command_rewrites_a_model_folder_that_still_verifies(
    tmp_path, tiny_model_dir, use_fake_weights
):
    """`python -m fracture calibrate`: Platt scaling and thresholds refitted, valid checksums."""
    import shutil

    from fracture.evaluation.calibrate import calibrate_model
    from fracture.model.folder import CARD_JSON, ModelFolder, read_config

    from conftest import write_png

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    card = json.loads((model_dir / CARD_JSON).read_text())
    card["training_data"] = {"counts": {"train": {"fractured": 10, "normal": 40}}}
    ModelFolder(model_dir).rewrite_config(_config_of(model_dir), card)
    for index in range(6):
        write_png(tmp_path / "data" / "val" / "fractured" / f"f{index}.png", seed=index)
        write_png(tmp_path / "data" / "val" / "normal" / f"n{index}.png", seed=50 + index)
        write_png(tmp_path / "data" / "train" / "normal" / f"t{index}.png", seed=90 + index)
    # The oracle: Platt scaling fitted directly on the network's raw val logits.
    from fracture.data.layouts import load_dataset
    from fracture.evaluation.evaluate import score_records
    from fracture.evaluation.operating_points import fit_platt
    from fracture.inference.predictor import load_predictor

    scores = score_records(
        load_predictor(model_dir), load_dataset(tmp_path / "data").split("val"), with_cam=False
    )
    assert scores.peaks is None  # no localisation head: the classifier's logit alone
    expected_temperature, expected_shift = fit_platt(
        scores.logits, scores.labels
    )  # the tiny model's shift is 0
    report = calibrate_model(model_dir, tmp_path / "data")
    config, card = read_config(model_dir)  # checksums verify after the rewrite
    assert config.prior_shift == pytest.approx(expected_shift, rel=1e-4, abs=1e-6)
    assert config.temperature == pytest.approx(expected_temperature, rel=1e-4)
    assert config.temperature > 0 and config.temperature != 1.0
    assert set(config.thresholds) == {"high_sensitivity", "high_specificity"}
    assert card["temperature"] == config.temperature
    assert json.loads((model_dir / "evaluation.json").read_text()) == json.loads(json.dumps(report))
    assert f"temperature {config.temperature:.2f}" in (model_dir / "model_card.md").read_text()


def _config_of(model_dir):
    from fracture.model.folder import CONFIG_FILE, ModelConfig

    return ModelConfig.from_json(json.loads((model_dir / CONFIG_FILE).read_text()))
