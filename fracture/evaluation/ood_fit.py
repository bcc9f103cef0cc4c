"""Fit the out-of-distribution gate of a model folder on a dataset, and measure how well it works.

The gate's maths is :mod:`fracture.inference.ood`; this module feeds it the
pooled features of real images (through a :class:`Predictor`) and of probe
images that are not radiographs at all.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from fracture.inference.ood import (
    DEFAULT_COMPONENTS,
    DEFAULT_FALSE_ALARM_RATE,
    AnyOODGate,
    Features,
    LayeredOODGate,
    fit_layered_ood_gate,
)
from fracture.model.folder import ModelFolder

if TYPE_CHECKING:
    from fracture.inference.predictor import Predictor

__all__ = ["fit_for_model", "extract_features", "measure", "ood_probe_images"]


def extract_features(
    predictor: "Predictor",
    sources: Sequence[Any],
    *,
    names: Sequence[str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Pooled features of the readable ``sources`` by layer, (M, D) each, and their indices.

    No Grad-CAM. The layers are those of
    :meth:`~fracture.inference.engine.BatchOutput.gate_features`; with no readable
    source the mapping is empty.
    """
    rows: dict[str, list[np.ndarray]] = {}
    kept: list[int] = []
    for index, result in enumerate(predictor.iter_predict(sources, names=names, with_cam=False)):
        if result.ok and result.features is not None:
            for layer, values in result.features.items():
                rows.setdefault(layer, []).append(np.array(values, np.float32))
            kept.append(index)
        if on_progress:
            on_progress(index + 1, len(sources))
    return {layer: np.stack(values) for layer, values in rows.items()}, kept


def fit_for_model(
    model_dir: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    *,
    predictor: "Predictor | None" = None,
    max_train: int | None = None,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    n_components: int = DEFAULT_COMPONENTS,
    seed: int = 0,
    val_fraction: float = 0.15,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> LayeredOODGate:
    """Fit the gate of the model in ``model_dir`` on ``data_root`` and store it there.

    Features of the dataset's ``train`` split fit one Gaussian per layer, with a
    mean per class (at most
    ``max_train`` images, a seeded random subset, to bound the time on a
    CPU); the ``val`` split sets the threshold. Writes ``model_dir/ood.npz``,
    then re-writes the checksums and an ``ood`` summary in the model card, each
    atomically, so that :func:`fracture.model.folder.read_config` keeps verifying the
    folder. A ``predictor`` of the same model folder gets the new gate too.

    ``seed`` and ``val_fraction`` must be the training run's when the dataset
    has no val split on disk (it is then carved here exactly as training
    carved it); otherwise images the classifier was trained on could become
    the "held-out" set, and their lower scores would set too low a threshold.
    """
    from fracture.data.layouts import load_dataset

    model_dir = Path(model_dir)
    ModelFolder(model_dir).read()  # refuse a corrupt folder before spending minutes on it
    if predictor is None:
        from fracture.inference.predictor import load_predictor

        predictor = load_predictor(model_dir)
    dataset = load_dataset(data_root, val_fraction=val_fraction, seed=seed)
    train_records, val_records = dataset.split("train"), dataset.split("val")
    if not train_records or not val_records:
        raise ValueError(
            f"{data_root} needs both a train and a val split to fit an OOD gate "
            f"(splits: {dataset.summary()})"
        )
    if max_train is not None and len(train_records) > max_train:
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(train_records), max_train, replace=False))
        train_records = [train_records[i] for i in chosen]

    def progress(stage: str) -> Callable[[int, int], None] | None:
        if on_progress is None:
            return None
        return lambda done, total: on_progress(stage, done, total)

    train_features, train_kept = extract_features(
        predictor, [r.path for r in train_records], on_progress=progress("train")
    )
    heldout_features, heldout_kept = extract_features(
        predictor, [r.path for r in val_records], on_progress=progress("val")
    )
    if len(train_kept) < 2 or not heldout_kept:
        raise ValueError(f"too few readable images in {data_root} to fit an OOD gate")
    # One mean per class (Lee et al. 2018), so that fractured images with plates or
    # casts are measured against fractured images (fracture.inference.ood).
    gate = fit_layered_ood_gate(
        train_features,
        heldout_features,
        false_alarm_rate=false_alarm_rate,
        n_components=n_components,
        train_labels=np.array([train_records[i].label for i in train_kept]),
        heldout_labels=np.array([val_records[i].label for i in heldout_kept]),
    )
    folder = ModelFolder(model_dir)
    # Between the two atomic writes a reader of a folder that already had a
    # gate sees the new ood.npz with the old checksum and refuses the folder
    # ("half-written"); that is the safe side of the race.
    gate.save(folder.ood_path)
    # The precision is recorded because features computed in bfloat16 differ
    # slightly from float32 ones: a gate is calibrated for the precision it was fitted in.
    precision = str(getattr(predictor, "precision", "float32"))
    folder.rewrite_card(folder.read_card(), ood={**gate.summary(), "fitted_precision": precision})
    if predictor.loaded.directory is not None and _same_path(predictor.loaded.directory, model_dir):
        predictor.ood_gate = gate
    return gate


