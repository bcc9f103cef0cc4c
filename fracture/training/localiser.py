"""Training the localisation head on the radiologists' boxes, on frozen backbone features.

The head (:mod:`fracture.model.localiser`) learns CenterNet's targets (Zhou et al.,
"Objects as Points", 2019) on the 24 x 24 grid of ``conv4_block6_out``:

* **centre**: 1 at the cell holding a box's centre, a Gaussian around it (its radius
  from the box size, CenterNet's rule, at least one cell), 0 elsewhere; learnt with
  CenterNet's penalty-reduced focal loss, which weighs down the near misses next to
  a centre and the many easy empty cells;
* **offset**: where in that cell the centre lies (L1, at centre cells only);
* **size**: the box's width and height in log cells (L1, at centre cells only).

Normal radiographs are negatives: every cell's target is 0. They are sampled, not all
used: FracAtlas's own detector lost box mAP50 from 0.48 to 0.29 when every normal image
joined training.

Why frozen features: the classifier is trained first, for accuracy, and this head only
reads the layer the classifier leaves at its ImageNet weights, so training it cannot
change the probability (:mod:`fracture.model.localiser`). The features are computed
once and cached (``tools/localiser/``), and an epoch over them takes seconds to
minutes on two CPU cores instead of the hour a backbone pass would.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from fracture.evaluation.detection import average_precision
from fracture.evaluation.localisation import pointing_game
from fracture.inference.localisation import decode_boxes
from fracture.model.localiser import INPUT_LAYER, PYRAMID_LAYERS, build_localiser_head

if TYPE_CHECKING:
    import keras

    from fracture.model.localiser import Localiser

__all__ = [
    "fit_for_model",
    "LocaliserFit",
    "train_and_measure",
    "predict_outputs",
    "LocaliserTraining",
    "LocaliserEpoch",
    "centre_targets",
    "fit_localiser",
    "Boxes",
]

logger = logging.getLogger(__name__)

Boxes = Sequence[tuple[float, float, float, float]]  # normalised to the square input
# What a feature reader returns for a list of items: one (n, H, W, C) array for the
# one-level head, or a tuple of them, fine level first, for the two-level one.
Features = np.ndarray | tuple[np.ndarray, ...]
FeatureReader = Callable[[Sequence[int]], Features]

# CenterNet's focal-loss exponents (alpha on the prediction, beta on the Gaussian).
_FOCAL_ALPHA = 2.0
_FOCAL_BETA = 4.0
# The minimum overlap CenterNet's radius rule keeps for a box shifted within the radius.
_RADIUS_OVERLAP = 0.7


@dataclass
class LocaliserTraining:
    """The settings of one head training (the keras-io style block of parameters)."""

    epochs: int = 12
    batch_size: int = 32
    learning_rate: float = 1e-3
    # Adam's update is clipped to this global gradient norm: the first steps' focal
    # loss is large, and an unclipped step can silence the head's ReLUs for good (a
    # constant map, which no later epoch revives).
    clip_norm: float | None = 1.0
    normals_per_epoch: int = 1000  # sampled afresh each epoch from all normal views
    size_weight: float = 1.0
    offset_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.normals_per_epoch < 0:
            raise ValueError("epochs and batch size must be positive, normals per epoch >= 0")
        if not self.learning_rate > 0:
            raise ValueError(f"learning rate must be positive, got {self.learning_rate}")


@dataclass
class LocaliserEpoch:
    """What one epoch measured on the held-out images."""

    epoch: int
    loss: float
    pointing: float | None
    ap50: float | None
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def _gaussian_radius(height: float, width: float, min_overlap: float = _RADIUS_OVERLAP) -> float:
    """CenterNet's radius (in cells) within which a shifted box keeps ``min_overlap`` IoU."""
    # The three cases of CornerNet's gaussian_radius (Law and Deng, ECCV 2018).
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 16 * c2)) / 8
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def centre_targets(boxes: Boxes, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CenterNet targets for one image on a ``grid`` x ``grid`` map.

    Returns the centre heat (grid, grid) in [0, 1], and at each centre cell the offset
    (grid, grid, 2) in cells and the log size (grid, grid, 2) in cells (zero elsewhere;
    the heat's 1s mark where they count). Where two boxes share a centre cell, the
    larger one's size is kept.
    """
    heat = np.zeros((grid, grid), np.float32)
    offset = np.zeros((grid, grid, 2), np.float32)
    log_size = np.zeros((grid, grid, 2), np.float32)
    area = np.zeros((grid, grid), np.float32)
    ys, xs = np.mgrid[0:grid, 0:grid].astype(np.float32)
    for x0, y0, x1, y1 in boxes:
        width, height = (x1 - x0) * grid, (y1 - y0) * grid
        if width <= 0 or height <= 0:
            continue
        cx, cy = (x0 + x1) / 2 * grid, (y0 + y1) / 2 * grid
        col, row = min(grid - 1, max(0, int(cx))), min(grid - 1, max(0, int(cy)))
        radius = max(1, int(_gaussian_radius(height, width)))
        sigma = (2 * radius + 1) / 6
        gaussian = np.exp(-((xs - col) ** 2 + (ys - row) ** 2) / (2 * sigma**2))
        np.maximum(heat, gaussian.astype(np.float32), out=heat)
        heat[row, col] = 1.0
        if width * height >= area[row, col]:
            area[row, col] = width * height
            offset[row, col] = (cx - col - 0.5, cy - row - 0.5)
            log_size[row, col] = (math.log(width), math.log(height))
    return heat, offset, log_size


def _loss_fn(size_weight: float, offset_weight: float) -> Callable[..., Any]:
    import tensorflow as tf

    def loss(outputs, heat, offset, log_size):
        outputs = tf.cast(outputs, tf.float32)
        p = tf.clip_by_value(tf.sigmoid(outputs[..., 0]), 1e-4, 1 - 1e-4)
        positive = tf.cast(tf.equal(heat, 1.0), tf.float32)
        negative = 1.0 - positive
        pos_loss = tf.math.log(p) * (1 - p) ** _FOCAL_ALPHA * positive
        neg_weight = (1 - heat) ** _FOCAL_BETA
        neg_loss = tf.math.log(1 - p) * p**_FOCAL_ALPHA * neg_weight * negative
        n_pos = tf.maximum(tf.reduce_sum(positive), 1.0)
        focal = -(tf.reduce_sum(pos_loss) + tf.reduce_sum(neg_loss)) / n_pos
        mask = positive[..., None]
        off = tf.reduce_sum(tf.abs(outputs[..., 1:3] - offset) * mask) / n_pos
        size = tf.reduce_sum(tf.abs(outputs[..., 3:5] - log_size) * mask) / n_pos
        return focal + offset_weight * off + size_weight * size

    return loss


def fit_localiser(
    read_features: FeatureReader,
    boxes: Sequence[Boxes],
    labels: Sequence[int],
    holdout: Sequence[int],
    settings: LocaliserTraining,
    *,
    measure_on: Sequence[int] | None = None,
    on_epoch: Callable[[LocaliserEpoch], None] | None = None,
) -> tuple["keras.Model", list[LocaliserEpoch]]:
    """Train a head and return it at its best held-out epoch, with every epoch's figures.

    ``read_features(indices)`` returns the cached (n, H, W, C) features of those items;
    ``boxes`` and ``labels`` (1 fractured, 0 normal) describe every item. The items in
    ``holdout`` are never trained on; those in ``measure_on`` (by default all of
    ``holdout``) choose the epoch: the mean of the pointing game and box AP50 on their
    fractured images.
    """
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(settings.seed)
    keras.utils.set_random_seed(settings.seed)
    held = set(int(i) for i in holdout)
    measured = sorted(held if measure_on is None else set(int(i) for i in measure_on))
    fractured = [i for i in range(len(labels)) if labels[i] == 1 and i not in held and boxes[i]]
    normals = [i for i in range(len(labels)) if labels[i] == 0 and i not in held]
    if not fractured:
        raise ValueError("no fractured image with boxes to train the localisation head on")
    probe = _levels(read_features([fractured[0]]))
    grid = int(probe[0].shape[1])  # the finest level's: the outputs lie on it
    head = build_localiser_head(tuple(int(level.shape[-1]) for level in probe))
    steps = settings.epochs * math.ceil(
        (len(fractured) + min(len(normals), settings.normals_per_epoch)) / settings.batch_size
    )
    schedule = keras.optimizers.schedules.CosineDecay(settings.learning_rate, max(1, steps))
    optimiser = keras.optimizers.Adam(schedule, global_clipnorm=settings.clip_norm)
    loss_fn = _loss_fn(settings.size_weight, settings.offset_weight)
    targets = [centre_targets(b, grid) for b in boxes]

    @tf.function(reduce_retracing=True)
    def train_step(features, heat, offset, log_size):
        with tf.GradientTape() as tape:
            loss = loss_fn(head(features, training=True), heat, offset, log_size)
        gradients = tape.gradient(loss, head.trainable_variables)
        optimiser.apply_gradients(zip(gradients, head.trainable_variables))
        return loss

    history: list[LocaliserEpoch] = []
    best_weights, best_score = head.get_weights(), -1.0
    for epoch in range(1, settings.epochs + 1):
        started = time.monotonic()
        sampled = rng.permutation(normals)[: settings.normals_per_epoch].tolist()
        order = rng.permutation(fractured + sampled)
        losses = []
        for start in range(0, len(order), settings.batch_size):
            batch = sorted(int(i) for i in order[start : start + settings.batch_size])
            features = _head_input(read_features(batch))
            heat = np.stack([targets[i][0] for i in batch])
            offset = np.stack([targets[i][1] for i in batch])
            log_size = np.stack([targets[i][2] for i in batch])
            losses.append(float(train_step(features, heat, offset, log_size)))
        pointing, ap50 = _held_out_figures(head, read_features, boxes, labels, measured)
        record = LocaliserEpoch(
            epoch, float(np.mean(losses)), pointing, ap50, time.monotonic() - started
        )
        history.append(record)
        logger.info(
            "localiser epoch %d: loss %.4f, held-out pointing %s, AP50 %s (%.0f s)",
            epoch,
            record.loss,
            "-" if pointing is None else f"{pointing:.3f}",
            "-" if ap50 is None else f"{ap50:.3f}",
            record.seconds,
        )
        if on_epoch is not None:
            on_epoch(record)
        score = np.mean([v for v in (pointing, ap50) if v is not None] or [-record.loss])
        if score > best_score:
            best_score, best_weights = float(score), head.get_weights()
    head.set_weights(best_weights)
    return head, history


def predict_outputs(
    head: "keras.Model",
    read_features: FeatureReader,
    items: Sequence[int],
    batch_size: int = 32,
) -> np.ndarray:
    """The head's (n, H, W, 5) outputs for ``items``."""
    chunks = []
    for start in range(0, len(items), batch_size):
        batch = list(items[start : start + batch_size])
        features = _head_input(read_features(batch))
        chunks.append(np.asarray(head(features, training=False), np.float32))
    return np.concatenate(chunks) if chunks else np.zeros((0, 1, 1, 5), np.float32)


def _levels(features: Features) -> tuple[np.ndarray, ...]:
    return features if isinstance(features, tuple) else (features,)


def _head_input(features: Features) -> np.ndarray | list[np.ndarray]:
    """Cached float16 features as the head's float32 input: one array, or a list of levels."""
    levels = [np.asarray(level, np.float32) for level in _levels(features)]
    return levels if len(levels) > 1 else levels[0]


def _held_out_figures(
    head: "keras.Model",
    read_features: FeatureReader,
    boxes: Sequence[Boxes],
    labels: Sequence[int],
    holdout: Sequence[int],
) -> tuple[float | None, float | None]:
    fractured = [i for i in holdout if labels[i] == 1 and boxes[i]]
    if not fractured:
        return None, None
    outputs = predict_outputs(head, read_features, fractured)
    truth = [boxes[i] for i in fractured]
    pointing = pointing_game(list(outputs[..., 0]), truth)["score"]
    detections = [decode_boxes(o) for o in outputs]
    return pointing, average_precision(detections, truth)


@dataclass
class LocaliserFit:
    """A trained head ready to store, with what it measured."""

    localiser: "Localiser"
    history: list[LocaliserEpoch]
    report: dict[str, Any]


def train_and_measure(
    read_features: FeatureReader,
    boxes: Sequence[Boxes],
    labels: Sequence[int],
    holdout: Sequence[int],
    settings: LocaliserTraining,
    *,
    measure_on: Sequence[int] | None = None,
    val_read: FeatureReader | None = None,
    val_boxes: Sequence[Boxes] = (),
    description: str = "",
    input_layers: Sequence[str] = (INPUT_LAYER,),
) -> LocaliserFit:
    """Train a head (:func:`fit_localiser`), choose its box threshold, measure it on val.

    The box threshold is the F1 peak of box detection on the held-out fractured images
    (:func:`~fracture.evaluation.detection.choose_box_threshold`), never on val. Val
    (``val_read``, items ``0..len(val_boxes)-1``, fractured images only) is measured on
    the network's grid: the pointing game of the centre map and box AP50.
    """
    from fracture.evaluation.detection import choose_box_threshold
    from fracture.model.localiser import Localiser

    started = time.monotonic()
    head, history = fit_localiser(
        read_features, boxes, labels, holdout, settings, measure_on=measure_on
    )
    measured = holdout if measure_on is None else measure_on
    held_fractured = [k for k in measured if labels[k] == 1 and boxes[k]]
    outputs = predict_outputs(head, read_features, held_fractured)
    threshold = choose_box_threshold(
        [decode_boxes(o) for o in outputs], [boxes[k] for k in held_fractured]
    )
    seconds = time.monotonic() - started
    report: dict[str, Any] = {
        "box_threshold": threshold,
        "seconds": seconds,
        "epochs": [vars(e) for e in history],
        "settings": vars(settings),
        "n_holdout_fractured": len(held_fractured),
    }
    if val_read is not None and val_boxes:
        items = list(range(len(val_boxes)))
        val_outputs = predict_outputs(head, val_read, items)
        report["val_grid"] = {
            "pointing": pointing_game(list(val_outputs[..., 0]), list(val_boxes))["score"],
            "ap50": average_precision([decode_boxes(o) for o in val_outputs], list(val_boxes)),
            "n": len(items),
        }
    localiser = Localiser.from_head(
        head, input_layers=tuple(input_layers), box_threshold=threshold, trained_on=description
    )
    return LocaliserFit(localiser, history, report)


def fit_for_model(
    model_dir: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    *,
    settings: LocaliserTraining | None = None,
    views: int = 2,
    max_normals: int = 1500,
    holdout_fraction: float = 0.15,
    cache_dir: str | os.PathLike[str] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    input_layers: Sequence[str] = PYRAMID_LAYERS,
    calibrate: bool = True,
) -> LocaliserFit:
    """Train a localisation head for the binary model in ``model_dir`` and store it there.

    The features are the model's own ``input_layers`` as served (its precision): by
    default the two-level head's ``conv3_block4_out`` and ``conv4_block6_out``, of
    ``views`` views of each fractured training image with boxes (view 0 clean, the others
    augmented with their boxes moved) and one view of up to ``max_normals`` normal ones,
    cached on disk like the trainer's (:class:`~fracture.training.cache.FeatureCache`).
    ``holdout_fraction`` of them choose the epoch and the box threshold; val's fractured
    images with boxes are measured. Writes ``localiser.npz`` and the card's ``localiser``
    entry (checksums included). With ``calibrate``, the folder's calibration is then
    refitted on val (:func:`~fracture.evaluation.calibrate.calibrate_model`), which also
    decides whether the new head's peak joins the probability: a weight fitted for an
    older head would be wrong for this one. ``fracture evaluate`` then measures the
    folder as served.
    """
    import keras

    from fracture.config import get_settings
    from fracture.data.layouts import load_dataset
    from fracture.inference.engine import bfloat16_supported, inference_network
    from fracture.model.folder import ModelFolder, load_model
    from fracture.model.imagenet import resolve_imagenet_weights
    from fracture.training.cache import FeatureCache, compute_features
    from fracture.training.config import TrainConfig

    settings = settings or LocaliserTraining()
    folder = ModelFolder(model_dir)
    config, card = folder.read()
    if config.is_multiclass:
        raise ValueError(
            f"{model_dir} is a model of {config.num_outputs} classes; the localisation head "
            "marks fractures, so it is trained for a fracture/normal model only"
        )
    dataset = load_dataset(data_root)
    rng = np.random.default_rng(settings.seed)
    train = dataset.split("train")
    fractured = [r for r in train if r.label == 1 and r.boxes]
    normals = [r for r in train if r.label == 0]
    normals = [normals[i] for i in sorted(rng.permutation(len(normals))[:max_normals])]
    val = [r for r in dataset.split("val") if r.label == 1 and r.boxes]
    if not fractured or not val:
        raise ValueError(
            f"{data_root} needs fractured images with boxes (boxes.csv) in both its train and "
            "val splits to train a localisation head"
        )
    precision = config.inference_precision or "float32"
    if precision == "bfloat16" and not bfloat16_supported():
        precision = "float32"
    loaded = load_model(model_dir, resolve_imagenet_weights(get_settings()).path)
    network = inference_network(loaded.model, precision)
    weights_sha = folder.checksums().get("weights.npz", "")
    cache_config = TrainConfig(image_size=config.image_size, seed=settings.seed)
    # One cache per level: the stem of each is the backbone up to that layer.
    stems = [keras.Model(network.input, network.get_layer(name).output) for name in input_layers]
    caches = [
        FeatureCache(
            Path(cache_dir or get_settings().cache_dir) / "localiser" / name,
            f"localiser|{weights_sha}|{config.image_size}|{precision}|{name}",
        )
        for name in input_layers
    ]

    def features_of(stage: str, records: list, n_views: int):
        progress = None if on_progress is None else lambda d, n: on_progress(stage, d, n)
        levels = [
            compute_features(records, n_views, stem, cache, cache_config, progress)
            for stem, cache in zip(stems, caches)
        ]
        # Every level saw the same images, views and boxes (the seed fixes them).
        return [level[0] for level in levels], levels[0][1], levels[0][2]

    f_features, f_usable, f_boxes = features_of("fractured", fractured, views)
    n_features, n_usable, _ = features_of("normal", normals, 1)
    v_features, v_usable, v_boxes = features_of("val", val, 1)
    # Items: (arrays, view, index) of every usable view; labels and boxes alike.
    items = [(f_features, v, int(i)) for v in range(views) for i in np.flatnonzero(f_usable)]
    items += [(n_features, 0, int(i)) for i in np.flatnonzero(n_usable)]
    labels = [1] * (len(items) - int(n_usable.sum())) + [0] * int(n_usable.sum())
    boxes = [list(f_boxes[v][i]) if a is f_features else [] for a, v, i in items]
    images = sorted({(a is f_features, int(i)) for a, _, i in items})
    held_images = {
        images[k] for k in rng.permutation(len(images))[: int(holdout_fraction * len(images))]
    }
    holdout = [k for k, (a, _, i) in enumerate(items) if (a is f_features, int(i)) in held_images]
    measure_on = [k for k in holdout if items[k][1] == 0]
    val_items = np.flatnonzero(v_usable)

    def read(picked: list[tuple[list[np.ndarray], int, int]]) -> Features:
        levels = tuple(
            np.stack([arrays[level][view, index] for arrays, view, index in picked])
            for level in range(len(stems))
        )
        return levels if len(levels) > 1 else levels[0]

    fit = train_and_measure(
        lambda ks: read([items[k] for k in ks]),
        boxes,
        labels,
        holdout,
        settings,
        measure_on=measure_on,
        val_read=lambda ks: read([(v_features, 0, int(val_items[k])) for k in ks]),
        val_boxes=[list(v_boxes[0][i]) for i in val_items],
        description=(
            f"CenterNet head on the model's frozen {' and '.join(input_layers)} features at "
            f"{config.image_size} px ({precision}): {len(fractured)} fractured train images "
            f"with boxes x {views} views and {len(normals)} normal ones, "
            f"{settings.normals_per_epoch} normal views sampled per epoch; the best of "
            f"{settings.epochs} epochs and the box threshold chosen on "
            f"{len(held_images)} held-out train images"
        ),
        input_layers=input_layers,
    )
    fit.localiser.save(folder.localiser_path)
    folder.rewrite_card(
        card,
        localiser={
            "trained_on": fit.localiser.trained_on,
            "box_threshold": fit.localiser.box_threshold,
            "val_grid": fit.report.get("val_grid"),
        },
    )
    if calibrate:
        from fracture.evaluation.calibrate import calibrate_model

        calibrate_model(model_dir, data_root)
    return fit
