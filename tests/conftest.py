"""Shared fixtures: generated images and a tiny model, so tests need neither network nor ../shared.

Where ``../shared`` exists (developer machines and CI), the ``shared_dir``
fixture points at it and the real-data tests run; elsewhere they skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = Path(__file__).resolve().parents[2] / "shared"
TINY_SIZE = 64


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present on this machine")
    return SHARED


@pytest.fixture(scope="session")
def shared_fracatlas(shared_dir: Path) -> Path:
    root = shared_dir / "data" / "fracatlas"
    if not root.is_dir():
        pytest.skip("../shared/data/fracatlas is not present")
    return root


@pytest.fixture(scope="session")
def shared_weights(shared_dir: Path) -> Path:
    path = shared_dir / "weights" / "resnet50_imagenet_notop.h5"
    if not path.is_file():
        pytest.skip("../shared/weights/resnet50_imagenet_notop.h5 is not present")
    return path


def radiograph_like(seed: int = 0, height: int = 96, width: int = 80) -> np.ndarray:
    """A small grey image with a bright 'bone' band: enough structure for the loader and model."""
    rng = np.random.default_rng(seed)
    image = rng.normal(40, 8, (height, width)).clip(0, 255)
    image[:, width // 3 : width // 3 + width // 6] += 150
    return np.repeat(image.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)


def write_png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(radiograph_like(seed)).save(path)
    return path


@pytest.fixture(scope="session")
def fake_imagenet_weights(tmp_path_factory) -> Path:
    """Randomly initialised ResNet-50 weights standing in for ImageNet in fast tests."""
    import keras

    keras.utils.set_random_seed(1)
    backbone = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(TINY_SIZE, TINY_SIZE, 3)
    )
    path = tmp_path_factory.mktemp("weights") / "fake_imagenet.weights.h5"
    backbone.save_weights(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, fake_imagenet_weights: Path) -> Path:
    """A saved 64-px model whose head responds to image brightness, so outputs vary."""
    import keras

    from fracture.model.folder import ModelConfig, imagenet_reference, save_model
    from fracture.model.network import build_classifier

    config = ModelConfig(
        image_size=TINY_SIZE,
        fine_tune_from="conv5_block2_out",
        thresholds={"high_sensitivity": 0.5, "high_specificity": 0.7},
        name="tiny-test",
        version="1",
    )
    model = build_classifier(config, fake_imagenet_weights)
    reference = imagenet_reference(model, config)
    keras.utils.set_random_seed(2)
    conv = model.get_layer("conv5_block3_3_conv")
    conv.set_weights([w * 1.05 for w in conv.get_weights()])
    logit = model.get_layer("logit")
    kernel, bias = logit.get_weights()
    logit.set_weights(
        [np.random.default_rng(3).normal(0, 0.05, kernel.shape).astype("float32"), bias]
    )
    directory = tmp_path_factory.mktemp("models") / "tiny"
    save_model(model, config, directory, reference=reference, card={"name": "tiny-test"})
    return directory


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir: Path, fake_imagenet_weights: Path):
    """The tiny model loaded once for the whole session: every test that only reads it shares it."""
    from fracture.model.folder import load_model

    return load_model(tiny_model_dir, fake_imagenet_weights)


@pytest.fixture(scope="session")
def tiny_predictor(tiny_loaded):
    """One Predictor over the tiny model (batches of 4); tests that change it use monkeypatch."""
    from fracture.inference.predictor import Predictor

    return Predictor(tiny_loaded, batch_size=4)


@pytest.fixture
def use_fake_weights(monkeypatch, fake_imagenet_weights: Path):
    """Make weight resolution return the fake weights (no verification: they are not ImageNet)."""
    import fracture.model.imagenet as weights

    resolved = weights.ResolvedWeights(path=fake_imagenet_weights, sha256="fake", source="explicit")
    monkeypatch.setattr(weights, "resolve_imagenet_weights", lambda *a, **k: resolved)
    return fake_imagenet_weights


def with_random_localiser(
    tiny_model_dir: Path, tmp_path: Path, box_threshold: float = 0.02, levels: int = 1
):
    """A copy of ``tiny_model_dir`` with a random localisation head biased to find boxes.

    Returns the new folder and the Keras head: on conv4 (1024 channels), or with
    ``levels=2`` on conv3 and conv4 (512 and 1024 channels, fine level first).
    """
    import shutil

    import keras

    from fracture.model.folder import ModelFolder
    from fracture.model.localiser import (
        INPUT_LAYER,
        PYRAMID_LAYERS,
        Localiser,
        build_localiser_head,
    )

    directory = tmp_path / "model"
    shutil.copytree(tiny_model_dir, directory)
    keras.utils.set_random_seed(5)
    head = build_localiser_head(1024 if levels == 1 else (512, 1024))
    # A strong centre bias so the random head yields boxes above the threshold.
    weights = head.get_weights()
    weights[-1] = np.array([0.0, 0.0, 0.0, 0.5, 0.5], np.float32)
    head.set_weights(weights)
    layers = (INPUT_LAYER,) if levels == 1 else PYRAMID_LAYERS
    Localiser.from_head(head, input_layers=layers, box_threshold=box_threshold).save(
        ModelFolder(directory).localiser_path
    )
    folder = ModelFolder(directory)
    folder.rewrite_card(folder.read_card())  # the card's checksums cover the new file
    return directory, head


@pytest.fixture(scope="session")
def tiny_onnx_model_dir(
    tmp_path_factory, tiny_model_dir: Path, fake_imagenet_weights: Path
) -> Path:
    """The tiny model with a two-level localiser and its ONNX export installed in its folder.

    One tf2onnx conversion (about half a minute) for every test of the ONNX runtime.
    """
    from fracture.inference.export import export_into_model_folder
    from fracture.model.folder import load_model

    directory, _ = with_random_localiser(tiny_model_dir, tmp_path_factory.mktemp("onnx"), levels=2)
    export_into_model_folder(load_model(directory, fake_imagenet_weights))
    return directory
