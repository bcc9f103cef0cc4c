"""The feature cache: frozen-backbone activations computed once per image and view, kept on disk.

Everything up to ``fine_tune_from`` is frozen, so its output for a given image
never changes. :class:`FeatureCache` stores it keyed by the image's bytes, the
view and the preprocessing; every epoch, and every later run on the same data,
then trains only the top blocks. Augmented views are drawn on the *image*,
before the frozen stem, exactly as without a cache; a view's fracture boxes move
with it (:func:`fracture.data.augment.augment_with_boxes`) and are cached beside
its features, in the letterboxed network input's normalised coordinates.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from fracture.data.augment import Box, augment_with_boxes
from fracture.data.records import Record
from fracture.inference.preprocess import Geometry, letterbox
from fracture.io.files import atomic_write_bytes
from fracture.io.images import InvalidImageError, load_image
from fracture.training.config import TrainConfig

if TYPE_CHECKING:
    import keras

__all__ = [
    "CACHE_VERSION",
    "FeatureCache",
    "compute_features",
    "keep_usable",
    "model_key",
    "boxes_in_network_input",
]


CACHE_VERSION = "2"  # bump when letterbox, augmentation or the cached entries change


class FeatureCache:
    """Stem activations on disk, keyed by image content, view and preprocessing."""

    def __init__(self, directory: Path, model_key: str) -> None:
        self.directory = directory
        self.model_key = model_key

    def key(self, content_sha256: str, view: int, seed: int) -> str:
        # Seeds matter only for augmented views; view 0 is shared across seeds.
        material = f"{CACHE_VERSION}|{self.model_key}|{content_sha256}|{view}|{seed if view else 0}"
        return hashlib.sha256(material.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npy"

    def get(self, key: str) -> tuple[np.ndarray, tuple[Box, ...]] | None:
        """The cached (features, boxes), or None when the entry is missing or unreadable."""
        path = self.path(key)
        try:
            boxes = np.load(path.with_suffix(".boxes.npy"))
            return np.load(path), tuple(tuple(float(v) for v in box) for box in boxes)  # type: ignore[misc]
        except (FileNotFoundError, ValueError, EOFError, OSError):
            return None

    def put(self, key: str, value: np.ndarray, boxes: Sequence[Box] = ()) -> None:
        # Boxes first: the features file is what marks an entry complete.
        for suffix, array in (
            (".boxes.npy", np.asarray(boxes, np.float32).reshape(-1, 4)),
            (".npy", value.astype(np.float16)),
        ):
            buffer = io.BytesIO()
            np.save(buffer, array)
            atomic_write_bytes(self.path(key).with_suffix(suffix), buffer.getvalue())


def model_key(config: TrainConfig, weights_sha256: str) -> str:
    return (
        f"resnet50|{weights_sha256}|{config.image_size}|{config.fine_tune_from}"
        f"|dilation{config.conv5_dilation}"
    )


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compute_features(
    records: Sequence[Record],
    views: int,
    stem: "keras.Model",
    cache: FeatureCache,
    config: TrainConfig,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[list[tuple[Box, ...]]]]:
    """Stem features for every record and view, from the cache or computed now.

    Returns (features[views, n, h, w, c] float16, usable[n] bool, boxes[view][n]):
    unreadable images are marked unusable instead of stopping the run; each
    view's fracture boxes are in the network input's normalised coordinates.
    """
    import tensorflow as tf

    batch_size = 16
    size = config.image_size
    out_shape = tuple(int(d) for d in stem.output.shape[1:])
    features = np.zeros((views, len(records), *out_shape), np.float16)
    usable = np.ones(len(records), bool)
    boxes: list[list[tuple[Box, ...]]] = [[() for _ in records] for _ in range(views)]
    digests = [file_sha256(r.path) for r in records]
    todo = []
    for i, digest in enumerate(digests):
        for view in range(views):
            cached = cache.get(cache.key(digest, view, config.seed))
            if cached is not None and cached[0].shape == out_shape:
                features[view, i], boxes[view][i] = cached
            else:
                todo.append((i, view))
    if not todo:
        return features, usable, boxes
    spec = [tf.TensorSpec((batch_size, size, size, 3), tf.float32)]
    forward = tf.function(lambda x: stem(x, training=False), input_signature=spec)

    def prepare(k: np.ndarray):
        i, view = todo[int(k)]
        try:
            image = load_image(records[i].path)
        except InvalidImageError:
            return np.zeros((size, size, 3), np.float32), np.bool_(False)
        moved = records[i].boxes
        if view > 0:
            rng = np.random.default_rng([config.seed, view, int(digests[i][:12], 16)])
            image, moved = augment_with_boxes(image, moved, rng)
        network_input, geometry = letterbox(image, size)
        # Python objects travel beside tf.data, keyed by the item (as in the Predictor).
        boxes[view][i] = boxes_in_network_input(moved, geometry)
        return network_input, np.bool_(True)

    pipeline = (
        tf.data.Dataset.range(len(todo))
        .map(
            lambda k: tf.numpy_function(prepare, [k], (tf.float32, tf.bool), stateful=True),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .batch(batch_size)
        .prefetch(2)
    )
    done = 0
    for images, ok in pipeline.as_numpy_iterator():
        count = images.shape[0]
        padded = np.zeros((batch_size, size, size, 3), np.float32)
        padded[:count] = images
        out = forward(padded).numpy()[:count]
        for row in range(count):
            i, view = todo[done + row]
            if not ok[row]:
                usable[i] = False
                continue
            features[view, i] = out[row]
            cache.put(cache.key(digests[i], view, config.seed), out[row], boxes[view][i])
        done += count
        if on_progress:
            on_progress(done, len(todo))
    return features, usable, boxes


def boxes_in_network_input(boxes: Sequence[Box], geometry: Geometry) -> tuple[Box, ...]:
    """Boxes normalised to the original image, normalised to the letterboxed square instead."""
    size = geometry.size
    return tuple(
        (
            (geometry.left + x0 * geometry.width) / size,
            (geometry.top + y0 * geometry.height) / size,
            (geometry.left + x1 * geometry.width) / size,
            (geometry.top + y1 * geometry.height) / size,
        )
        for x0, y0, x1, y1 in boxes
    )


def keep_usable(features: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """``features[:, usable]`` without a copy: usable rows move forward in place.

    Returns a view of ``features`` (whose skipped rows are overwritten).
    """
    keep = np.flatnonzero(usable)
    for new, old in enumerate(keep):
        if new != old:
            features[:, new] = features[:, old]
    return features[:, : len(keep)]
