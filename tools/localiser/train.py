"""Train the localisation head on a cached conv4 feature file (the shipped model's recipe).

usage: python tools/localiser/train.py CACHE[,CACHE] OUT [EPOCHS] [SEED] [NORMALS_PER_EPOCH]

Two caches, fine level first (``conv3_block4_out``, then ``conv4_block6_out``), train
the two-level head of :mod:`fracture.model.localiser`; one trains the one-level head.
Each CACHE is a folder written by ``tools/box_supervision/cache_features.py DATA MODEL CACHE 2
conv4_block6_out``: the ImageNet ``conv4_block6_out`` features (which the shipped
classifier leaves untouched) of two views per train image (view 0 clean, view 1
augmented with its boxes moved along) and one per val image, with their boxes in the
square network input's frame. It is the same work as ``fracture localiser fit``, on a
cache that keeps every normal image's two views on disk rather than in memory.

15 % of the train images (both views) are held out: they choose the epoch and the box
threshold. Val is only measured. Writes OUT/localiser.npz and OUT/report.json.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

# --- configurable parameters -------------------------------------------------------------
HOLDOUT_FRACTION = 0.15
EPOCHS = 12
NORMALS_PER_EPOCH = 1000


def reader(arrays: list[np.ndarray], index):
    """Read items from every level's cache: one array, or a tuple of them, fine first."""

    def read(ks):
        stacked = tuple(np.stack([a[index(k)] for k in ks]) for a in arrays)
        return stacked if len(stacked) > 1 else stacked[0]

    return read


def main(caches: list[Path], out: Path, epochs: int, seed: int, normals: int) -> None:
    from fracture.training.localiser import LocaliserTraining, train_and_measure

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out.mkdir(parents=True, exist_ok=True)
    cache = caches[0]
    levels = [np.load(c / "train_features.npy", mmap_mode="r") for c in caches]
    val_levels = [np.load(c / "val_features.npy", mmap_mode="r") for c in caches]
    layers = [json.loads((c / "train_meta.json").read_text())["cut"] for c in caches]
    meta = json.loads((cache / "train_meta.json").read_text())
    for other in caches[1:]:  # the same images, views and boxes in every cache
        if (
            json.loads((other / "train_meta.json").read_text())["square_boxes"]
            != meta["square_boxes"]
        ):
            raise SystemExit(f"{other} holds other views than {cache}")
    views, n = levels[0].shape[:2]
    items = [(v, i) for v in range(views) for i in range(n)]
    labels = [meta["labels"][i] for _, i in items]
    boxes = [[tuple(b) for b in meta["square_boxes"][v][i]] for v, i in items]
    held = set(np.random.default_rng(seed).permutation(n)[: int(HOLDOUT_FRACTION * n)].tolist())
    holdout = [k for k, (_, i) in enumerate(items) if i in held]
    measure_on = [k for k in holdout if items[k][0] == 0]  # the clean view of each

    val_meta = json.loads((cache / "val_meta.json").read_text())
    val_items = [i for i, label in enumerate(val_meta["labels"]) if label == 1]
    val_boxes = [[tuple(b) for b in val_meta["square_boxes"][0][i]] for i in val_items]

    settings = LocaliserTraining(epochs=epochs, normals_per_epoch=normals, seed=seed)

    fit = train_and_measure(
        reader(levels, lambda k: items[k]),
        boxes,
        labels,
        holdout,
        settings,
        measure_on=measure_on,
        val_read=reader(val_levels, lambda k: (0, val_items[k])),
        val_boxes=val_boxes,
        description=(
            f"CenterNet head on frozen ImageNet {' and '.join(layers)} features at "
            f"{levels[-1].shape[2] * 16} px: {n - len(held)} FracAtlas train images x {views} "
            f"views (view 2 flipped, rotated or zoomed with its boxes), {normals} normal "
            f"views sampled per epoch; the best of {epochs} epochs and the box threshold "
            f"chosen on {len(held)} held-out train images"
        ),
        input_layers=layers,
    )
    fit.localiser.save(out / "localiser.npz")
    (out / "report.json").write_text(json.dumps(fit.report, indent=1))
    print(json.dumps({k: v for k, v in fit.report.items() if k != "epochs"}, indent=1))


if __name__ == "__main__":
    args = sys.argv[1:]
    main(
        [Path(c) for c in args[0].split(",")],
        Path(args[1]),
        int(args[2]) if len(args) > 2 else EPOCHS,
        int(args[3]) if len(args) > 3 else 0,
        int(args[4]) if len(args) > 4 else NORMALS_PER_EPOCH,
    )
