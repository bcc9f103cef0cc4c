"""Grad-CAM: shape, range, agreement with a plain implementation, and one forward pass."""

from __future__ import annotations

import numpy as np
import pytest

from fracture.inference.engine import InferenceEngine, inference_network
from fracture.inference.gradcam import heatmap_to_image, overlay_heatmap
from fracture.inference.preprocess import letterbox
from fracture.model.folder import ModelConfig
from fracture.model.network import CAM_LAYER, build_classifier, fold_batchnorm

from conftest import TINY_SIZE


def _images(n: int, seed: int = 0) -> np.ndarray:
    return (
        np.random.default_rng(seed).uniform(0, 255, (n, TINY_SIZE, TINY_SIZE, 3)).astype("float32")
    )


def _reference_cam(model, image: np.ndarray) -> np.ndarray:
    """Grad-CAM written out eagerly, one image at a time, as in Selvaraju et al. 2017."""
    import keras
    import tensorflow as tf

    graph = keras.Model(
        model.input, [model.get_layer(CAM_LAYER).output, model.get_layer("logit").output]
    )
    with tf.GradientTape() as tape:
        features, logit = graph(image[None], training=False)
        score = logit[0, 0]
    grads = tape.gradient(score, features)[0].numpy()
    features = features[0].numpy()
    # Gradients summed over the cells: the map is in logit units (see gradcam's docstring).
    return np.maximum((features * grads.sum(axis=(0, 1))).sum(-1), 0)


