"""The localisation head's file format (fracture.model.localiser): one level or two, checked on load."""

from __future__ import annotations

import numpy as np
import pytest

from fracture.io.files import atomic_write_npz
from fracture.model.localiser import (
    INPUT_LAYER,
    PYRAMID_LAYERS,
    Localiser,
    LocaliserError,
    build_localiser_head,
)


@pytest.fixture(scope="module")
def pyramid_head():
    import keras

    keras.utils.set_random_seed(3)
    return build_localiser_head((16, 32))


def _levels(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(2, 8, 8, 16)), rng.normal(size=(2, 4, 4, 32))]


def test_the_two_level_head_answers_on_the_fine_grid_and_survives_a_round_trip(
    pyramid_head, tmp_path
):
    stored = Localiser.from_head(pyramid_head, input_layers=PYRAMID_LAYERS, box_threshold=0.4)
    assert stored.input_channels == (16, 32)
    stored.save(tmp_path / "localiser.npz")
    loaded = Localiser.load(tmp_path / "localiser.npz")
    assert loaded.input_layers == PYRAMID_LAYERS and loaded.box_threshold == 0.4
    features = [f.astype(np.float32) for f in _levels(0)]
    before = np.asarray(pyramid_head(features))
    assert before.shape == (2, 8, 8, 5)
    np.testing.assert_allclose(np.asarray(loaded.head()(features)), before, rtol=1e-5, atol=1e-5)


def test_a_format_1_file_of_one_layer_is_still_read(tmp_path):
    import keras

    keras.utils.set_random_seed(4)
    head = build_localiser_head(32)
    arrays = {f"w{i}": w for i, w in enumerate(head.get_weights())}
    arrays.update(
        format=np.array(1, np.int64),
        input_layer=np.array(INPUT_LAYER, dtype=np.str_),
        box_threshold=np.array(0.3),
        max_boxes=np.array(5, np.int64),
    )
    atomic_write_npz(tmp_path / "old.npz", arrays)
    loaded = Localiser.load(tmp_path / "old.npz")
    assert loaded.input_layers == (INPUT_LAYER,) and loaded.input_channels == (32,)
    features = _levels(1)[1].astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(loaded.head()(features)), np.asarray(head(features)), rtol=1e-5, atol=1e-5
    )


def test_weights_that_do_not_fit_the_layers_fail_loudly(pyramid_head):
    weights = [np.asarray(w) for w in pyramid_head.get_weights()]
    with pytest.raises(LocaliserError, match="10 weight arrays"):
        Localiser(weights=weights[:8], input_layers=PYRAMID_LAYERS)
    with pytest.raises(LocaliserError, match="8 weight arrays"):
        Localiser(weights=weights, input_layers=(INPUT_LAYER,))
    with pytest.raises(LocaliserError, match="one or two"):
        Localiser(weights=weights, input_layers=("a", "b", "c"))
    with pytest.raises(LocaliserError, match="one or two"):
        build_localiser_head((8, 8, 8))


def test_the_localiser_weight_is_binary_only_non_negative_and_stored_only_when_set():
    from fracture.model.config import ModelConfig

    assert "localiser_weight" not in ModelConfig().to_json()
    config = ModelConfig(localiser_weight=0.25)
    assert ModelConfig.from_json(config.to_json()).localiser_weight == 0.25
    with pytest.raises(ValueError, match="localiser_weight"):
        ModelConfig(localiser_weight=-0.1)
    with pytest.raises(ValueError, match="binary"):
        ModelConfig(classes=["normal", "a", "b"], localiser_weight=0.1)


def test_localiser_file_round_trip_and_checks(tmp_path):
    rng = np.random.default_rng(0)
    shapes = [(1, 1, 8, 256), (256,), (3, 3, 256, 128), (128,), (3, 3, 128, 128), (128,)]
    shapes += [(1, 1, 128, 5), (5,)]
    weights = [rng.normal(size=s).astype(np.float32) for s in shapes]
    original = Localiser(weights, box_threshold=0.42, trained_on="a test")
    loaded = Localiser.load(original.save(tmp_path / "localiser.npz"))
    assert loaded.box_threshold == pytest.approx(0.42) and loaded.trained_on == "a test"
    assert all(np.array_equal(a, b) for a, b in zip(original.weights, loaded.weights))
    assert loaded.input_channels == (8,)
    with pytest.raises(LocaliserError, match="threshold"):
        Localiser(weights, box_threshold=1.5)
    with pytest.raises(LocaliserError, match="weight arrays"):
        Localiser(weights[:-1])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(LocaliserError, match="not a readable localisation head"):
        Localiser.load(tmp_path / "bad.npz")
