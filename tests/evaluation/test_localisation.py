"""Box supervision, the honest heat-map display, calibration and stable operating points."""

from __future__ import annotations

import numpy as np
import pytest

from fracture.data.augment import augment_radiograph, augment_with_boxes
from fracture.evaluation.localisation import pointing_game
from fracture.evaluation.metrics import choose_thresholds, expected_calibration_error
from fracture.evaluation.operating_points import (
    fit_platt,
    out_of_fold_probabilities,
    platt_probability,
    stable_thresholds,
    threshold_intervals,
)
from fracture.inference.gradcam import box_style, draw_region, evidence_heat, strongest_region
from fracture.training.losses import box_alignment_loss, box_masks

# ---------------------------------------------------------------------------
# Augmentation moves boxes with the image


def _image_with_line(height: int = 120, width: int = 90) -> tuple[np.ndarray, tuple]:
    """A dark image with one bright bar (the "fracture line") and the box around it."""
    image = np.full((height, width, 3), 20, np.uint8)
    image[50:58, 30:60] = 250
    box = (30 / width, 50 / height, 60 / width, 58 / height)
    return image, box


@pytest.mark.parametrize("seed", range(12))
def test_augmented_box_still_covers_the_fracture_line(seed: int) -> None:
    image, box = _image_with_line()
    out, (moved,) = augment_with_boxes(image, (box,), np.random.default_rng(seed))
    height, width = out.shape[:2]
    bright = out[..., 0] > 150
    ys, xs = np.nonzero(bright)
    assert ys.size > 0
    x0, y0, x1, y1 = moved[0] * width, moved[1] * height, moved[2] * width, moved[3] * height
    inside = (xs >= x0 - 1.5) & (xs <= x1 + 1.5) & (ys >= y0 - 1.5) & (ys <= y1 + 1.5)
    # Every bright pixel of the moved line lies in the moved box (1.5 px for interpolation) ...
    assert inside.mean() > 0.98
    # ... and the box is not a loose frame around everything: at most 3x the area
    # after a 10 degree rotation of a thin bar.
    assert (x1 - x0) * (y1 - y0) < 3.0 * (np.ptp(xs) + 1) * (np.ptp(ys) + 1)


def test_augment_with_boxes_draws_the_same_image_as_augment_radiograph() -> None:
    image, box = _image_with_line()
    with_boxes, _ = augment_with_boxes(image, (box,), np.random.default_rng(7))
    assert np.array_equal(with_boxes, augment_radiograph(image, np.random.default_rng(7)))


def test_flip_mirrors_the_box() -> None:
    image, box = _image_with_line()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        if rng.random() < 0.5:  # the first draw decides the flip
            _, (moved,) = augment_with_boxes(image, (box,), np.random.default_rng(seed))
            centre = (moved[0] + moved[2]) / 2
            assert abs(centre - (1 - (box[0] + box[2]) / 2)) < 0.08
            return
    pytest.fail("no flipped draw in 40 seeds")


def test_box_masks_mark_every_cell_a_box_touches() -> None:
    masks = box_masks([[(0.0, 0.0, 0.26, 0.1)], []], (4, 4))
    assert masks.shape == (2, 4, 4)
    assert masks[0, 0].tolist() == [1, 1, 0, 0] and masks[0, 1:].sum() == 0
    assert masks[1].sum() == 0


def _box_loss(maps: np.ndarray, label: float, **weights: float) -> np.ndarray:
    """The box loss per image of (B, 4, 4) maps, whose box is the top-left cell."""
    mask = np.zeros(maps.shape, np.float32)
    mask[:, 0, 0] = 1.0
    y_true = np.stack([mask, np.full(maps.shape, label, np.float32)], axis=-1)
    return np.asarray(box_alignment_loss(**weights)(y_true, maps.astype(np.float32)))


