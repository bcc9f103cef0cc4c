"""Model construction, the freeze split, and the model-folder format."""

from __future__ import annotations

import dataclasses
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


# ---------------------------------------------------------------------------
# K classes, and binary folders saved before K classes existed

# What config.json held before ModelConfig had ``classes`` (format 1).
_PRE_CLASSES_KEYS = {
    "format",
    "image_size",
    "fine_tune_from",
    "dropout",
    "prior_shift",
    "temperature",
    "thresholds",
    "operating_point",
    "inference_precision",
    "conv5_dilation",
    "evidence_scale",
    "name",
    "version",
}
ODD_CLASSES = ["type-B", "Grünstick fracture", "no_finding"]


def test_binary_folder_from_before_classes_loads_and_predicts_the_same(
    tmp_path, config, fake_imagenet_weights
):
    from fracture.model.folder import ModelFolder

    model = build_classifier(config, fake_imagenet_weights)
    reference = imagenet_reference(model, config)
    _fine_tune_a_little(model)
    quantise_like_saved(model, config, reference)
    tuned = dataclasses.replace(config, prior_shift=0.4, temperature=1.3)
    save_model(model, tuned, tmp_path / "m", reference=reference, card={"name": "t"})
    folder = ModelFolder(tmp_path / "m")
    # The binary config.json is what the code before K classes wrote, key for key...
    written = json.loads(folder.config_path.read_text())
    assert set(written) == _PRE_CLASSES_KEYS
    # ... and a folder written by that code (no "classes" at all) is the binary model.
    folder.config_path.write_text(json.dumps({k: written[k] for k in _PRE_CLASSES_KEYS}))
    folder.write_card({"name": "t"})
    x = _batch(2)
    before = model(x).numpy()
    loaded = load_model(folder.path, fake_imagenet_weights)
    assert loaded.config.classes is None and loaded.config == tuned
    assert loaded.model.output.shape[-1] == 1
    np.testing.assert_array_equal(loaded.model(x).numpy(), before)
    # Its calibrated probability is the formula the binary Predictor has always applied.
    import keras

    logit_output = loaded.model.get_layer("logit").output
    # As the Predictor does: float64 from the network's float32 logit on.
    raw_logits = keras.Model(loaded.model.input, logit_output)(x).numpy()[:, 0].astype(np.float64)
    expected = 1.0 / (1.0 + np.exp(-((raw_logits - 0.4) / 1.3)))
    probabilities = loaded.config.probabilities(raw_logits)
    np.testing.assert_array_equal(loaded.config.any_fracture(probabilities), expected)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)


def test_k_class_model_saves_and_loads_with_its_classes(tmp_path, fake_imagenet_weights):
    import keras

    config = ModelConfig(
        image_size=TINY_SIZE, fine_tune_from="conv5_block2_out", classes=ODD_CLASSES
    )
    model = build_classifier(config, fake_imagenet_weights)
    assert model.get_layer("logit").units == 3
    reference = imagenet_reference(model, config)
    _fine_tune_a_little(model)
    quantise_like_saved(model, config, reference)
    save_model(model, config, tmp_path / "k", reference=reference, card={"name": "k"})
    assert json.loads((tmp_path / "k" / "config.json").read_text())["classes"] == ODD_CLASSES
    loaded = load_model(tmp_path / "k", fake_imagenet_weights)
    assert loaded.config == config and loaded.config.class_names == ODD_CLASSES
    x = _batch(3, n=4)
    outputs = loaded.model(x).numpy()
    np.testing.assert_array_equal(outputs, model(x).numpy())
    assert outputs.shape == (4, 3)
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, rtol=1e-5)
    # Temperature 1 turns the logit layer into the network's own softmax.
    logits = keras.Model(loaded.model.input, loaded.model.get_layer("logit").output)(x).numpy()
    np.testing.assert_allclose(loaded.config.probabilities(logits), outputs, rtol=1e-5)


def test_a_head_that_does_not_match_the_classes_is_refused(tmp_path, fake_imagenet_weights):
    from fracture.model.folder import ModelFolder

    config = ModelConfig(
        image_size=TINY_SIZE, fine_tune_from="conv5_block2_out", classes=ODD_CLASSES
    )
    model = build_classifier(config, fake_imagenet_weights)
    save_model(model, config, tmp_path / "k", reference=imagenet_reference(model, config))
    folder = ModelFolder(tmp_path / "k")
    folder.rewrite_config(dataclasses.replace(config, classes=[*ODD_CLASSES, "extra"]), {})
    with pytest.raises(ModelLoadError, match="does not match its config"):
        load_model(folder.path, fake_imagenet_weights)


