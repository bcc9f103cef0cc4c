"""K-class training from folders: layouts, tasks, typed phantoms, a tiny run, and (slow) learning.

Every image is generated. The slow test trains a 4-class phantom model from
ImageNet weights (skips when they are not available offline).
"""

from __future__ import annotations

import json
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fracture.data.layouts import load_dataset
from fracture.data.phantoms import FRACTURE_TYPES, render_phantom, synthesize_phantoms
from fracture.data.records import DatasetLayoutError
from fracture.training.config import TrainConfig
from fracture.training.tasks import check_splits, resolve_task

from conftest import SHARED, TINY_SIZE

# Odd but valid folder names: a space and an umlaut, a hyphen and capital, an underscore.
ODD = ["Grünstick fracture", "type-B", "no_finding"]
ODD_SORTED = ["Grünstick fracture", "no_finding", "type-B"]  # case-insensitive order


def _image(seed: int, kind: int) -> np.ndarray:
    """A small grey image whose bright band sits where ``kind`` puts it, so classes differ."""
    rng = np.random.default_rng(seed)
    image = rng.normal(40, 8, (48, 40)).clip(0, 255)
    image[:, 4 + 10 * kind : 10 + 10 * kind] += 150
    return np.repeat(image.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _populate(folder: Path, count: int, kind: int, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(_image(start + i, kind)).save(folder / f"img{start + i:04d}.png")


def _odd_dataset(root: Path, per_class: tuple[int, int] = (6, 3)) -> Path:
    for kind, name in enumerate(ODD):
        _populate(root / "train" / name, per_class[0], kind, 100 * kind)
        # macOS writes names decomposed: the val folder spells the umlaut as u + U+0308.
        val_name = unicodedata.normalize("NFD", name)
        _populate(root / "val" / val_name, per_class[1], kind, 100 * kind + 50)
    return root


# --- layouts ---------------------------------------------------------------------------


def test_any_class_names_make_a_k_class_dataset_in_a_stable_order(tmp_path):
    dataset = load_dataset(_odd_dataset(tmp_path / "odd"))
    assert dataset.classes == ODD_SORTED
    assert dataset.summary()["val"] == {**dict.fromkeys(ODD_SORTED, 3), "total": 9}
    for record in dataset.records:
        # The label indexes the class list, whatever the folder's Unicode form.
        folder = unicodedata.normalize("NFC", record.path.parent.name)
        assert dataset.classes[record.label] == folder == record.label_name
    frame = dataset.to_frame()
    assert set(frame["label_name"]) == set(ODD)


def test_fracture_and_normal_folders_stay_binary_and_a_third_name_makes_classes(tmp_path):
    for name, kind in (("fractured", 0), ("normal", 1)):
        _populate(tmp_path / "two" / "train" / name, 3, kind)
        _populate(tmp_path / "three" / "train" / name, 3, kind)
    _populate(tmp_path / "three" / "train" / "oblique", 3, 2)
    binary = load_dataset(tmp_path / "two")
    assert binary.classes is None and {r.label for r in binary.records} == {0, 1}
    three = load_dataset(tmp_path / "three")
    assert three.classes == ["fractured", "normal", "oblique"]


def test_a_flat_root_of_any_class_names_is_read_and_split(tmp_path):
    _populate(tmp_path / "cats", 10, 0)
    _populate(tmp_path / "dogs", 10, 1, 20)
    dataset = load_dataset(tmp_path, val_fraction=0.2)
    assert dataset.classes == ["cats", "dogs"] and dataset.made_splits == ("val",)
    assert dataset.summary()["val"] == {"cats": 2, "dogs": 2, "total": 4}


@pytest.mark.parametrize(
    ("folders", "message"),
    [
        ({"train/type-B": 3}, "only the class folder 'type-B'"),
        ({"train/type-B": 3, "train/oblique": 0}, "'oblique' hold no images"),
        ({"train/Oblique": 3, "val/oblique": 2, "train/type-B": 3}, "differ only in case"),
        ({"train/normal": 3, "train/negative": 3, "train/type-B": 3}, "both mean normal"),
        ({"train/total": 3, "train/type-B": 3}, "cannot be called 'total'"),
    ],
)
def test_bad_class_folders_are_clear_errors(tmp_path, folders, message):
    for index, (folder, count) in enumerate(folders.items()):
        (tmp_path / folder).mkdir(parents=True)
        _populate(tmp_path / folder, count, index % 3)
    with pytest.raises(DatasetLayoutError, match=message):
        load_dataset(tmp_path)


# --- tasks -----------------------------------------------------------------------------


def test_fracture_task_merges_types_and_needs_a_normal_class(tmp_path):
    for kind, name in enumerate(["oblique", "Normal", "transverse"]):
        _populate(tmp_path / "types" / "train" / name, 4, kind, 10 * kind)
        _populate(tmp_path / "types" / "val" / name, 2, kind, 10 * kind + 5)
    dataset = load_dataset(tmp_path / "types")
    classes = resolve_task(dataset, "classes")
    assert classes.classes == ["Normal", "oblique", "transverse"]
    merged = resolve_task(dataset, "fracture")
    assert merged.classes is None and merged.label_names == ["normal", "fractured"]
    records = dataset.split("train")
    assert list(merged.labels(records)) == [int(r.label_name != "Normal") for r in records]
    with pytest.raises(ValueError, match="needs a normal class folder"):
        resolve_task(load_dataset(_odd_dataset(tmp_path / "odd")), "fracture")
    with pytest.raises(ValueError, match="Unknown task"):
        resolve_task(dataset, "regions")


def test_a_val_split_without_some_class_cannot_train(tmp_path):
    root = _odd_dataset(tmp_path / "odd")
    for path in (root / "val" / unicodedata.normalize("NFD", "type-B")).iterdir():
        path.unlink()
    (root / "val" / unicodedata.normalize("NFD", "type-B")).rmdir()
    dataset = load_dataset(root)
    with pytest.raises(ValueError, match="val split .* none of type-B"):
        check_splits(dataset, resolve_task(dataset))


# --- phantoms --------------------------------------------------------------------------


def test_typed_phantoms_write_the_folders_layout_evenly(tmp_path):
    classes = [*FRACTURE_TYPES, "normal"]
    dataset = synthesize_phantoms(tmp_path / "ph", 20, size=64, seed=2, classes=classes)
    assert dataset.classes == sorted(classes)
    totals = {name: sum(row[name] for row in dataset.summary().values()) for name in classes}
    assert totals == dict.fromkeys(classes, 4)
    boxed = {r.label_name for r in dataset.records if r.boxes}
    assert boxed == set(FRACTURE_TYPES)  # every fracture has its box, normals none
    readme = (tmp_path / "ph" / "README.md").read_text()
    assert "NOT CLINICAL DATA" in readme and "comminuted" in readme
    with pytest.raises(ValueError, match="Unknown phantom class"):
        synthesize_phantoms(tmp_path / "bad", 10, size=64, classes=["spiral", "normal"])


def test_the_fracture_type_decides_the_picture():
    def draw(kind: str, seed: int):
        rng = np.random.default_rng([9, seed])
        return render_phantom(rng, 128, fractured=kind != "normal", kind=kind)

    def box_area(kind: str) -> float:
        areas = []
        for seed in range(6):
            x0, y0, x1, y1 = draw(kind, seed).box  # type: ignore[misc]
            areas.append((x1 - x0) * (y1 - y0))
        return float(np.mean(areas))

    # Extra lines make a comminuted break cover more bone than a transverse one.
    assert box_area("comminuted") > 1.5 * box_area("transverse")
    # Same draws up to the fracture: a normal bone and a transverse break differ
    # only around the gap, which removes bone (darker pixels).
    normal, broken = draw("normal", 0), draw("transverse", 0)
    assert broken.box is not None and normal.box is None
    difference = normal.image.astype(int) - broken.image.astype(int)
    x0, y0, x1, y1 = (int(v * 128) for v in broken.box)
    inside = difference[y0 : y1 + 1, x0 : x1 + 1]
    assert inside.sum() > 0.9 * np.clip(difference, 0, None).sum()
    with pytest.raises(ValueError, match="cannot have fractured"):
        render_phantom(np.random.default_rng(0), 64, fractured=True, kind="normal")


# --- a tiny K-class run ----------------------------------------------------------------

TINY = TrainConfig(
    image_size=TINY_SIZE,
    fine_tune_from="conv5_block2_out",
    head_epochs=1,
    epochs=0,
    batch_size=8,
    views=1,
    augment=False,
    seed=4,
)


@pytest.mark.slow
def test_three_odd_classes_train_save_reload_and_predict_three_probabilities(
    tmp_path, use_fake_weights
):
    import keras

    from fracture.config import Settings
    from fracture.inference.preprocess import letterbox
    from fracture.io.images import load_image
    from fracture.model.folder import load_model
    from fracture.training.runs import read_confusion, read_status
    from fracture.training.trainer import train

    root = _odd_dataset(tmp_path / "odd")
    run = tmp_path / "run"
    settings = Settings(cache_dir=tmp_path / "cache", runs_dir=tmp_path / "runs")
    model_dir = train(root, run, TINY, settings=settings)
    assert read_status(run)["state"] == "completed"
    history = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= history[0]["val_auroc"] <= 1.0 and "val_accuracy" in history[0]
    confusion = read_confusion(run)
    assert confusion is not None and confusion["classes"] == ODD_SORTED
    matrix = np.array(confusion["epochs"][-1]["matrix"])
    assert matrix.shape == (3, 3) and matrix.sum(axis=1).tolist() == [3, 3, 3]
    # evaluation.json carries the per-class figures the Model page plots.
    evaluation = json.loads((model_dir / "evaluation.json").read_text())
    assert evaluation["multiclass"]["class_names"] == ODD_SORTED
    assert np.array(evaluation["multiclass"]["confusion_matrix"]).sum(axis=1).tolist() == [3, 3, 3]

    loaded = load_model(model_dir, use_fake_weights)
    assert loaded.config.classes == ODD_SORTED and loaded.config.num_outputs == 3
    # No class means normal, so there is no fracture threshold: the top class is reported.
    assert loaded.config.normal_index is None and loaded.config.thresholds == {}
    card = loaded.card
    assert card["classes"] == ODD_SORTED and card["multiclass"] is True
    assert card["class_counts"]["train"] == {**dict.fromkeys(ODD_SORTED, 6), "total": 18}
    markdown = (model_dir / "model_card.md").read_text()
    assert "Grünstick fracture" in markdown and "most likely class" in markdown

    paths = [r.path for r in load_dataset(root).split("val")]
    images = np.stack([letterbox(load_image(p), TINY_SIZE)[0] for p in paths])
    outputs = loaded.model(images).numpy()
    assert outputs.shape == (9, 3)
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, rtol=1e-5)
    logits = keras.Model(loaded.model.input, loaded.model.get_layer("logit").output)(images)
    calibrated = loaded.config.probabilities(np.asarray(logits))
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)
    assert (calibrated.argmax(axis=1) == outputs.argmax(axis=1)).all()

    # The Predictor, as the CLI and the pages use it: every class's probability, in order.
    from fracture.inference.predictor import Predictor

    predictions = Predictor(loaded, settings=settings, batch_size=4).predict(paths)
    assert all(p.ok for p in predictions)
    for prediction, expected in zip(predictions, calibrated):
        assert list(prediction.class_probabilities or {}) == ODD_SORTED
        values = np.array(list((prediction.class_probabilities or {}).values()))
        np.testing.assert_allclose(values, expected, atol=1e-4)