def test_mass_term_charges_positive_evidence_outside_the_box_only() -> None:
    # Both maps peak in the box, so the softmax (peak) term barely tells them
    # apart; the second one also spreads positive evidence elsewhere.
    focused = np.full((4, 4), -4.0)
    focused[0, 0] = 6.0
    spread = np.full((4, 4), 1.0)
    spread[0, 0] = 6.0
    maps = np.stack([focused, spread])
    peak_only = _box_loss(maps, 1.0, normal_weight=0.0)
    with_mass = _box_loss(maps, 1.0, normal_weight=0.0, mass_weight=1.0)
    # Mass share: 1.0 for the focused map, 6/21 for the spread one.
    np.testing.assert_allclose(with_mass - peak_only, [0.0, -np.log(6 / 21)], atol=1e-3)
    # A normal image has no boxes: the mass term does not apply to it.
    normal = _box_loss(maps, 0.0, normal_weight=0.0, mass_weight=1.0)
    np.testing.assert_allclose(normal, 0.0, atol=1e-6)


# ---------------------------------------------------------------------------
# The heat map's intensity carries meaning


def test_absolute_scale_keeps_a_weak_map_faint() -> None:
    strong = np.zeros((24, 24), np.float32)
    strong[5, 7] = 8.0
    weak = strong * 0.05
    assert evidence_heat(strong, 4.0).max() == 1.0
    assert evidence_heat(weak, 4.0).max() == pytest.approx(0.1)
    # Scaling each map to its own peak (the old display) would paint both the same.
    assert evidence_heat(weak, None).max() == evidence_heat(strong, None).max() == 1.0
    with pytest.raises(ValueError):
        evidence_heat(strong, 0.0)


def test_strongest_region_boxes_the_peak_and_ignores_faint_maps() -> None:
    heat = np.zeros((100, 200), np.float32)
    heat[40:60, 120:150] = 0.9
    heat[10:20, 10:20] = 0.3  # a weaker, separate blob is not part of the region
    box = strongest_region(heat)
    assert box == pytest.approx((0.6, 0.4, 0.75, 0.6))
    assert strongest_region(heat * 0.05) is None


def test_box_style_follows_the_operating_points() -> None:
    thresholds = {"high_sensitivity": 0.2, "high_specificity": 0.6}
    assert box_style(0.1, thresholds) is None
    assert box_style(0.3, thresholds) == "dotted"
    assert box_style(0.7, thresholds) == "solid"
    assert box_style(None, thresholds) is None


def test_drawn_region_changes_only_the_outline() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    solid = draw_region(image, (0.2, 0.2, 0.8, 0.8), "solid")
    dotted = draw_region(image, (0.2, 0.2, 0.8, 0.8), "dotted")
    assert solid[50, 50].sum() == 0 and solid[20, 50].sum() > 0
    # A dotted outline has gaps: fewer lit pixels than the solid one.
    assert 0 < (dotted > 0).sum() < (solid > 0).sum()
    assert draw_region(image, None, "solid") is image


# ---------------------------------------------------------------------------
# Localisation figures on constructed maps


def test_localisation_figures_on_a_constructed_map() -> None:
    from fracture.evaluation.localisation import (
        box_iou,
        energy_inside,
        image_localisation,
        summarise_localisation,
    )

    heat = np.zeros((100, 100), np.float32)
    heat[10:20, 10:20] = 1.0  # peak, inside the true box
    heat[70:80, 70:80] = 0.5  # a weaker blob outside it
    true_box = [(0.1, 0.1, 0.2, 0.2)]
    assert energy_inside(heat, true_box) == pytest.approx(100 / 150)
    assert box_iou((0.0, 0.0, 0.2, 0.2), (0.1, 0.1, 0.3, 0.3)) == pytest.approx(0.01 / 0.07)
    hit = image_localisation(heat, true_box, (0.1, 0.1, 0.2, 0.2))
    assert hit["hit"] and hit["hit_tolerant"] and hit["drawn_hit"]
    # Just outside the box: a miss at tolerance 0, a hit at 3% of the side.
    near = image_localisation(heat, [(0.12, 0.12, 0.2, 0.3)], None)
    assert not near["hit"] and near["hit_tolerant"] and not near["drawn_hit"]
    summary = summarise_localisation([hit, near])
    assert summary["pointing_game"]["rate"] == 0.5
    assert summary["pointing_game_tolerant"]["rate"] == 1.0
    low, high = summary["pointing_game"]["ci"]
    assert 0 < low < 0.5 < high < 1
    assert summary["drawn_boxes"] == 1


