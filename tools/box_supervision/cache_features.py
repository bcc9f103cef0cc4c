"""Step 1 of the default model's recipe: cache dilated conv5_block2_out features.

usage: python tools/box_supervision/cache_features.py DATA INIT_MODEL OUT [VIEWS] [CUT]

The stem is ImageNet ResNet-50 up to conv4 plus conv5 blocks 1-2 of INIT_MODEL
(the previous default model), with conv5 at stride 1 and dilation 2, computed
in bfloat16 as served. Train images get VIEWS views (view 0 clean, the others
augmented with their boxes moved along); val gets one. Writes, per split,
SPLIT_features.npy (views, n, 24, 24, 2048) float16, SPLIT_masks.npy (views, n,
24, 24) box masks and SPLIT_meta.json. CUT (default conv5_block2_out) is the
layer whose output is cached: conv5_block1_out leaves blocks 2-3 to train.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

# --- configurable parameters -------------------------------------------------------------
IMAGE_SIZE = 384
CUT = "conv5_block2_out"
BATCH = 16


def dilated_model(init_model: Path):
    """ResNet-50 with conv5 dilated, its conv5 and head taken from ``init_model``."""
    from fracture.model.folder import ModelConfig, load_model
    from fracture.model.imagenet import resolve_imagenet_weights
    from fracture.model.network import build_classifier

    weights = resolve_imagenet_weights(allow_download=False).path
    config = ModelConfig(
        image_size=IMAGE_SIZE, fine_tune_from="conv4_block6_out", dropout=0.5, conv5_dilation=2
    )
    model = build_classifier(config, weights)
    previous = load_model(init_model, weights).model
    for layer in model.layers:
        if (layer.name.startswith("conv5_") or layer.name == "logit") and layer.weights:
            layer.set_weights(previous.get_layer(layer.name).get_weights())
    return model


def main(data: Path, init_model: Path, out: Path, views: int, cut: str) -> None:
    import keras
    import tensorflow as tf

    from fracture.data.augment import augment_with_boxes
    from fracture.data.layouts import load_dataset
    from fracture.inference.engine import inference_network
    from fracture.inference.preprocess import letterbox
    from fracture.io.images import load_image
    from fracture.training.cache import boxes_in_network_input
    from fracture.training.losses import box_masks

    out.mkdir(parents=True, exist_ok=True)
    model = dilated_model(init_model)
    model.save_weights(out / "init.weights.h5")
    network = inference_network(model, "bfloat16")
    stem = keras.Model(network.input, network.get_layer(cut).output)
    shape = tuple(int(d) for d in stem.output.shape[1:])
    spec = [tf.TensorSpec((BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), tf.float32)]
    forward = tf.function(
        lambda x: tf.cast(stem(x, training=False), tf.float16), input_signature=spec
    )
    dataset = load_dataset(data)
    for split in ("val", "train"):
        records = dataset.split(split)
        n_views = 1 if split == "val" else views
        jobs = [(v, i) for v in range(n_views) for i in range(len(records))]
        boxes: list[list] = [[()] * len(records) for _ in range(n_views)]

        def prepare(k, jobs=jobs, records=records, boxes=boxes):
            view, i = jobs[int(k)]
            image, moved = load_image(records[i].path), records[i].boxes
            if view > 0:
                image, moved = augment_with_boxes(image, moved, np.random.default_rng([i, view]))
            network_input, geometry = letterbox(image, IMAGE_SIZE)
            boxes[view][i] = boxes_in_network_input(moved, geometry)
            return network_input

        pipeline = (
            tf.data.Dataset.range(len(jobs))
            .map(
                lambda k: tf.numpy_function(prepare, [k], tf.float32, stateful=True),
                num_parallel_calls=3,
                deterministic=True,
            )
            .batch(BATCH)
            .prefetch(2)
        )
        features = np.lib.format.open_memmap(
            out / f"{split}_features.npy", "w+", np.float16, (n_views, len(records), *shape)
        )
        started, done = time.time(), 0
        for batch in pipeline.as_numpy_iterator():
            count = batch.shape[0]
            padded = np.zeros((BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
            padded[:count] = batch
            computed = forward(padded).numpy()
            for row in range(count):
                view, i = jobs[done + row]
                features[view, i] = computed[row]
            done += count
            print(
                f"{split} {done}/{len(jobs)} {done / (time.time() - started):.1f} img/s", flush=True
            )
        features.flush()
        np.save(out / f"{split}_masks.npy", np.stack([box_masks(b, shape[:2]) for b in boxes]))
        meta = {
            "paths": [str(r.path) for r in records],
            "labels": [r.label for r in records],
            "square_boxes": boxes,
            "shape": shape,
            "cut": cut,
        }
        (out / f"{split}_meta.json").write_text(json.dumps(meta))


if __name__ == "__main__":
    main(
        Path(sys.argv[1]),
        Path(sys.argv[2]),
        Path(sys.argv[3]),
        int(sys.argv[4]) if len(sys.argv) > 4 else 2,
        sys.argv[5] if len(sys.argv) > 5 else CUT,
    )