def test_the_train_page_check_refuses_what_the_trainer_would(tmp_path):
    from fracture.training.jobs import check_training_data

    root = _odd_dataset(tmp_path / "odd")
    assert check_training_data(root).classes == ODD_SORTED
    with pytest.raises(ValueError, match="normal class"):
        check_training_data(root, task="fracture")


# --- learning (slow) -------------------------------------------------------------------


@pytest.mark.slow
def test_four_fracture_types_reach_macro_auroc_095(tmp_path):
    from fracture.config import Settings
    from fracture.model.imagenet import WeightsError, resolve_imagenet_weights
    from fracture.training.trainer import train

    weights = SHARED / "weights" / "resnet50_imagenet_notop.h5"
    if not weights.is_file():
        try:
            weights = resolve_imagenet_weights(allow_download=False).path
        except WeightsError as error:
            pytest.skip(f"ImageNet weights unavailable offline: {error}")
    settings = Settings(cache_dir=tmp_path / "c", imagenet_weights=weights)
    data = tmp_path / "types"
    synthesize_phantoms(data, 400, size=160, seed=7, classes=list(FRACTURE_TYPES))
    # Epochs are cheap once the frozen stem's features are cached (a few seconds each
    # here), so the run trains longer and faster than the binary defaults.
    config = TrainConfig(
        image_size=128,
        fine_tune_from="conv5_block2_out",
        head_epochs=4,
        epochs=10,
        head_lr=3e-3,
        lr=3e-4,
        patience=4,
        batch_size=16,
        views=2,
        seed=0,
    )
    started = time.time()
    model_dir = train(data, tmp_path / "run", config, settings=settings)
    report = json.loads((model_dir / "evaluation.json").read_text())
    print(
        f"4-class phantom run: {time.time() - started:.0f} s, val macro AUROC "
        f"{report['auroc']:.3f}, accuracy {report['accuracy']:.3f}"
    )
    assert report["classes"] == sorted(FRACTURE_TYPES)
    assert report["auroc"] >= 0.95, report["auroc"]