# ---------------------------------------------------------------------------
# Calibration and thresholds on constructed scores with a known answer


def _logistic_scores(n: int, slope: float, intercept: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(slope * z + intercept)))).astype(int)
    return z, y


def test_platt_recovers_a_known_slope_and_bias() -> None:
    # Truth: p = sigmoid(0.5 z - 1.2), i.e. temperature 2, shift 2.4.
    z, y = _logistic_scores(20000, 0.5, -1.2)
    temperature, shift = fit_platt(z, y)
    assert temperature == pytest.approx(2.0, rel=0.08)
    assert shift == pytest.approx(2.4, abs=0.2)


def test_platt_removes_a_bias_that_temperature_scaling_leaves() -> None:
    from fracture.evaluation.metrics import calibrated_probability, fit_temperature

    z, y = _logistic_scores(4000, 1.0, -1.5, seed=1)
    ece_temperature = expected_calibration_error(
        y, calibrated_probability(z, fit_temperature(z, y))
    )[0]
    ece_platt = expected_calibration_error(y, platt_probability(z, *fit_platt(z, y)))[0]
    assert ece_platt < 0.02 < ece_temperature


def test_out_of_fold_probabilities_never_see_their_own_label() -> None:
    z, y = _logistic_scores(400, 1.0, 0.0, seed=2)
    # Pure noise logits: in-sample Platt would still fit; out of fold, probabilities
    # stay near the prevalence and cannot separate the classes.
    noise = np.random.default_rng(3).normal(size=z.size)
    oof = out_of_fold_probabilities(noise, y)
    assert abs(oof.mean() - y.mean()) < 0.05
    assert np.ptp(oof) < 0.3


def test_stable_thresholds_vary_less_than_single_picks() -> None:
    def one_split(seed: int):
        rng = np.random.default_rng(seed)
        y = np.r_[np.ones(74, int), np.zeros(334, int)]
        p = np.where(y == 1, rng.beta(5, 2, y.size), rng.beta(2, 5, y.size))
        return p, y

    single, bagged = [], []
    for seed in range(12):
        p, y = one_split(seed)
        single.append(choose_thresholds(p, y)["high_sensitivity"])
        bagged.append(
            stable_thresholds(p, y, choose_thresholds, n_bootstrap=200, seed=seed)[
                "high_sensitivity"
            ]
        )
    assert np.std(bagged) < np.std(single)
    # Both aim at the same point: the population threshold with 90% sensitivity.
    from scipy.stats import beta

    target = beta(5, 2).ppf(0.10)
    assert abs(np.mean(bagged) - target) < 0.05


def test_separable_scores_keep_the_high_sensitivity_threshold_at_or_below_the_other() -> None:
    """A gap between the classes must not put the 'sensitive' threshold above the 'specific' one."""
    y = np.r_[np.ones(40, int), np.zeros(160, int)]
    p = np.r_[np.linspace(0.9, 1.0, 40), np.linspace(0.0, 0.1, 160)]
    raw = choose_thresholds(p, y)
    assert raw["high_sensitivity"] > raw["high_specificity"]  # the inversion the fix removes
    stable = stable_thresholds(p, y, choose_thresholds, n_bootstrap=100, seed=0)
    # Lowered to the specificity threshold, and it still finds every fracture.
    assert stable["high_sensitivity"] == stable["high_specificity"]
    assert (p[y == 1] >= stable["high_sensitivity"]).all()


def test_threshold_intervals_contain_the_point_estimate() -> None:
    p = np.r_[np.linspace(0.3, 1, 50), np.linspace(0, 0.6, 200)]
    y = np.r_[np.ones(50, int), np.zeros(200, int)]
    result = threshold_intervals(p, y, 0.5)
    assert result["sensitivity"] == pytest.approx(np.mean(p[:50] >= 0.5))
    assert result["specificity"] == pytest.approx(np.mean(p[50:] < 0.5))
    for name in ("sensitivity", "specificity"):
        low, high = result[f"{name}_ci"]
        assert low <= result[name] <= high and high - low > 0


