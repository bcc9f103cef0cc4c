"""The shipped model, models/default, judged on real FracAtlas validation images.

Slow (it scores about 400 radiographs at the model's resolution) and needs
../shared; CI runs it.
"""

from __future__ import annotations

import pytest

from fracture.config import PROJECT_ROOT, Settings
from fracture.model.folder import read_config

DEFAULT_MODEL = PROJECT_ROOT / "models" / "default"


@pytest.fixture(scope="module")
def default_model():
    if not (DEFAULT_MODEL / "config.json").is_file():
        pytest.skip("models/default is not present")
    return DEFAULT_MODEL


def test_default_model_folder_is_small_and_verified(default_model):
    config, card = read_config(default_model)  # raises on any checksum mismatch
    size = sum(p.stat().st_size for p in default_model.iterdir())
    assert size <= 60 * 1024 * 1024  # issue 21's budget for both heads and the gate
    assert "FracAtlas" in card["training_data"]["citation"]
    assert config.thresholds["high_sensitivity"] <= config.thresholds["high_specificity"]
    assert card["intended_use"].startswith("Research and education demo")


@pytest.mark.slow
def test_default_model_reaches_val_auroc_and_points_at_fractures(
    default_model, shared_fracatlas, shared_weights
):
    from fracture.evaluation.evaluate import evaluate_model
    from fracture.inference.predictor import load_predictor

    predictor = load_predictor(default_model, settings=Settings(imagenet_weights=shared_weights))
    report = evaluate_model(shared_fracatlas, predictor=predictor, n_bootstrap=200)
    located = report["localiser"]
    print(
        f"val AUROC {report['auroc']:.4f}, sensitivity {report['sensitivity']:.3f}, "
        f"specificity {report['specificity']:.3f}, pointing {located['pointing_game']['rate']:.3f}, "
        f"AP50 {located['ap50']:.3f}"
    )
    # The classifier (no box training) with the localisation head's peak in its logit: 0.944
    # in bfloat16 when the folder was assembled (0.941 out of fold; 0.918 without the peak).
    # Issue 21's bar for val: 0.93.
    assert report["auroc"] >= 0.93
    # The default overlay is the two-level head's map: its peak lies in a radiologist's box
    # on 52 of 74 val fractures (Grad-CAM's: 13), and its boxes beat Grad-CAM's region.
    # Issue 21's bar for val: 0.60.
    assert located["pointing_game"]["rate"] >= 0.60
    assert located["pointing_game"]["rate"] > report["localisation"]["pointing_game"]["rate"]
    assert located["ap50"] > report["localisation"]["ap50"]
    # Boxes are drawn only on images labelled fracture: few on normal images.
    assert located["false_boxes_per_normal"]["high_specificity"] <= 0.10
    # The default (high-sensitivity) threshold is a bootstrap median, not the val pick, so val
    # sensitivity sits near 0.90 rather than exactly above it: it must lie inside the
    # interval the card states.
    card_point = predictor.loaded.card["calibration"]["operating_points"]["high_sensitivity"]
    low, high = card_point["sensitivity_ci"]
    assert low <= report["sensitivity"] <= high
    assert report["sensitivity"] >= 0.85
    # The head's peak is what lifted specificity at the high-sensitivity point (0.69 -> 0.82).
    assert report["specificity"] >= 0.75


@pytest.mark.slow
def test_default_model_gate_flags_every_probe_image(default_model, shared_weights):
    """No label on what is not a radiograph: every probe image is flagged as unlike training.

    A heat-map candidate failed here (a text page, a near-black frame and a smooth gradient
    scored under the threshold) while its val false alarms stayed at 0, so the card's
    "probes flagged" line is checked on every model that ships.
    """
    from fracture.evaluation.ood_fit import ood_probe_images
    from fracture.inference.predictor import load_predictor

    predictor = load_predictor(default_model, settings=Settings(imagenet_weights=shared_weights))
    assert predictor.ood_gate is not None
    probes = ood_probe_images()
    results = predictor.predict(list(probes.values()), names=list(probes))
    missed = [name for name, result in zip(probes, results) if result.in_distribution]
    assert all(result.ok for result in results)
    assert not missed, f"the OOD gate let through: {', '.join(missed)}"