def test_cams_are_the_class_activation_map_in_logit_units(tiny_loaded):
    import keras

    engine = InferenceEngine(tiny_loaded.model, batch_size=4)
    images = _images(3)
    out = engine.run(images, with_cam=True)
    assert out.cams.shape == (3, 2, 2)  # 64 px / 32
    assert out.pooled.shape == (3, 2048)
    # For GAP + one dense unit, Grad-CAM is relu(w . A) (Zhou et al. 2016), not rescaled.
    features = keras.Model(tiny_loaded.model.input, tiny_loaded.model.get_layer(CAM_LAYER).output)(
        images
    )
    kernel = tiny_loaded.model.get_layer("logit").get_weights()[0][:, 0]
    expected = np.maximum(np.asarray(features) @ kernel, 0)
    np.testing.assert_allclose(out.cams, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_engine_pools_the_early_layer_the_ood_gate_reads(tiny_loaded):
    """conv4_block6_out averaged over its grid, with or without the heat map, beside the head's."""
    import keras

    from fracture.model.network import EARLY_FEATURE_LAYER, POOL_LAYER

    engine = InferenceEngine(tiny_loaded.model, batch_size=4)
    images = _images(3)
    stage4 = keras.Model(
        tiny_loaded.model.input, tiny_loaded.model.get_layer(EARLY_FEATURE_LAYER).output
    )
    expected = np.asarray(stage4(images)).mean(axis=(1, 2))
    for with_cam in (True, False):
        out = engine.run(images, with_cam=with_cam)
        assert out.early_pooled.shape == (3, 1024)
        np.testing.assert_allclose(out.early_pooled, expected, rtol=1e-3, atol=1e-4)
        features = out.gate_features()
        assert set(features) == {POOL_LAYER, EARLY_FEATURE_LAYER}
        assert features[POOL_LAYER] is out.pooled


def test_batched_cam_matches_per_image_reference(tiny_loaded):
    engine = InferenceEngine(tiny_loaded.model, batch_size=4)
    images = _images(3, seed=5)
    out = engine.run(images, with_cam=True)
    for i in range(3):
        np.testing.assert_allclose(
            out.cams[i], _reference_cam(tiny_loaded.model, images[i]), atol=1e-4
        )


def test_cam_path_runs_the_network_forward_once(tiny_loaded):
    """The probability and the CAM come from the same forward pass, not two."""
    engine = InferenceEngine(tiny_loaded.model, batch_size=2)
    layer = inference_network(tiny_loaded.model).get_layer("conv1_conv")  # what the engine runs
    calls = []
    original = layer.call

    def counting_call(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    layer.call = counting_call
    try:
        out = engine.run(_images(2), with_cam=True)  # traces the compiled function once
    finally:
        layer.call = original
    assert len(calls) == 1
    plain = engine.run(_images(2), with_cam=False)
    np.testing.assert_allclose(out.logits, plain.logits, rtol=1e-5, atol=1e-6)


def test_padding_the_last_batch_does_not_change_results(tiny_loaded):
    engine = InferenceEngine(tiny_loaded.model, batch_size=4)
    images = _images(4, seed=9)
    full = engine.run(images, with_cam=True)
    partial = engine.run(images[:1], with_cam=True)
    np.testing.assert_allclose(partial.logits, full.logits[:1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(partial.cams, full.cams[:1], atol=1e-5)


def test_heatmap_returns_to_original_resolution_and_overlays():
    image = np.full((90, 60, 3), 80, np.uint8)
    _, geometry = letterbox(image, TINY_SIZE)
    cam = np.zeros((2, 2), np.float32)
    cam[0, 0] = 1.0
    heat = heatmap_to_image(cam, geometry)
    assert heat.shape == (90, 60) and 0 <= heat.min() and heat.max() <= 1
    assert heat[:20, :15].mean() > heat[-20:, -15:].mean()
    overlay = overlay_heatmap(image, heat, alpha=0.5)
    assert overlay.shape == image.shape and overlay.dtype == np.uint8
    assert not np.array_equal(overlay, image)
    np.testing.assert_array_equal(overlay_heatmap(image, heat, alpha=0.0), image)
    with pytest.raises(ValueError):
        overlay_heatmap(image, heat, alpha=1.5)


def test_missing_target_layer_warns_loudly_and_still_predicts(tiny_loaded):
    with pytest.warns(RuntimeWarning, match="no_such_layer"):
        engine = InferenceEngine(tiny_loaded.model, batch_size=2, target_layer="no_such_layer")
    out = engine.run(_images(1), with_cam=True)
    assert out.cams is None and out.logits.shape == (1,)


def _with_random_batchnorm_statistics(model, seed: int = 0):
    """Give every BatchNorm non-trivial statistics, so folding has something to fold."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, channels),
                    rng.normal(0, 0.2, channels),
                    rng.normal(0, 0.2, channels),
                    rng.uniform(0.5, 2.0, channels),
                ]
            )
    return model


def test_folding_batchnorm_keeps_logits_pooled_features_and_cams():
    import keras

    model = _with_random_batchnorm_statistics(
        build_classifier(ModelConfig(image_size=TINY_SIZE, dropout=0.0), None)
    )
    folded = fold_batchnorm(model)
    assert not [l for l in folded.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert {l.name for l in folded.layers} == {l.name for l in model.layers}  # names kept
    images = _images(3, seed=4)
    expected = keras.Model(
        model.input, [model.get_layer(CAM_LAYER).output, model.get_layer("logit").output]
    )(images)
    got = keras.Model(
        folded.input, [folded.get_layer(CAM_LAYER).output, folded.get_layer("logit").output]
    )(images)
    scale = float(np.abs(expected[1]).max()) + 1e-6
    np.testing.assert_allclose(got[1], expected[1], atol=1e-4 * scale)
    np.testing.assert_allclose(got[0], expected[0], atol=1e-4 * float(np.abs(expected[0]).max()))


def test_engines_over_one_model_share_one_inference_network(tiny_loaded):
    first = InferenceEngine(tiny_loaded.model, batch_size=1)
    second = InferenceEngine(tiny_loaded.model, batch_size=4)
    assert inference_network(tiny_loaded.model) is inference_network(tiny_loaded.model)
    assert inference_network(tiny_loaded.model) is not tiny_loaded.model
    images = _images(1, seed=3)
    np.testing.assert_allclose(
        first.run(images, True).logits, second.run(images, True).logits, rtol=1e-5, atol=1e-5
    )