# ---------------------------------------------------------------------------
# The out-of-distribution gate does not flag fractures


def _two_class_features(n_normal: int, n_fractured: int, seed: int):
    """Normals around one centre; fractures around another, with a heavier spread."""
    rng = np.random.default_rng(seed)
    normal = rng.normal(0, 1, (n_normal, 16))
    fractured = rng.normal(0, 1.6, (n_fractured, 16)) + np.r_[7.0, np.zeros(15)]
    features = np.vstack([normal, fractured]).astype(np.float32)
    labels = np.r_[np.zeros(n_normal, int), np.ones(n_fractured, int)]
    return features, labels


def test_class_conditional_gate_keeps_false_alarms_low_in_each_class(tmp_path) -> None:
    from fracture.inference.ood import OODGate, fit_ood_gate

    train, train_y = _two_class_features(2000, 400, seed=0)
    heldout, heldout_y = _two_class_features(1000, 200, seed=1)
    fresh, fresh_y = _two_class_features(4000, 800, seed=2)
    alpha = 0.02
    pooled = fit_ood_gate(train, heldout, false_alarm_rate=alpha, n_components=8)
    per_class = fit_ood_gate(
        train,
        heldout,
        false_alarm_rate=alpha,
        n_components=8,
        train_labels=train_y,
        heldout_labels=heldout_y,
    )

    def false_alarms(gate, label):
        return float(np.mean(~gate.is_in_distribution(fresh[fresh_y == label])))

    # One Gaussian puts the minority class in its tail: most alarms fall on it.
    assert false_alarms(pooled, 1) > 2 * alpha
    # One mean per class: each class keeps about the stated rate.
    assert false_alarms(per_class, 0) < 2 * alpha and false_alarms(per_class, 1) < 2 * alpha
    # Inputs far from both classes are still caught.
    strangers = np.random.default_rng(3).normal(0, 1, (50, 16)).astype(np.float32) + 30
    assert not per_class.is_in_distribution(strangers).any()
    # Saved and loaded, it scores the same.
    per_class.save(tmp_path / "gate.npz")
    again = OODGate.load(tmp_path / "gate.npz")
    np.testing.assert_array_equal(again.score(fresh[:20]), per_class.score(fresh[:20]))
    assert again.class_means is not None and again.class_means.shape == (2, 16)


def test_a_gate_of_format_1_still_loads_and_scores_as_before(tmp_path) -> None:
    from fracture.inference.ood import OODGate, fit_ood_gate

    train, _ = _two_class_features(300, 60, seed=4)
    gate = fit_ood_gate(train, train[:50], n_components=4)
    arrays = gate.to_arrays()
    arrays["format"] = np.array(1, np.int64)
    np.savez(tmp_path / "old.npz", **arrays)
    old = OODGate.load(tmp_path / "old.npz")
    assert old.class_means is None
    np.testing.assert_array_equal(old.score(train[:10]), gate.score(train[:10]))


# ---------------------------------------------------------------------------
# End to end on phantoms: the boxes teach the heat map where fractures are


def _pointing_on_val(model_dir, data) -> tuple[float, list]:
    from fracture.data.layouts import load_dataset
    from fracture.inference.predictor import load_predictor

    predictor = load_predictor(model_dir, batch_size=8)
    records = [r for r in load_dataset(data).split("val")]
    predictions = predictor.predict([r.path for r in records], with_cam=True)
    boxed = [(p, r) for p, r in zip(predictions, records) if r.label == 1 and r.boxes]
    score = pointing_game([p.evidence_image() for p, _ in boxed], [r.boxes for _, r in boxed])
    return float(score["score"]), list(zip(predictions, records))


