"""What the benchmark feeds the models: generated radiograph JPEGs, the model under test, the naive baseline.

The naive baseline is what a simple GUI would do: a Keras ResNet-50 of the same
architecture and input size, called with ``model.predict(x[None])`` once per
image after a PIL decode and resize.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fracture.config import get_settings
from fracture.errors import ModelLoadError
from fracture.model.registry import active_model_dir
from fracture.perf.config import DEFAULT_VAL_ROOT, JPEG_QUALITY, RADIOGRAPH_SHAPE, BenchConfig

if TYPE_CHECKING:
    import keras

    from fracture.model.folder import LoadedModel

__all__ = [
    "dataset_subset",
    "served_model_dir",
    "make_radiograph_jpegs",
    "build_naive_model",
    "naive_predict",
]


def make_radiograph_jpegs(
    count: int, shape: tuple[int, int] = RADIOGRAPH_SHAPE, seed: int = 0
) -> list[bytes]:
    """``count`` JPEGs that decode like radiographs: grey, smooth, bright bones, some noise.

    Decoding cost depends on size and entropy, so the images have the size
    and roughly the file size (about 100 kB) of FracAtlas radiographs.
    """
    from PIL import Image

    height, width = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for _ in range(count):
        base = 30 + 25 * (yy / height) + rng.normal(0, 4, (height, width))
        angle = rng.uniform(-0.3, 0.3)
        centre = width * rng.uniform(0.35, 0.65)
        distance = np.abs((xx - centre) * math.cos(angle) - (yy - height / 2) * math.sin(angle))
        bone_width = width * rng.uniform(0.06, 0.12)
        base += 140 * np.clip(1 - (distance / bone_width) ** 2, 0, None)
        crack_row = int(height * rng.uniform(0.3, 0.7))
        base[crack_row : crack_row + 3] -= 60 * (distance[crack_row : crack_row + 3] < bone_width)
        grey = np.clip(base, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(grey).convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
        out.append(buffer.getvalue())
    return out


def resolve_weights(config: BenchConfig) -> str:
    if config.weights:
        return str(config.weights)
    from fracture.model.imagenet import resolve_imagenet_weights

    return str(resolve_imagenet_weights().path)


def served_model_dir() -> Path | None:
    """The model served now (the registry's ACTIVE, or its fallback), or None when there is none."""
    try:
        return active_model_dir(get_settings())
    except ModelLoadError:
        return None


def bench_model(config: BenchConfig, weights: str) -> tuple["LoadedModel", dict[str, Any]]:
    """The model to benchmark: the trained one when there is one, else ImageNet + a random head.

    A random head changes no timing: the head is one 2048-to-1 dense layer.
    """
    from fracture.model.folder import LoadedModel, ModelConfig, load_model
    from fracture.model.network import build_classifier

    if config.image_size is None:
        directory = Path(config.model_dir) if config.model_dir else served_model_dir()
        if directory is not None:
            loaded = load_model(directory, weights)
            return loaded, {
                "kind": "trained",
                "directory": str(directory),
                "name": loaded.config.name,
                "image_size": loaded.config.image_size,
            }
    size = config.image_size or 224
    model_config = ModelConfig(image_size=size, name="imagenet-random-head")
    loaded = LoadedModel(build_classifier(model_config, weights), model_config, {}, None)
    return loaded, {
        "kind": "imagenet-random-head",
        "directory": None,
        "name": model_config.name,
        "image_size": size,
    }


def bench_image_size(config: BenchConfig) -> int:
    """The benchmarked model's input size, read without building it."""
    from fracture.model.folder import read_config

    if config.image_size is not None:
        return config.image_size
    directory = Path(config.model_dir) if config.model_dir else served_model_dir()
    if directory is not None:
        return read_config(directory)[0].image_size
    return 224


def letterboxed(jpegs: Sequence[bytes], size: int) -> np.ndarray:
    from fracture.inference.preprocess import letterbox
    from fracture.io.images import load_image

    return np.stack([letterbox(load_image(data), size)[0] for data in jpegs])


def build_naive_model(image_size: int, weights: str) -> "keras.Model":
    """What a simple GUI builds: Keras's ResNet-50 + global pooling + a sigmoid unit."""
    import keras

    backbone = keras.applications.ResNet50(
        include_top=False, weights=weights, input_shape=(image_size, image_size, 3)
    )
    pooled = keras.layers.GlobalAveragePooling2D()(backbone.output)
    output = keras.layers.Dense(1, activation="sigmoid")(pooled)
    return keras.Model(backbone.input, output, name="naive_resnet50")


def naive_predict(model: "keras.Model", data: bytes, image_size: int) -> float:
    """One image the simple way: PIL decode, stretch to the input size, ``model.predict``."""
    import keras
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB").resize((image_size, image_size))
    x = keras.applications.resnet50.preprocess_input(np.asarray(image, np.float32))
    return float(model.predict(x[None], verbose=0)[0, 0])


def dataset_subset(
    config: BenchConfig, split: str, limit: int | None, seed: int = 0
) -> tuple[list[Any], int, str | None]:
    """Records of one split of the bench's dataset (``config.val_root``): a seeded subset
    with the split's class balance when ``limit`` is set; the split's size; or the reason
    there are none."""
    from fracture.data.layouts import load_dataset
    from fracture.data.splits import stratified_sample

    root = Path(config.val_root) if config.val_root else DEFAULT_VAL_ROOT
    if not root.is_dir():
        return [], 0, f"n/a: no validation data at {root}"
    records = load_dataset(root).split(split)
    total = len(records)
    if not records:
        return [], 0, f"n/a: {root} has no {split} split"
    if limit:
        records = stratified_sample(records, limit, seed)
    return records, total, None
