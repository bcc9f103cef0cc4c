"""Step 2 of the default model's recipe: box-supervised fine-tuning on the cached features.

usage: python tools/box_supervision/train.py CACHE RUN [--epochs 8] [--box 1.0] [--neg 0.2]
       [--energy 0.0] [--resume RUN/epochN.npz] [--weight-decay 1e-4]

Trains every layer after the cache's cut (conv5_block3 for conv5_block2_out,
blocks 2-3 for conv5_block1_out) and the head, initialised from
CACHE/init.weights.h5, with cross-entropy plus the box-alignment loss of fracture.training.losses on the
evidence map ``w . A``. ``--energy`` adds a second box term on the positive
evidence itself, ``-log(share of relu(w . A) inside the boxes)``: the softmax
share rewards the peak, this one the mass (the "energy inside boxes" figure).
``--resume`` starts the trained layers from an earlier run's epoch file.

Each epoch sees every fractured train image (one random
cached view) and twice as many normal ones, drawn in turn; the learning rate
follows a cosine from LR to LR / 10. No epoch is chosen on val: the last one
ships, so val stays clean for calibration and thresholds. Per epoch it writes
RUN/epochN.npz (trained layers) and RUN/history.json (val AUROC, pointing game);
RUN/args.json records the stage's settings for the model card.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

# --- configurable parameters -------------------------------------------------------------
IMAGE_SIZE = 384
CUT = "conv5_block2_out"
BATCH = 16
HEAD_LR_RATIO = 1.0  # the head's learning rate relative to the block's
NORMALS_PER_FRACTURE = 2.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache", type=Path)
    parser.add_argument("run", type=Path)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--box", type=float, default=1.0)
    parser.add_argument("--neg", type=float, default=0.2)
    parser.add_argument("--energy", type=float, default=0.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--resume", type=Path, default=None)
    args = parser.parse_args()

    import keras
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score

    from fracture.evaluation.localisation import image_localisation, summarise_localisation
    from fracture.model.folder import ModelConfig
    from fracture.model.network import CAM_LAYER, LOGIT_LAYER, build_classifier
    from fracture.training.losses import box_loss_terms

    args.run.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    train_meta = json.loads((args.cache / "train_meta.json").read_text())
    val_meta = json.loads((args.cache / "val_meta.json").read_text())
    train_features = np.load(args.cache / "train_features.npy", mmap_mode="r")
    val_features = np.load(args.cache / "val_features.npy", mmap_mode="r")
    train_masks = np.load(args.cache / "train_masks.npy")
    train_labels, val_labels = np.array(train_meta["labels"]), np.array(val_meta["labels"])

    cut = train_meta.get("cut", CUT)  # the layer the cache holds; everything after it trains
    # What this stage ran, for the model card (assemble.py describes every stage from it).
    stage = {key: value for key, value in vars(args).items() if key not in {"cache", "run"}}
    stage["resume"] = None if args.resume is None else str(args.resume)
    (args.run / "args.json").write_text(json.dumps({**stage, "cut": cut}, indent=1))
    config = ModelConfig(image_size=IMAGE_SIZE, fine_tune_from=cut, dropout=0.5, conv5_dilation=2)
    model = build_classifier(config, None)
    model.load_weights(args.cache / "init.weights.h5")
    dense = model.get_layer(LOGIT_LAYER)
    tail = keras.Model(
        model.get_layer(cut).output, [model.get_layer(CAM_LAYER).output, dense.output]
    )
    names = [layer.name for layer in model.layers]
    trained = [
        layer
        for layer in model.layers[names.index(cut) + 1 :]
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]
    for layer in model.layers:
        layer.trainable = layer in trained
    if args.resume is not None:
        # Layers the earlier run did not train keep their INIT weights.
        stored = np.load(args.resume)
        for layer in trained:
            if f"{layer.name}/0" in stored:
                layer.set_weights([stored[f"{layer.name}/{j}"] for j in range(len(layer.weights))])
    head_vars = dense.trainable_variables
    body_vars = [v for layer in trained if layer is not dense for v in layer.trainable_variables]
    optimiser_head = keras.optimizers.AdamW(args.lr * HEAD_LR_RATIO, weight_decay=args.weight_decay)
    optimiser_body = keras.optimizers.AdamW(args.lr, weight_decay=args.weight_decay)
    optimiser_head.build(head_vars)
    optimiser_body.build(body_vars)

    @tf.function(reduce_retracing=True)
    def step(x, y, mask):
        with tf.GradientTape() as tape:
            features, logit = tail(x, training=True)
            evidence = tf.einsum("bhwc,c->bhw", features, dense.kernel[:, 0])
            cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logit[:, 0])
            flat = tf.reshape(evidence, (tf.shape(evidence)[0], -1))
            inside = tf.cast(tf.reshape(mask, (tf.shape(mask)[0], -1)) > 0, tf.float32)
            peak, mass, normal_terms = box_loss_terms(flat, inside, y)
            # The box terms are averaged over the images that have boxes, not the batch.
            boxed = tf.maximum(
                tf.reduce_sum(tf.cast(tf.reduce_sum(inside, 1) > 0, tf.float32) * y), 1.0
            )
            box = tf.reduce_sum(peak) / boxed
            energy = tf.reduce_sum(mass) / boxed
            normal = tf.reduce_mean(normal_terms)
            loss = (
                tf.reduce_mean(cross_entropy)
                + args.box * box
                + args.energy * energy
                + args.neg * normal
            )
        gradients = tape.gradient(loss, head_vars + body_vars)
        optimiser_head.apply_gradients(zip(gradients[: len(head_vars)], head_vars))
        optimiser_body.apply_gradients(zip(gradients[len(head_vars) :], body_vars))
        return tf.reduce_mean(cross_entropy), box, energy

    @tf.function(reduce_retracing=True)
    def infer(x):
        features, logit = tail(x, training=False)
        return tf.einsum("bhwc,c->bhw", features, dense.kernel[:, 0]), logit[:, 0]

    def evaluate() -> dict:
        maps, logits = [], []
        for start in range(0, val_features.shape[1], 32):
            m, z = infer(tf.constant(np.asarray(val_features[0, start : start + 32], np.float32)))
            maps.append(m.numpy())
            logits.append(z.numpy())
        maps, logits = np.concatenate(maps), np.concatenate(logits)
        per_image = [
            image_localisation(maps[i], val_meta["square_boxes"][0][i], None)
            for i in np.flatnonzero(val_labels == 1)
            if val_meta["square_boxes"][0][i]
        ]
        figures = summarise_localisation(per_image)
        return {
            "val_auroc": float(roc_auc_score(val_labels, logits)),
            "val_pointing": figures["pointing_game"]["rate"],
            "val_pointing_tol": figures["pointing_game_tolerant"]["rate"],
            "val_energy": figures["energy_inside_boxes"],
        }

    history = [{"epoch": 0, "phase": "init", **evaluate()}]
    print(json.dumps(history[-1]), flush=True)
    rng = np.random.default_rng(0)
    fractured, normal = np.flatnonzero(train_labels == 1), np.flatnonzero(train_labels == 0)
    normal_order, cursor = rng.permutation(normal), 0
    for epoch in range(1, args.epochs + 1):
        started = time.time()
        count = int(len(fractured) * NORMALS_PER_FRACTURE)
        if cursor + count > len(normal_order):
            normal_order, cursor = rng.permutation(normal), 0
        rows = rng.permutation(np.concatenate([fractured, normal_order[cursor : cursor + count]]))
        cursor += count
        views = rng.integers(0, train_features.shape[0], size=len(rows))
        decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / args.epochs))
        optimiser_body.learning_rate.assign(args.lr * decay)
        optimiser_head.learning_rate.assign(args.lr * HEAD_LR_RATIO * decay)
        losses = []
        for start in range(0, len(rows) - BATCH + 1, BATCH):
            batch, batch_views = rows[start : start + BATCH], views[start : start + BATCH]
            x = np.stack([train_features[v, r] for v, r in zip(batch_views, batch)])
            masks = np.stack([train_masks[v, r] for v, r in zip(batch_views, batch)])
            losses.append(
                [
                    float(t)
                    for t in step(
                        tf.constant(x.astype(np.float32)),
                        tf.constant(train_labels[batch].astype(np.float32)),
                        tf.constant(masks),
                    )
                ]
            )
        history.append(
            {
                "epoch": epoch,
                "phase": "joint",
                "train_bce": float(np.mean([l[0] for l in losses])),
                "train_box": float(np.mean([l[1] for l in losses])),
                "train_energy": float(np.mean([l[2] for l in losses])),
                "seconds": time.time() - started,
                **evaluate(),
            }
        )
        print(json.dumps(history[-1]), flush=True)
        (args.run / "history.json").write_text(json.dumps(history, indent=1))
        np.savez(
            args.run / f"epoch{epoch}.npz",
            **{
                f"{layer.name}/{j}": w
                for layer in trained
                for j, w in enumerate(layer.get_weights())
            },
        )


if __name__ == "__main__":
    main()
