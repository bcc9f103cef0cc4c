"""Training the localisation head (fracture.training.localiser) on features with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from fracture.training.localiser import (
    LocaliserTraining,
    centre_targets,
    train_and_measure,
)

GRID = 12


def test_centre_targets_mark_the_centre_cell_with_offset_and_size():
    heat, offset, log_size = centre_targets([(0.25, 0.5, 0.5, 0.75)], GRID)
    # Centre (0.375, 0.625) * 12 = (4.5, 7.5): cell row 7, col 4, at the cell's middle.
    assert heat[7, 4] == 1.0 and (heat == 1.0).sum() == 1
    assert offset[7, 4] == pytest.approx((0.0, 0.0))
    assert np.exp(log_size[7, 4]) == pytest.approx((3.0, 3.0))
    assert 0 < heat[7, 5] < 1 and heat[0, 0] == pytest.approx(0.0, abs=1e-6)
    empty, _, _ = centre_targets([], GRID)
    assert not empty.any()


def test_two_boxes_give_two_centres_and_the_larger_size_wins_a_shared_cell():
    heat, _, log_size = centre_targets([(0.0, 0.0, 0.2, 0.2), (0.6, 0.6, 0.9, 0.9)], GRID)
    assert (heat == 1.0).sum() == 2
    shared, _, sizes = centre_targets([(0.3, 0.3, 0.4, 0.4), (0.2, 0.2, 0.5, 0.5)], GRID)
    assert (shared == 1.0).sum() == 1
    assert np.exp(sizes[4, 4]) == pytest.approx((3.6, 3.6))


def _synthetic(n: int, rng: np.random.Generator, grid: int = GRID):
    """Features where a 'fracture' lights channel 0 over its box; normals are noise."""
    features = rng.normal(0, 0.3, size=(n, grid, grid, 8)).astype(np.float32)
    labels, boxes = [], []
    for i in range(n):
        if i % 2 == 0:
            x0, y0 = rng.uniform(0.05, 0.7, size=2)
            w, h = rng.uniform(0.1, 0.25, size=2)
            box = (float(x0), float(y0), float(x0 + w), float(y0 + h))
            c0, r0 = int(box[0] * grid), int(box[1] * grid)
            c1, r1 = int(np.ceil(box[2] * grid)), int(np.ceil(box[3] * grid))
            features[i, r0:r1, c0:c1, 0] += 3.0
            labels.append(1)
            boxes.append([box])
        else:
            labels.append(0)
            boxes.append([])
    return features, labels, boxes


def test_a_short_run_finds_the_lit_boxes():
    rng = np.random.default_rng(0)
    features, labels, boxes = _synthetic(240, rng)
    holdout = list(range(200, 240))
    settings = LocaliserTraining(epochs=6, batch_size=16, learning_rate=3e-3, seed=0)
    fit = train_and_measure(
        lambda ks: features[list(ks)],
        boxes,
        labels,
        holdout,
        settings,
        val_read=lambda ks: features[[200 + 2 * k for k in ks]],
        val_boxes=[boxes[200 + 2 * k] for k in range(20)],
    )
    assert fit.report["val_grid"]["pointing"] >= 0.9
    assert fit.report["val_grid"]["ap50"] > 0.3
    assert 0 < fit.localiser.box_threshold < 1
    assert len(fit.history) == 6 and fit.localiser.input_channels == (8,)


def test_a_two_level_head_learns_from_the_fine_level_on_the_fine_grid():
    rng = np.random.default_rng(1)
    fine, labels, boxes = _synthetic(240, rng, grid=2 * GRID)
    coarse = rng.normal(0, 0.3, size=(240, GRID, GRID, 4)).astype(np.float32)
    holdout = list(range(200, 240))
    settings = LocaliserTraining(epochs=6, batch_size=16, learning_rate=3e-3, seed=0)
    fit = train_and_measure(
        lambda ks: (fine[list(ks)], coarse[list(ks)]),
        boxes,
        labels,
        holdout,
        settings,
        val_read=lambda ks: (fine[[200 + 2 * k for k in ks]], coarse[[200 + 2 * k for k in ks]]),
        val_boxes=[boxes[200 + 2 * k] for k in range(20)],
        input_layers=("fine_layer", "coarse_layer"),
    )
    assert fit.localiser.input_layers == ("fine_layer", "coarse_layer")
    assert fit.localiser.input_channels == (8, 4)
    # Only the fine level carries the answer: the head must read it, on its grid.
    assert fit.report["val_grid"]["pointing"] >= 0.9
    assert fit.report["val_grid"]["ap50"] > 0.3


def test_settings_are_checked():
    with pytest.raises(ValueError, match="positive"):
        LocaliserTraining(epochs=0)
    with pytest.raises(ValueError, match="learning rate"):
        LocaliserTraining(learning_rate=0)


@pytest.mark.slow
def test_a_localiser_fitted_on_phantoms_finds_the_line(tmp_path, shared_weights, monkeypatch):
    """``fracture localiser fit`` end to end: phantom boxes, ImageNet conv4, the stored head."""
    from fracture.cli.main import main
    from fracture.data.phantoms import synthesize_phantoms
    from fracture.model.folder import ModelConfig, ModelFolder, imagenet_reference, save_model
    from fracture.model.localiser import Localiser
    from fracture.model.network import build_classifier

    monkeypatch.setenv("FRACTURE_IMAGENET_WEIGHTS", str(shared_weights))
    monkeypatch.setenv("FRACTURE_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "phantoms"
    synthesize_phantoms(data, 160, size=192, seed=3)
    config = ModelConfig(
        image_size=192,
        fine_tune_from="conv5_block1_out",
        thresholds={"high_sensitivity": 0.5, "high_specificity": 0.7},
        name="phantom-localiser",
        version="1",
    )
    model = build_classifier(config, shared_weights)
    model_dir = tmp_path / "model"
    save_model(model, config, model_dir, reference=imagenet_reference(model, config), card={})
    status = main(
        ["localiser", "fit", str(data), "--model", str(model_dir), "--epochs", "15"]
        + ["--normals-per-epoch", "40"]
    )
    assert status == 0
    folder = ModelFolder(model_dir)
    _, card = folder.read()  # the checksums cover the new head
    head = Localiser.load(folder.localiser_path)
    assert head.input_layers == ("conv3_block4_out", "conv4_block6_out")
    assert head.input_channels == (512, 1024)
    assert card["localiser"]["val_grid"]["pointing"] >= 0.9
    # The calibration was refitted with the new head's peak considered, and says so.
    fit = card["calibration"]
    assert set(fit["auroc_out_of_fold"]) == {"classifier", "with_localiser"}
    kept = fit["auroc_out_of_fold"]["with_localiser"] > fit["auroc_out_of_fold"]["classifier"]
    assert (folder.read()[0].localiser_weight > 0) == kept
