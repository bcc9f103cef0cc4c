"""Context beside a result (fracture.views.context): the evaluation's own figures, in words."""

from __future__ import annotations

import numpy as np
import pytest
from test_app import _open, _texts, app_env  # noqa: F401 - the dashboard's fixture, shared

from fracture.evaluation.metrics import evaluation_report
from fracture.evaluation.proportions import wilson_rate
from fracture.views.context import result_context


@pytest.fixture(scope="module")
def report():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 40)
    logits = labels * 1.5 + rng.normal(0, 1, labels.size)
    regions = ["hand"] * 60 + ["shoulder"] * 20
    labels[60:] = 0  # no fractured shoulder: its AUROC is undefined
    return evaluation_report(
        labels,
        logits,
        1.0,
        {"high_sensitivity": 0.4, "high_specificity": 0.7},
        regions=regions,
        n_bootstrap=20,
    )


def test_the_rates_are_the_reports_own_at_the_chosen_point(report):
    for point in ("high_sensitivity", "high_specificity"):
        found = result_context(report, point, "hand", "hand")
        counts = report["operating_points"][point]["confusion"]
        sensitivity = wilson_rate(counts["tp"], counts["tp"] + counts["fn"])
        low, high = sensitivity["ci"]
        assert f"sensitivity {sensitivity['rate']:.0%} ({low:.0%}-{high:.0%}, " in found.rates
        assert f"{counts['tn']} of {counts['tn'] + counts['fp']}" in found.rates
    loose = result_context(report, "high_sensitivity", "hand").rates
    strict = result_context(report, "high_specificity", "hand").rates
    assert loose != strict


def test_the_region_gets_its_own_figure_or_the_reason_it_has_none(report):
    hand = result_context(report, "high_sensitivity", "hand", "hand")
    entry = report["subgroups"]["region"]["hand"]
    assert f"AUROC {entry['auroc']:.2f}" in hand.region and "60 images" in hand.region
    assert "rates are overall" in hand.note
    shoulder = result_context(report, "high_sensitivity", "shoulder", "shoulder")
    assert "too few" in shoulder.region and "AUROC" not in shoulder.region
    hip = result_context(report, "high_sensitivity", "hip", "hip")
    assert "no hip radiographs" in hip.region


def test_an_uncertain_region_is_said_and_the_overall_figures_shown(report):
    found = result_context(report, "high_sensitivity", None, "uncertain")
    assert found.region == "" and "uncertain" in found.note and "sensitivity" in found.rates
    no_head = result_context(report, "high_sensitivity", None, has_region_head=False)
    assert "not named by this model" in no_head.note
    assert result_context(None, "high_sensitivity", "hand") is None
    assert result_context(report, "no_such_point", "hand") is None


def test_predict_shows_the_context_beside_the_result(app_env):  # noqa: F811
    from app_helpers import png_bytes

    at = _open("app_pages/predict.py")
    at.file_uploader[0].upload("knee.png", png_bytes(1), "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    text = _texts(at)
    assert "Validation at this operating point, all regions: sensitivity" in text
    assert "not named by this model, so these are the overall figures" in text
