"""The localisation head's weight in the calibrated logit (fracture.evaluation.operating_points)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fracture.evaluation.operating_points import (
    calibrate,
    fit_localiser_weight,
    out_of_fold_probabilities,
)


def _two_heads(n: int, weight: float, seed: int):
    """Labels drawn from sigmoid(z + weight * peak - 1.5): the truth has a known weight."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, n)
    peak = rng.normal(0, 2, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-(z + weight * peak - 1.5)))).astype(int)
    return z, peak, labels


def test_the_weight_of_an_informative_peak_is_recovered():
    z, peak, labels = _two_heads(20000, 0.5, seed=0)
    assert fit_localiser_weight(z, peak, labels) == pytest.approx(0.5, abs=0.05)
    # Scale-free: a peak in other units gets the weight in those units.
    assert fit_localiser_weight(z, 4 * peak, labels) == pytest.approx(0.125, abs=0.015)


def test_a_peak_that_points_the_wrong_way_gets_no_weight():
    z, peak, labels = _two_heads(5000, 0.0, seed=1)
    assert fit_localiser_weight(z, -np.abs(peak) * labels + peak, labels) == 0.0


def test_calibrate_keeps_the_peak_only_where_it_raises_the_out_of_fold_auroc():
    z, peak, labels = _two_heads(600, 0.7, seed=2)
    fused = calibrate(z, labels, peaks=peak, n_bootstrap=50)
    alone = calibrate(z, labels, n_bootstrap=50)
    assert fused.localiser_weight > 0.3 and alone.localiser_weight == 0.0
    aurocs = fused.auroc_out_of_fold
    assert aurocs["with_localiser"] > aurocs["classifier"]
    assert "0.70" in fused.method or f"{fused.localiser_weight:.2f}" in fused.method
    assert fused.summary()["localiser_weight"] == fused.localiser_weight
    assert "localiser_weight" not in alone.summary()
    # The stored calibration reproduces the fit: sigmoid((z + w peak - shift) / T).
    probability = fused.probability(z + fused.localiser_weight * peak)
    assert roc_auc_score(labels, probability) > roc_auc_score(labels, alone.probability(z))

    noise = np.random.default_rng(3).normal(size=z.shape)
    judged = calibrate(z, labels, peaks=noise, n_bootstrap=50)
    kept = judged.auroc_out_of_fold["with_localiser"] > judged.auroc_out_of_fold["classifier"]
    assert (judged.localiser_weight > 0) == kept
    if not kept:
        assert "left out" in judged.method


def test_out_of_fold_probabilities_refit_the_weight_without_the_held_images():
    z, peak, labels = _two_heads(400, 1.0, seed=4)
    with_peak = out_of_fold_probabilities(z, labels, peaks=peak)
    without = out_of_fold_probabilities(z, labels)
    assert with_peak.shape == z.shape and np.all((0 < with_peak) & (with_peak < 1))
    assert roc_auc_score(labels, with_peak) > roc_auc_score(labels, without)