def _same_path(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def measure(gate: AnyOODGate, in_features: Features, out_features: Features) -> dict[str, Any]:
    """How well the gate separates in-distribution from out-of-distribution features.

    AUROC of the score for "is OOD" (scikit-learn), the false-alarm rate (ID
    flagged) and the detection rate (OOD flagged) at the gate's threshold.
    ``in_features`` must be images the gate was *not* fitted on.
    """
    from sklearn.metrics import roc_auc_score

    in_scores = gate.score(in_features)
    out_scores = gate.score(out_features)
    if not (in_scores.size and out_scores.size):
        raise ValueError("measuring the OOD gate needs in- and out-of-distribution images")
    labels = np.concatenate([np.zeros(in_scores.size), np.ones(out_scores.size)])
    scores = np.concatenate([in_scores, out_scores])
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "false_alarm_rate": float(np.mean(in_scores > gate.threshold)),
        "detection_rate": float(np.mean(out_scores > gate.threshold)),
        "threshold": gate.threshold,
        "n_in": int(in_scores.size),
        "n_out": int(out_scores.size),
        "in_score_median": float(np.median(in_scores)),
        "out_score_median": float(np.median(out_scores)),
    }


def ood_probe_images(seed: int = 0) -> dict[str, np.ndarray]:
    """Images that are *not* bone radiographs, as (H, W, 3) uint8 arrays, for measuring the gate.

    Photos from :mod:`skimage.data` (shipped with scikit-image, no download),
    including grey ones that are hard cases (``camera``, ``moon``, ``coins``,
    the Shepp-Logan CT phantom), generated noise, a rendered text page,
    nearly blank frames (exactly blank ones are refused by
    :func:`fracture.io.images.load_image`, so a faint noise keeps them valid
    arrays) and a synthetic chest-CT-like slice. Arrays bypass
    ``load_image``: the Predictor accepts them as they are.
    """
    try:
        import skimage.data as data
    except ImportError as error:  # a development dependency (requirements-dev.txt)
        raise ImportError(
            "the OOD probe images come from scikit-image's sample data; install "
            "scikit-image (see requirements-dev.txt) to measure the gate"
        ) from error

    rng = np.random.default_rng(seed)
    probes: dict[str, np.ndarray] = {}
    photos = (
        "astronaut",
        "coffee",
        "chelsea",
        "rocket",
        "camera",
        "coins",
        "hubble_deep_field",
        "immunohistochemistry",
        "moon",
        "page",
        "text",
        "clock",
        "brick",
        "grass",
        "gravel",
        "cell",
        "colorwheel",
        "retina",
        "microaneurysms",
    )
    for name in photos:
        probes[name] = _to_rgb_uint8(getattr(data, name)())
    probes["horse_silhouette"] = _to_rgb_uint8(data.horse())
    probes["binary_blobs"] = _to_rgb_uint8(data.binary_blobs(length=256, rng=seed))
    probes["logo_on_white"] = _to_rgb_uint8(data.logo())
    probes["shepp_logan_ct_phantom"] = _to_rgb_uint8(data.shepp_logan_phantom())
    probes["uniform_noise"] = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    probes["gaussian_noise_grey"] = _to_rgb_uint8(rng.normal(128, 40, (256, 256)))
    probes["text_document"] = _text_page(rng)
    for name, level in (("near_white", 250), ("near_black", 3), ("near_grey", 128)):
        probes[f"{name}_frame"] = _to_rgb_uint8(level + rng.normal(0, 1.0, (224, 224)))
    probes["synthetic_chest_ct"] = _synthetic_chest_ct(rng)
    probes["smooth_gradient"] = _to_rgb_uint8(np.linspace(0, 255, 256)[None, :].repeat(192, axis=0))
    return probes


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any skimage.data array (bool, float, grey, RGBA, large) as (H, W, 3) uint8, side <= 1024."""
    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        low, high = float(np.min(array)), float(np.max(array))
        if low >= 0 and high <= 255 and np.issubdtype(array.dtype, np.integer):
            array = array.astype(np.uint8)
        elif low >= 0 and high <= 1.0:
            array = np.round(array * 255).astype(np.uint8)
        else:
            array = np.clip(np.round(array), 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.shape[2] == 4:  # RGBA: composite on white, as a web page shows it
        alpha = array[..., 3:4].astype(np.float32) / 255.0
        array = np.round(array[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    if max(array.shape[:2]) > 1024:
        step = int(math.ceil(max(array.shape[:2]) / 1024))
        array = array[::step, ::step]
    return np.ascontiguousarray(array[..., :3])


def _text_page(rng: np.random.Generator) -> np.ndarray:
    """A white A4-like page with lines of black text, like a scanned letter uploaded by mistake."""
    from PIL import Image, ImageDraw, ImageFont

    page = Image.new("RGB", (420, 594), "white")
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=14)
    words = (
        "patient",
        "report",
        "fracture",
        "radiograph",
        "the",
        "of",
        "and",
        "left",
        "distal",
        "radius",
        "no",
        "acute",
        "findings",
        "impression",
        "view",
    )
    for line in range(26):
        text = " ".join(rng.choice(words, size=int(rng.integers(4, 9))))
        draw.text((30, 30 + line * 20), text, fill="black", font=font)
    return np.asarray(page, dtype=np.uint8).copy()


def _synthetic_chest_ct(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """An axial chest-CT-like slice: body ellipse, two dark lungs, a bright spine, noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    image = np.zeros((size, size))
    body = ((xx - 0.5) / 0.44) ** 2 + ((yy - 0.52) / 0.34) ** 2 <= 1.0
    image[body] = 110.0
    for centre_x in (0.32, 0.68):
        lung = ((xx - centre_x) / 0.14) ** 2 + ((yy - 0.47) / 0.22) ** 2 <= 1.0
        image[lung] = 15.0
    spine = ((xx - 0.5) / 0.06) ** 2 + ((yy - 0.76) / 0.06) ** 2 <= 1.0
    image[spine] = 240.0
    heart = ((xx - 0.54) / 0.11) ** 2 + ((yy - 0.52) / 0.1) ** 2 <= 1.0
    image[heart] = 140.0
    image += rng.normal(0, 6.0, image.shape)
    return _to_rgb_uint8(np.clip(image, 0, 255))