def test_model_config_names_its_classes_and_the_normal_one():
    binary = ModelConfig()
    assert binary.class_names == ["normal", "fracture"] and binary.num_outputs == 1
    assert binary.normal_index == 0 and not binary.is_multiclass
    types = ModelConfig(classes=["comminuted", "Non-fractured", "oblique"], thresholds={})
    assert types.num_outputs == 3 and types.normal_index == 1 and types.is_multiclass
    assert ModelConfig(classes=ODD_CLASSES).normal_index is None
    # From JSON (a list) and from code (a tuple) compare equal.
    assert ModelConfig.from_json(types.to_json()) == types
    assert ModelConfig(classes=("a", "b")).classes == ["a", "b"]


def test_k_class_probabilities_are_a_tempered_softmax_and_any_fracture_skips_normal():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    config = ModelConfig(classes=["oblique", "normal", "transverse"], temperature=2.0)
    p = config.probabilities(logits)
    scaled = np.exp(logits / 2.0)
    np.testing.assert_allclose(p, scaled / scaled.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(config.any_fracture(p), 1.0 - p[:, 1])
    # A warmer temperature flattens, it never reorders.
    assert (p.argmax(axis=1) == logits.argmax(axis=1)).all()
    assert p.max() < ModelConfig(classes=config.classes).probabilities(logits).max()
    no_normal = ModelConfig(classes=ODD_CLASSES, thresholds={})
    assert no_normal.any_fracture(no_normal.probabilities(logits)) is None
    with pytest.raises(ValueError, match="no normal class"):
        _ = no_normal.threshold
    with pytest.raises(ValueError, match="shape"):
        config.probabilities(logits[:, :2])


@pytest.mark.parametrize(
    ("classes", "message"),
    [(["only"], "at least 2"), (["a", "a", "b"], "repeated: a"), (["a", " "], "blank")],
)
def test_bad_class_lists_are_clear_errors(classes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(classes=classes)


def test_prior_shift_is_binary_only():
    with pytest.raises(ValueError, match="binary model only"):
        ModelConfig(classes=["a", "b", "c"], prior_shift=0.3)


def test_checksums_are_remembered_but_follow_a_rewritten_file_of_the_same_size(tmp_path):
    """The served folder is verified every few seconds: hashes are cached by change time."""
    import hashlib

    from fracture.model.folder import CONFIG_FILE, WEIGHTS_FILE, file_checksums

    (tmp_path / CONFIG_FILE).write_text('{"a": 1}')
    (tmp_path / WEIGHTS_FILE).write_bytes(b"x" * 1000)
    first = file_checksums(tmp_path)
    assert first[CONFIG_FILE] == hashlib.sha256(b'{"a": 1}').hexdigest()
    assert file_checksums(tmp_path) == first
    (tmp_path / CONFIG_FILE).write_text('{"a": 2}')  # same size, new content
    second = file_checksums(tmp_path)
    assert second[CONFIG_FILE] == hashlib.sha256(b'{"a": 2}').hexdigest()
    assert second[WEIGHTS_FILE] == first[WEIGHTS_FILE]
    (tmp_path / WEIGHTS_FILE).unlink()
    assert WEIGHTS_FILE not in file_checksums(tmp_path)


class _Head:
    """A stand-in head file: writes its bytes when the folder saves it."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def save(self, path) -> None:
        from pathlib import Path

        Path(path).write_bytes(self.data)


def test_write_model_writes_heads_before_the_card_that_covers_them(
    tmp_path, config, fake_imagenet_weights
):
    import hashlib

    from fracture.model.folder import OOD_FILE, REGION_FILE, ModelFolder, read_config

    model = build_classifier(config, fake_imagenet_weights)
    reference = imagenet_reference(model, config)
    folder = ModelFolder(tmp_path / "m")
    card = folder.write_model(
        model,
        config,
        reference=reference,
        card={"name": "t", "version": "1"},
        report={"auroc": 0.5},
        heads={OOD_FILE: _Head(b"gate"), REGION_FILE: _Head(b"regions")},
    )
    assert card["checksums"][OOD_FILE] == hashlib.sha256(b"gate").hexdigest()
    assert card["checksums"][REGION_FILE] == hashlib.sha256(b"regions").hexdigest()
    assert read_config(folder.path)[1]["checksums"] == card["checksums"]
    assert folder.read_evaluation() == {"auroc": 0.5}
    assert (folder.card_markdown() or "").startswith("# t, version 1")
    assert load_model(folder.path, fake_imagenet_weights).config == config


def test_write_model_refuses_a_head_the_checksums_would_not_cover(
    tmp_path, config, fake_imagenet_weights
):
    from fracture.model.folder import ModelFolder

    model = build_classifier(config, fake_imagenet_weights)
    folder = ModelFolder(tmp_path / "m")
    with pytest.raises(ValueError, match="HEAD_FILES"):
        folder.write_model(
            model,
            config,
            reference=imagenet_reference(model, config),
            card={"name": "t"},
            heads={"extra.npz": _Head(b"x")},
        )
    assert not folder.has_config()
