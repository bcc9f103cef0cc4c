"""Model construction, the freeze split, and the model-folder format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fracture.inference.preprocess import letterbox, unletterbox
from fracture.model.folder import (
    ModelConfig,
    ModelLoadError,
    imagenet_reference,
    load_model,
    quantise_like_saved,
    save_model,
)
from fracture.model.network import CAM_LAYER, build_classifier, set_trainable, split_at

from conftest import TINY_SIZE


@pytest.fixture(scope="module")
def config() -> ModelConfig:
    return ModelConfig(image_size=TINY_SIZE, fine_tune_from="conv5_block2_out")


@pytest.fixture(scope="module")
def model(config, fake_imagenet_weights):
    return build_classifier(config, fake_imagenet_weights)


def _batch(seed: int = 0, n: int = 3) -> np.ndarray:
    return (
        np.random.default_rng(seed).uniform(0, 255, (n, TINY_SIZE, TINY_SIZE, 3)).astype("float32")
    )


def test_model_is_flat_and_exposes_the_cam_layer(model):
    import keras

    assert model.get_layer(CAM_LAYER) is not None
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert model.output.shape[-1] == 1


def test_set_trainable_freezes_stem_and_batchnorm(model, config):
    import keras

    set_trainable(model, config.fine_tune_from)
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert "conv5_block3_1_conv" in trainable and "logit" in trainable
    assert "conv5_block2_1_conv" not in trainable  # at or before the freeze point
    assert not any(
        isinstance(model.get_layer(name), keras.layers.BatchNormalization) for name in trainable
    )
    set_trainable(model, None)
    assert {l.name for l in model.layers if l.trainable and l.weights} == {"logit"}


def test_split_halves_compose_to_the_full_model(model, config):
    stem, tail = split_at(model, config.fine_tune_from)
    x = _batch()
    logits = tail(stem(x)).numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_unknown_freeze_layer_is_a_clear_error(model):
    with pytest.raises(ValueError, match="not in the model"):
        set_trainable(model, "conv9_block1_out")


def _fine_tune_a_little(model):
    rng = np.random.default_rng(0)
    for name in ("conv5_block3_2_conv", "logit"):
        layer = model.get_layer(name)
        layer.set_weights(
            [w + rng.normal(0, 0.01, w.shape).astype("float32") for w in layer.get_weights()]
        )


def test_save_load_round_trip_gives_identical_predictions(tmp_path, config, fake_imagenet_weights):
    model = build_classifier(config, fake_imagenet_weights)
    reference = imagenet_reference(model, config)
    _fine_tune_a_little(model)
    quantise_like_saved(model, config, reference)
    save_model(model, config, tmp_path / "m", reference=reference, card={"name": "t"})
    loaded = load_model(tmp_path / "m", fake_imagenet_weights)
    x = _batch(1)
    np.testing.assert_array_equal(loaded.model(x).numpy(), model(x).numpy())
    assert loaded.config == config
    # Only fine-tuned layers are stored, so the folder is far smaller than ResNet-50.
    assert (tmp_path / "m" / "weights.npz").stat().st_size < 15e6


def test_corrupted_model_folder_is_refused(tmp_path, tiny_model_dir, fake_imagenet_weights):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    data = bytearray((broken / "weights.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "weights.npz").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="corrupt or half-written"):
        load_model(broken, fake_imagenet_weights)


def test_model_folder_without_checksums_is_refused(tmp_path, tiny_model_dir, fake_imagenet_weights):
    import shutil

    copy = tmp_path / "nochecksum"
    shutil.copytree(tiny_model_dir, copy)
    card = json.loads((copy / "model_card.json").read_text())
    card.pop("checksums")
    (copy / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="checksums"):
        load_model(copy, fake_imagenet_weights)


def test_missing_model_says_how_to_get_one(tmp_path, fake_imagenet_weights):
    with pytest.raises(ModelLoadError, match="python -m fracture train"):
        load_model(tmp_path / "nothing", fake_imagenet_weights)


@pytest.mark.parametrize("shape", [(100, 50), (50, 100), (64, 64), (30, 200)])
def test_letterbox_keeps_aspect_ratio_and_maps_back(shape):
    height, width = shape
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = 200
    square, geometry = letterbox(image, 64)
    assert square.shape == (64, 64, 3) and square.dtype == np.float32
    assert abs(geometry.width / geometry.height) == pytest.approx(width / height, rel=0.1)
    # Padding is black; content is where the geometry says.
    assert square[geometry.top : geometry.top + geometry.height, geometry.left].max() > 100
    back = unletterbox(square[..., 0], geometry)
    assert back.shape == (height, width)
    assert back[:, : width // 2 - 2].mean() > 150 and back[:, width // 2 + 2 :].mean() < 50
