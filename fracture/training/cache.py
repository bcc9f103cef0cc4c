"""The feature cache: frozen-backbone activations computed once per image and view, kept on disk.

Everything up to ``fine_tune_from`` is frozen, so its output for a given image
never changes. :class:`FeatureCache` stores it keyed by the image's bytes, the
view and the preprocessing; every epoch, and every later run on the same data,
then trains only the top blocks. Augmented views are drawn on the *image*,
before the frozen stem, exactly as without a cache.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from fracture.data.augment import augment_radiograph
from fracture.data.records import Record
from fracture.inference.preprocess import letterbox
from fracture.io.files import atomic_write_bytes
from fracture.io.images import InvalidImageError, load_image
from fracture.training.config import TrainConfig

if TYPE_CHECKING:
    import keras

__all__ = ["CACHE_VERSION", "FeatureCache", "compute_features", "keep_usable", "model_key"]


CACHE_VERSION = "1"  # bump when letterbox or augmentation change


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

    def get(self, key: str) -> np.ndarray | None:
        path = self.path(key)
        try:
            return np.load(path)
        except (FileNotFoundError, ValueError, EOFError, OSError):
            return None

    def put(self, key: str, value: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, value.astype(np.float16))
        atomic_write_bytes(self.path(key), buffer.getvalue())


def model_key(config: TrainConfig, weights_sha256: str) -> str:
    return f"resnet50|{weights_sha256}|{config.image_size}|{config.fine_tune_from}"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compute_features(
    records: Sequence[Record],
    views: int,
    stem: "keras.Model",
    cache: FeatureCache,
    config: TrainConfig,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Stem features for every record and view, from the cache or computed now.

    Returns (features[views, n, h, w, c] float16, usable[n] bool): unreadable
    images are marked unusable instead of stopping the run.
    """
    import tensorflow as tf

    batch_size = 16
    size = config.image_size
    out_shape = tuple(int(d) for d in stem.output.shape[1:])
    features = np.zeros((views, len(records), *out_shape), np.float16)
    usable = np.ones(len(records), bool)
    digests = [file_sha256(r.path) for r in records]
    todo = []
    for i, digest in enumerate(digests):
        for view in range(views):
            cached = cache.get(cache.key(digest, view, config.seed))
            if cached is not None and cached.shape == out_shape:
                features[view, i] = cached
            else:
                todo.append((i, view))
    if not todo:
        return features, usable
    spec = [tf.TensorSpec((batch_size, size, size, 3), tf.float32)]
    forward = tf.function(lambda x: stem(x, training=False), input_signature=spec)

    def prepare(k: np.ndarray):
        i, view = todo[int(k)]
        try:
            image = load_image(records[i].path)
        except InvalidImageError:
            return np.zeros((size, size, 3), np.float32), np.bool_(False)
        if view > 0:
            rng = np.random.default_rng([config.seed, view, int(digests[i][:12], 16)])
            image = augment_radiograph(image, rng)
        return letterbox(image, size)[0], np.bool_(True)

    pipeline = (
        tf.data.Dataset.range(len(todo))
        .map(
            lambda k: tf.numpy_function(prepare, [k], (tf.float32, tf.bool), stateful=False),
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
            cache.put(cache.key(digests[i], view, config.seed), out[row])
        done += count
        if on_progress:
            on_progress(done, len(todo))
    return features, usable


def keep_usable(features: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """``features[:, usable]`` without a copy: usable rows move forward in place.

    Returns a view of ``features`` (whose skipped rows are overwritten).
    """
    keep = np.flatnonzero(usable)
    for new, old in enumerate(keep):
        if new != old:
            features[:, new] = features[:, old]
    return features[:, : len(keep)]