@pytest.mark.slow
def test_box_supervision_beats_the_unsupervised_run_on_phantoms(tmp_path) -> None:
    from fracture.config import Settings
    from fracture.data.phantoms import synthesize_phantoms
    from fracture.model.imagenet import WeightsError, resolve_imagenet_weights
    from fracture.training.config import TrainConfig
    from fracture.training.trainer import train

    try:
        resolve_imagenet_weights(allow_download=False)
    except WeightsError as error:
        pytest.skip(f"ImageNet weights unavailable offline: {error}")
    data = tmp_path / "phantoms"
    synthesize_phantoms(data, 160, size=192, seed=11)
    settings = Settings(cache_dir=tmp_path / "cache")
    scores = {}
    for name, weight in (("boxes", 2.0), ("no-boxes", 0.0)):
        config = TrainConfig(
            image_size=128,
            fine_tune_from="conv5_block1_out",
            conv5_dilation=2,
            head_epochs=1,
            epochs=4,
            batch_size=16,
            views=2,
            seed=0,
            patience=9,
            box_weight=weight,
        )
        model_dir = train(data, tmp_path / name, config, settings=settings)
        scores[name], results = _pointing_on_val(model_dir, data)
    assert scores["boxes"] >= scores["no-boxes"] + 0.2, scores

    # The honest display: a normal phantom's overlay is fainter than a fractured one's.
    heat = {0: [], 1: []}
    for prediction, record in results:
        heat[record.label].append(float(prediction.heatmap.mean()))
    assert np.median(heat[0]) < np.median(heat[1]), heat


# --------------------------------------------------------------------------
# Pointing game
# --------------------------------------------------------------------------


def _peaked(height: int, width: int, row: int, col: int) -> np.ndarray:
    cam = np.zeros((height, width))
    cam[row, col] = 1.0
    return cam


def test_pointing_game_hits_misses_and_skips():
    cam = _peaked(10, 10, row=2, col=7)  # peak centre (x, y) = (0.75, 0.25)
    result = pointing_game(
        [cam, cam, None, cam],
        [
            [(0.7, 0.2, 0.8, 0.3)],  # hit
            [(0.0, 0.0, 0.5, 0.5), (0.0, 0.6, 1.0, 1.0)],  # miss: peak outside both
            [],  # no fracture box: not counted, no map needed
            [(0.1, 0.1, 0.2, 0.2), (0.5, 0.0, 0.75, 0.25)],  # hit on the inclusive corner
        ],
    )
    assert result == {"hits": 2, "n": 3, "score": 2 / 3, "tolerance": 0.0}


def test_pointing_game_uses_row_as_y_and_col_as_x():
    cam = _peaked(4, 8, row=1, col=6)  # (x, y) = (6.5 / 8, 1.5 / 4) = (0.8125, 0.375)
    assert pointing_game([cam], [[(0.8, 0.35, 0.85, 0.4)]])["hits"] == 1
    assert pointing_game([cam], [[(0.35, 0.8, 0.4, 0.85)]])["hits"] == 0


def test_pointing_game_tolerance_constant_maps_and_empty():
    cam = _peaked(10, 10, row=2, col=7)
    box = [[(0.8, 0.2, 0.9, 0.3)]]  # 0.05 right of the peak
    assert pointing_game([cam], box)["hits"] == 0
    assert pointing_game([cam], box, tolerance=0.06)["hits"] == 1
    # A flat map points nowhere, even at a box that covers the whole image.
    assert pointing_game([np.zeros((5, 5))], [[(0.0, 0.0, 1.0, 1.0)]])["hits"] == 0
    assert pointing_game([cam], [[]]) == {"hits": 0, "n": 0, "score": None, "tolerance": 0.0}


@pytest.mark.parametrize(
    ("cams", "boxes", "message"),
    [
        ([np.full((3, 3), np.nan)], [[(0, 0, 1, 1)]], "NaN"),
        ([np.zeros((3, 3, 3))], [[(0, 0, 1, 1)]], "2-D"),
        ([None], [[(0, 0, 1, 1)]], "None"),
        ([np.eye(3)], [[(0.5, 0, 0.2, 1)]], "x1 < x0"),
        ([np.eye(3)], [[(0, 0, 10, 10)]], "normalised"),
        ([np.eye(3)], [(0, 0, 1, 1)], "sequence of"),
        ([np.eye(3), np.eye(3)], [[(0, 0, 1, 1)]], "same length"),
    ],
)
def test_pointing_game_rejects_bad_input(cams, boxes, message):
    with pytest.raises(ValueError, match=message):
        pointing_game(cams, boxes)