def test_export_and_recalibration_refuse_a_k_class_model_instead_of_misreading_it(
    tmp_path, fake_imagenet_weights
):
    from fracture.evaluation.calibrate import calibrate_model
    from fracture.inference.export import ExportError, export_model
    from fracture.model.folder import (
        ModelConfig,
        imagenet_reference,
        load_model,
        save_model,
    )
    from fracture.model.network import build_classifier

    config = ModelConfig(image_size=TINY_SIZE, fine_tune_from="conv5_block2_out", classes=ODD)
    model = build_classifier(config, fake_imagenet_weights)
    save_model(model, config, tmp_path / "k", reference=imagenet_reference(model, config))
    loaded = load_model(tmp_path / "k", fake_imagenet_weights)
    with pytest.raises(ExportError, match="3 classes"):
        export_model(loaded, "onnx", tmp_path / "export")
    with pytest.raises(ValueError, match="3 classes"):
        calibrate_model(tmp_path / "k", _odd_dataset(tmp_path / "odd"))


def test_a_k_class_report_with_a_normal_class_calls_any_fracture_its_auroc():
    """'auroc' means what evaluate means by it; the mean over classes stays beside it."""
    from sklearn.metrics import roc_auc_score

    from fracture.model.folder import ModelConfig
    from fracture.training.trainer import _class_report

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 30)
    logits = rng.normal(size=(90, 3)) + 1.5 * np.eye(3)[labels]
    config = ModelConfig(
        classes=["normal", "oblique", "transverse"],
        thresholds={"high_sensitivity": 0.3, "high_specificity": 0.7},
    )
    report = _class_report(labels, logits, config)
    probabilities = config.probabilities(logits)
    assert report["auroc"] == pytest.approx(roc_auc_score(labels != 0, 1 - probabilities[:, 0]))
    assert report["macro_auroc"] == pytest.approx(
        roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
    )
    assert report["auroc"] != pytest.approx(report["macro_auroc"])
