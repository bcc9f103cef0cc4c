"""Dataset layouts, leak-free splits, phantoms, augmentation and the tf.data pipeline.

Every fixture is generated in a temporary folder; only the last test reads
../shared/data/fracatlas, and it skips where that is absent.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fracture.data.augment import augment_radiograph
from fracture.data.fracatlas import import_fracatlas
from fracture.data.layouts import load_dataset
from fracture.data.phantoms import REGION, synthesize_phantoms
from fracture.data.records import (
    CLASS_SYNONYMS,
    Dataset,
    DatasetLayoutError,
    Record,
    label_from_name,
)
from fracture.data.splits import find_duplicates
from fracture.io.images import load_image

from conftest import radiograph_like


def _write(path: Path, seed: int, suffix_format: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(radiograph_like(seed, height=48, width=40)).save(path, format=suffix_format)
    return path


def _populate(folder: Path, count: int, start: int = 0, suffix: str = ".png") -> list[Path]:
    return [_write(folder / f"img{start + i:04d}{suffix}", start + i) for i in range(count)]


def _names(records: list[Record]) -> set[str]:
    return {record.path.name for record in records}


# --- folders layout -------------------------------------------------------------------


def test_label_synonyms_are_case_insensitive() -> None:
    assert CLASS_SYNONYMS["fracture"] >= {"fractured", "positive", "abnormal", "1"}
    for name in ["Fractured", "FRACTURE", "positive", "Abnormal", "1"]:
        assert label_from_name(name) == 1
    for name in ["normal", "Non_fractured", "non-fractured", "NEGATIVE", "0"]:
        assert label_from_name(name) == 0
    assert label_from_name("cats") is None


def test_split_folders_with_synonyms(tmp_path: Path) -> None:
    _populate(tmp_path / "train" / "positive", 3, 0)
    _populate(tmp_path / "train" / "Negative", 4, 10)
    _populate(tmp_path / "val" / "1", 2, 20)
    _populate(tmp_path / "val" / "0", 2, 30)
    _populate(tmp_path / "test" / "abnormal", 1, 40)
    _populate(tmp_path / "test" / "normal", 1, 50)

    dataset = load_dataset(tmp_path)

    assert dataset.layout == "folders"
    assert dataset.made_splits == ()
    assert dataset.summary() == {
        "train": {"fractured": 3, "normal": 4, "total": 7},
        "val": {"fractured": 2, "normal": 2, "total": 4},
        "test": {"fractured": 1, "normal": 1, "total": 2},
    }
    assert all(record.path.is_absolute() for record in dataset.records)
    by_name = {record.path.name: record for record in dataset.records}
    assert by_name["img0020.png"].label == 1 and by_name["img0020.png"].split == "val"
    assert by_name["img0030.png"].label == 0


def test_flat_layout_gets_a_seeded_stratified_split(tmp_path: Path) -> None:
    _populate(tmp_path / "fractured", 10, 0)
    _populate(tmp_path / "normal", 30, 100)

    first = load_dataset(tmp_path, val_fraction=0.25, seed=7)
    again = load_dataset(tmp_path, val_fraction=0.25, seed=7)
    other = load_dataset(tmp_path, val_fraction=0.25, seed=8)

    assert first.made_splits == ("val",)
    assert [(r.path, r.split) for r in first.records] == [(r.path, r.split) for r in again.records]
    assert _names(first.split("val")) != _names(other.split("val"))
    summary = first.summary()
    assert summary["val"]["total"] == 10
    # Stratified: the 1:3 class ratio is kept on both sides.
    assert summary["val"]["fractured"] in (2, 3) and summary["train"]["fractured"] >= 7
    assert summary["val"]["normal"] > 0 and summary["train"]["normal"] > 0
    assert sum(c["total"] for c in summary.values()) == 40


def test_train_only_gets_val_and_test_carved_from_train(tmp_path: Path) -> None:
    _populate(tmp_path / "train" / "fractured", 10, 0)
    _populate(tmp_path / "train" / "normal", 10, 100)

    dataset = load_dataset(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=0)

    assert set(dataset.made_splits) == {"val", "test"}
    summary = dataset.summary()
    assert summary["val"] == {"fractured": 2, "normal": 2, "total": 4}
    assert summary["test"] == {"fractured": 2, "normal": 2, "total": 4}
    assert summary["train"]["total"] == 12


def test_unrecognised_layout_names_the_folder(tmp_path: Path) -> None:
    _populate(tmp_path / "pictures", 2)
    with pytest.raises(DatasetLayoutError) as caught:
        load_dataset(tmp_path)
    message = str(caught.value)
    assert str(tmp_path.resolve()) in message
    assert "folders" in message and "fracatlas" in message and "mura" in message

    _populate(tmp_path / "train" / "cats", 2)
    with pytest.raises(DatasetLayoutError, match="cats"):
        load_dataset(tmp_path)

    with pytest.raises(DatasetLayoutError, match="does not exist"):
        load_dataset(tmp_path / "missing")


def test_side_files_attach_regions_hardware_and_boxes(tmp_path: Path) -> None:
    _populate(tmp_path / "train" / "fractured", 2, 0)
    _populate(tmp_path / "train" / "normal", 2, 10)
    _populate(tmp_path / "val" / "fractured", 1, 20)
    _populate(tmp_path / "val" / "normal", 1, 30)
    (tmp_path / "manifest.csv").write_text(
        "path,region,hardware,extra\n"
        "train/fractured/img0000.png,hand,1,x\n"
        "train/normal/img0010.png,leg,0,y\n"
        "gone/img9999.png,hip,0,z\n"
    )
    (tmp_path / "boxes.csv").write_text(
        "path,x0,y0,x1,y1\n"
        "train/fractured/img0000.png,0.1,0.2,0.3,0.4\n"
        "train/fractured/img0000.png,0.5,0.5,0.6,0.7\n"
    )

    dataset = load_dataset(tmp_path)

    by_name = {record.path.name: record for record in dataset.records}
    assert by_name["img0000.png"].region == "hand"
    assert by_name["img0000.png"].hardware is True
    assert by_name["img0010.png"].hardware is False
    assert by_name["img0001.png"].region is None and by_name["img0001.png"].hardware is None
    assert by_name["img0000.png"].boxes == ((0.1, 0.2, 0.3, 0.4), (0.5, 0.5, 0.6, 0.7))

    frame = dataset.to_frame()
    assert list(frame.columns) == [
        "path",
        "rel_path",
        "label",
        "label_name",
        "split",
        "region",
        "hardware",
        "group",
        "n_boxes",
    ]
    assert len(frame) == 6
    row = frame.set_index("rel_path").loc["train/fractured/img0000.png"]
    assert row["n_boxes"] == 2 and row["label_name"] == "fractured" and row["label"] == 1

    (tmp_path / "boxes.csv").write_text(
        "path,x0,y0,x1,y1\ntrain/fractured/img0000.png,10,20,30,40\n"
    )
    with pytest.raises(DatasetLayoutError, match="normalised"):
        load_dataset(tmp_path)


# --- FracAtlas as published -----------------------------------------------------------

# image_id, hand, leg, hip, shoulder, mixed, hardware, fractured
_FRACATLAS_ROWS = [
    ("IMG0000001.jpg", 1, 0, 0, 0, 0, 0, 1),
    ("IMG0000002.jpg", 0, 1, 0, 0, 0, 1, 1),
    ("IMG0000003.jpg", 1, 0, 0, 1, 1, 0, 1),
    ("IMG0000004.jpg", 0, 0, 1, 0, 0, 0, 1),
    ("IMG0000005.jpg", 0, 1, 0, 0, 0, 0, 1),
    ("IMG0000006.jpg", 0, 0, 0, 1, 0, 0, 1),
] + [(f"IMG00001{i:02d}.jpg", i % 2, (i + 1) % 2, 0, 0, 0, 0, 0) for i in range(10)]


def _make_fracatlas(root: Path) -> dict[str, tuple[float, float, float, float]]:
    """A tiny copy of the published layout; returns the expected normalised box per image."""
    header = [
        "image_id",
        "hand",
        "leg",
        "hip",
        "shoulder",
        "mixed",
        "hardware",
        "multiscan",
        "fractured",
        "fracture_count",
        "frontal",
        "lateral",
        "oblique",
    ]
    rows, images, annotations, expected = [], [], [], {}
    for index, (name, hand, leg, hip, shoulder, mixed, hardware, fractured) in enumerate(
        _FRACATLAS_ROWS
    ):
        folder = "Fractured" if fractured else "Non_fractured"
        width, height = (40, 48) if index % 2 else (48, 40)
        image = Image.fromarray(radiograph_like(index, height=height, width=width))
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        image.save(root / "images" / folder / name, format="JPEG")
        rows.append(
            [name, hand, leg, hip, shoulder, mixed, hardware, 0, fractured, fractured, 1, 0, 0]
        )
        images.append({"id": index, "file_name": name, "width": width, "height": height})
        if fractured:
            x, y, w, h = 4.0, 8.0, 10.0, 20.0
            annotations.append(
                {"id": index, "image_id": index, "category_id": 1, "bbox": [x, y, w, h]}
            )
            expected[name] = (x / width, y / height, (x + w) / width, (y + h) / height)
    with (root / "dataset.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    coco = root / "Annotations" / "COCO JSON" / "COCO_fracture_masks.json"
    coco.parent.mkdir(parents=True)
    coco.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": 1, "name": "fractured"}],
            }
        )
    )
    return expected


def test_fracatlas_published_layout(tmp_path: Path) -> None:
    expected_boxes = _make_fracatlas(tmp_path)

    dataset = load_dataset(tmp_path, val_fraction=0.25, seed=1)

    assert dataset.layout == "fracatlas"
    assert dataset.made_splits == ("val",)
    by_name = {record.path.name: record for record in dataset.records}
    assert len(by_name) == 16
    assert by_name["IMG0000001.jpg"].region == "hand"
    assert by_name["IMG0000002.jpg"].region == "leg" and by_name["IMG0000002.jpg"].hardware is True
    assert by_name["IMG0000003.jpg"].region == "mixed"
    assert by_name["IMG0000004.jpg"].region == "hip"
    assert by_name["IMG0000006.jpg"].region == "shoulder"
    assert by_name["IMG0000005.jpg"].hardware is False
    for name, box in expected_boxes.items():
        (found,) = by_name[name].boxes
        assert found == pytest.approx(box)
        assert all(0.0 <= v <= 1.0 for v in by_name[name].boxes[0])
    assert not any(record.boxes for record in dataset.records if record.label == 0)
    summary = dataset.summary()
    assert summary["val"]["fractured"] >= 1 and summary["val"]["normal"] >= 1


def test_import_fracatlas_round_trips(tmp_path: Path) -> None:
    src, dest = tmp_path / "FracAtlas", tmp_path / "imported"
    _make_fracatlas(src)
    published = load_dataset(src, val_fraction=0.25, seed=3)

    imported = import_fracatlas(src, dest, val_fraction=0.25, seed=3)

    assert imported.layout == "folders" and imported.made_splits == ()
    assert (dest / "manifest.csv").is_file() and (dest / "boxes.csv").is_file()

    def key(record: Record) -> tuple:
        return (
            record.path.name,
            record.label,
            record.split,
            record.region,
            record.hardware,
            tuple(tuple(round(v, 5) for v in box) for box in record.boxes),
        )

    assert sorted(map(key, imported.records)) == sorted(map(key, published.records))
    assert all(record.path.parent.parent.parent == dest for record in imported.records)
    reloaded = load_dataset(dest)
    assert sorted(map(key, reloaded.records)) == sorted(map(key, imported.records))

    with pytest.raises(FileExistsError):
        import_fracatlas(src, dest)
    with pytest.raises(DatasetLayoutError, match="not FracAtlas"):
        import_fracatlas(dest, tmp_path / "again")


# --- MURA -----------------------------------------------------------------------------


def _make_mura(root: Path, patients: int = 14) -> None:
    index = 0
    for patient in range(patients):
        # Every fourth patient has studies in both regions, as in MURA.
        both = ["XR_ELBOW", "XR_HAND"]
        regions = both if patient % 4 == 0 else [both[patient % 2]]
        for region in regions:
            for study, outcome in enumerate(["positive", "negative"][: 1 + patient % 2], start=1):
                if patient % 3 == 0:
                    outcome = "negative"
                folder = root / region / f"patient{patient:05d}" / f"study{study}_{outcome}"
                for image in range(2):
                    _write(folder / f"image{image + 1}.png", index)
                    index += 1


def test_mura_split_is_by_patient(tmp_path: Path) -> None:
    _make_mura(tmp_path)

    dataset = load_dataset(tmp_path, val_fraction=0.3, test_fraction=0.2, seed=0)

    assert dataset.layout == "mura"
    assert {record.region for record in dataset.records} == {"elbow", "hand"}
    assert all(record.group and record.group.startswith("patient") for record in dataset.records)
    splits_of: dict[str, set[str]] = {}
    for record in dataset.records:
        splits_of.setdefault(record.group, set()).add(record.split)
    assert all(len(splits) == 1 for splits in splits_of.values()), splits_of
    assert {"train", "val", "test"} <= {record.split for record in dataset.records}
    positive = [r for r in dataset.records if "positive" in r.path.parent.name]
    assert positive and all(record.label == 1 for record in positive)


def test_mura_train_valid_folders_are_used(tmp_path: Path) -> None:
    _make_mura(tmp_path / "train", patients=6)
    _make_mura(tmp_path / "valid", patients=3)

    dataset = load_dataset(tmp_path)

    assert dataset.layout == "mura" and dataset.made_splits == ()
    assert {r.split for r in dataset.records} == {"train", "val"}
    assert all(
        (r.split == "val") == (r.path.relative_to(tmp_path).parts[0] == "valid")
        for r in dataset.records
    )


# --- phantoms -------------------------------------------------------------------------


def test_phantoms(tmp_path: Path) -> None:
    dataset = synthesize_phantoms(tmp_path / "a", 12, size=64, seed=3)

    assert isinstance(dataset, Dataset) and dataset.layout == "folders"
    assert len(dataset.records) == 12
    fractured = [record for record in dataset.records if record.label == 1]
    assert len(fractured) == 6
    assert {record.split for record in dataset.records} == {"train", "val"}
    assert all(record.region == REGION and record.hardware is False for record in dataset.records)
    with (tmp_path / "a" / "boxes.csv").open() as handle:
        box_rows = list(csv.DictReader(handle))
    assert len(box_rows) == 6
    assert {row["path"].split("/")[1] for row in box_rows} == {"fractured"}
    for record in dataset.records:
        assert len(record.boxes) == record.label
        for x0, y0, x1, y1 in record.boxes:
            assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0
    assert "SYNTHETIC" in (tmp_path / "a" / "README.md").read_text()

    image = load_image(dataset.records[0].path)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert np.array_equal(image[..., 0], image[..., 2])

    again = synthesize_phantoms(tmp_path / "b", 12, size=64, seed=3)
    other = synthesize_phantoms(tmp_path / "c", 12, size=64, seed=4)
    for first, second in zip(dataset.records, again.records):
        assert first.path.read_bytes() == second.path.read_bytes()
    assert (tmp_path / "a" / "boxes.csv").read_text() == (tmp_path / "b" / "boxes.csv").read_text()
    assert any(
        a.path.read_bytes() != b.path.read_bytes() for a, b in zip(dataset.records, other.records)
    )
    with pytest.raises(FileExistsError):
        synthesize_phantoms(tmp_path / "a", 4, size=64)


# --- augmentation and the tf.data pipeline --------------------------------------------


def test_augment_radiograph_keeps_shape_dtype_and_greyness() -> None:
    grey = radiograph_like(1, height=60, width=44)
    for seed in range(5):
        out = augment_radiograph(grey, np.random.default_rng(seed))
        assert out.shape == grey.shape and out.dtype == np.uint8
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    again = augment_radiograph(grey, np.random.default_rng(4))
    assert np.array_equal(again, augment_radiograph(grey, np.random.default_rng(4)))
    assert not np.array_equal(again, augment_radiograph(grey, np.random.default_rng(5)))

    colour = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    out = augment_radiograph(colour, np.random.default_rng(0))
    assert out.shape == colour.shape and out.dtype == np.uint8
    with pytest.raises(ValueError):
        augment_radiograph(grey.astype(np.float32), np.random.default_rng(0))


def test_listing_does_not_decode_images(tmp_path: Path) -> None:
    _populate(tmp_path / "train" / "fractured", 3, 0)
    _populate(tmp_path / "train" / "normal", 3, 10)
    broken = tmp_path / "train" / "normal" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    dataset = load_dataset(tmp_path, val_fraction=0.0)
    assert broken in {record.path for record in dataset.records}
    assert len(dataset.records) == 7


def test_find_duplicates_across_splits(tmp_path: Path) -> None:
    originals = _populate(tmp_path / "train" / "fractured", 3, 0)
    _populate(tmp_path / "train" / "normal", 3, 10)
    _populate(tmp_path / "val" / "normal", 2, 20)
    _populate(tmp_path / "val" / "fractured", 1, 30)
    copy = tmp_path / "val" / "fractured" / "copy.png"
    shutil.copy(originals[1], copy)
    shutil.copy(originals[2], tmp_path / "train" / "normal" / "same_split_copy.png")

    pairs = find_duplicates(load_dataset(tmp_path).records)

    assert pairs == [(originals[1].resolve(), copy.resolve())]


# --- command line ---------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    from fracture.cli.main import main

    return main(argv)


def test_cli_synth_info_and_layout_error(tmp_path: Path, capsys) -> None:
    assert _cli(["data", "synth", str(tmp_path / "ph"), "--n", "6", "--size", "64"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out

    assert _cli(["data", "info", str(tmp_path / "ph")]) == 0
    out = capsys.readouterr().out
    assert "folders" in out and "train" in out and REGION in out

    _populate(tmp_path / "odd" / "stuff", 1)
    assert _cli(["data", "info", str(tmp_path / "odd")]) == 2
    assert "odd" in capsys.readouterr().err


# --- real data (skips without ../shared) ----------------------------------------------


def test_real_fracatlas_counts(shared_fracatlas: Path) -> None:
    dataset = load_dataset(shared_fracatlas)

    assert dataset.layout == "folders" and dataset.made_splits == ()
    summary = dataset.summary()
    assert (summary["train"]["fractured"], summary["train"]["normal"]) == (527, 2506)
    assert (summary["val"]["fractured"], summary["val"]["normal"]) == (74, 334)
    assert all(record.region is not None for record in dataset.records)
    assert all(record.hardware is not None for record in dataset.records)
    boxed = [record for record in dataset.records if record.boxes]
    assert len(boxed) > 300 and all(record.label == 1 for record in boxed)
