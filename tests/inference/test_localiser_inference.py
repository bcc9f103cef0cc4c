"""The localisation head in the served model: one backbone pass, the probability untouched."""

from __future__ import annotations

import numpy as np
import pytest

from fracture.model.folder import file_checksums

from conftest import radiograph_like, with_random_localiser


@pytest.fixture(scope="module")
def predictors(tiny_model_dir, tiny_loaded, tmp_path_factory, fake_imagenet_weights):
    from fracture.inference.predictor import Predictor
    from fracture.model.folder import load_model

    directory, head = with_random_localiser(tiny_model_dir, tmp_path_factory.mktemp("located"))
    options = {"batch_size": 2, "precision": "float32", "warmup": False}
    plain = Predictor(tiny_loaded, **options)
    located = Predictor(load_model(directory, fake_imagenet_weights), **options)
    return plain, located, head


def test_the_head_leaves_the_probability_unchanged_and_reads_conv4(predictors):
    import keras

    plain, located, head = predictors
    images = [radiograph_like(seed) for seed in range(3)]
    without = plain.predict(images, with_cam=True)
    with_head = located.predict(images, with_cam=True)
    assert [p.probability for p in with_head] == pytest.approx(
        [p.probability for p in without], abs=1e-6
    )
    assert "localiser.npz" in file_checksums(located.loaded.directory)
    # The engine's head output equals the head applied to Keras's own conv4 output.
    from fracture.inference.preprocess import letterbox

    network_input = np.stack([letterbox(img, 64)[0] for img in images[:2]])
    model = located.loaded.model
    conv4 = keras.Model(model.input, model.get_layer("conv4_block6_out").output)
    expected = np.asarray(head(conv4(network_input)))
    got = located.engine.run(network_input, with_cam=False).localiser
    assert got.shape == (2, 4, 4, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_boxes_are_drawn_only_on_images_labelled_fracture(predictors):
    _, located, _ = predictors
    results = located.predict([radiograph_like(seed) for seed in range(4)], with_cam=True)
    for result in results:
        assert result.location is not None and result.location.shape == (4, 4)
        assert result.location_boxes, "the biased head should give candidate boxes"
        for box in result.location_boxes:
            assert 0 <= box.x0 < box.x1 <= 1 and 0 <= box.y0 < box.y1 <= 1
        row = result.row()
        if result.label == "fracture":
            assert result.drawn_boxes == result.location_boxes
            assert row["box_x0"] and row["boxes"] and row["box_style"] in ("dotted", "solid")
        else:
            assert result.drawn_boxes == [] and result.box is None
            assert row["box_x0"] == "" and row["boxes"] == "" and row["box_style"] == ""
    where = results[0].location_image()
    assert where.shape == results[0].image.shape[:2] and 0 <= where.min() <= where.max() <= 1


def test_a_two_level_head_reads_conv3_and_conv4_of_the_same_pass(
    tiny_model_dir, tiny_loaded, tmp_path, fake_imagenet_weights
):
    import keras

    from fracture.inference.predictor import Predictor
    from fracture.inference.preprocess import letterbox
    from fracture.model.folder import load_model

    directory, head = with_random_localiser(tiny_model_dir, tmp_path, levels=2)
    options = {"batch_size": 2, "precision": "float32", "warmup": False}
    plain = Predictor(tiny_loaded, **options)
    located = Predictor(load_model(directory, fake_imagenet_weights), **options)
    images = [radiograph_like(seed) for seed in range(2)]
    assert [p.probability for p in located.predict(images)] == pytest.approx(
        [p.probability for p in plain.predict(images)], abs=1e-6
    )
    network_input = np.stack([letterbox(img, 64)[0] for img in images])
    model = located.loaded.model
    levels = keras.Model(
        model.input, [model.get_layer(n).output for n in ("conv3_block4_out", "conv4_block6_out")]
    )
    expected = np.asarray(head(levels(network_input)))
    got = located.engine.run(network_input, with_cam=False).localiser
    assert got.shape == (2, 8, 8, 5)  # conv3's grid: 8-pixel cells at 64 px
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
    result = located.predict(images[:1], with_cam=True)[0]
    assert result.location is not None and result.location.shape == (8, 8)


def test_a_localiser_weight_adds_the_heads_peak_to_the_logit(
    predictors, tmp_path, fake_imagenet_weights
):
    import dataclasses
    import shutil

    from fracture.errors import ModelLoadError
    from fracture.inference.predictor import Predictor
    from fracture.model.folder import ModelFolder, load_model

    _, located, _ = predictors
    weighted_dir = tmp_path / "weighted"
    shutil.copytree(located.loaded.directory, weighted_dir)
    folder = ModelFolder(weighted_dir)
    config, card = folder.read()
    folder.rewrite_config(dataclasses.replace(config, localiser_weight=0.5), card)
    options = {"batch_size": 2, "precision": "float32", "warmup": False}
    weighted = Predictor(load_model(weighted_dir, fake_imagenet_weights), **options)
    images = [radiograph_like(seed) for seed in range(2)]
    before, after = located.predict(images), weighted.predict(images)
    for b, a in zip(before, after):
        assert a.location_peak == pytest.approx(b.location_peak, abs=1e-5)
        assert a.logit == pytest.approx(b.logit + 0.5 * b.location_peak, abs=1e-4)

    # A folder whose probability needs a head it does not have is refused, not misread.
    headless_dir = tmp_path / "headless"
    shutil.copytree(weighted_dir, headless_dir)
    (headless_dir / "localiser.npz").unlink()
    headless = ModelFolder(headless_dir)
    headless.rewrite_card(headless.read_card())
    with pytest.raises(ModelLoadError, match="no localisation head"):
        Predictor(load_model(headless_dir, fake_imagenet_weights), **options)
