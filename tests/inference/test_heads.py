"""The hardware head: metal implant visible, and the caution it adds to every result.

It shares the region head's code (fracture.inference.heads, fracture.evaluation.region_fit);
these tests fit it on generated images whose 'plate' is a bright bar, and check that
where it fires the page's table, the CSV, the ZIP, the SR and the Secondary Capture
all carry the caution, and where the OOD gate flags the input nothing does.
"""

from __future__ import annotations

import csv
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from fracture.evaluation.region_fit import fit_feature_head, fit_hardware_for_model, hardware_report
from fracture.inference.heads import FeatureHeadError, HardwareHead
from fracture.inference.verdict import METAL_CAUTION


def _plated_dataset(root: Path, per_split: dict[str, int]) -> Path:
    """Folders layout with a hardware column: 'plated' images carry a bright bar (the plate)."""
    rows = ["path,region,hardware"]
    rng = np.random.default_rng(9)
    for split, count in per_split.items():
        for index in range(count):
            plated = index % 2 == 0
            label = "fractured" if index % 4 < 2 else "normal"
            image = rng.normal(90, 12, (64, 64))
            if plated:
                image[8:56, 26:38] = 255
            relative = f"{split}/{label}/{'plate' if plated else 'bone'}-{index:03d}.png"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / relative)
            rows.append(f"{relative},hand,{int(plated)}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_fitted_on_separable_features_it_finds_the_metal_and_reports_auroc():
    rng = np.random.default_rng(0)
    labels = ["present" if i % 3 == 0 else "absent" for i in range(90)]
    features = rng.normal(size=(90, 16))
    features[:, 0] += np.array([3.0 if label == "present" else 0.0 for label in labels])
    head = fit_feature_head(features[:60], labels[:60], HardwareHead)
    assert isinstance(head, HardwareHead) and head.classes == ("absent", "present")
    report = hardware_report(head, features[60:], labels[60:])
    assert report["auroc"] > 0.9 and report["accuracy"]["rate"] >= 0.8
    assert report["n"] == 30 and report["n_hardware"] == 10
    shuffled = hardware_report(head, features[60:], labels[60:][::-1])
    assert shuffled["auroc"] < report["auroc"]


def test_a_head_without_a_present_class_is_refused(tmp_path):
    with pytest.raises(FeatureHeadError, match="'present' class"):
        HardwareHead(("a", "b"), np.zeros((4, 2), np.float32), np.zeros(2, np.float32))
    path = tmp_path / "head.npz"
    HardwareHead(("absent", "present"), np.ones((4, 2), np.float32), np.zeros(2, np.float32)).save(
        path
    )
    assert HardwareHead.load(path).classes == ("absent", "present")


def test_fit_on_a_model_folder_then_results_carry_the_caution(
    tmp_path: Path, tiny_model_dir: Path, use_fake_weights: Path
):
    from fracture.inference.predictor import load_predictor
    from fracture.model.folder import HARDWARE_FILE, ModelFolder, read_config
    from fracture.views import results

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    data = _plated_dataset(tmp_path / "data", {"train": 24, "val": 12})
    predictor = load_predictor(model_dir, batch_size=8, warmup=False)
    assert predictor.hardware_head is None

    head, report = fit_hardware_for_model(model_dir, data, predictor=predictor)
    assert predictor.hardware_head is head
    assert report["n_train"] == 24 and report["n"] == 12 and report["n_hardware"] == 6
    assert report["accuracy"]["rate"] >= 0.8 and report["auroc"] >= 0.9
    _, card = read_config(model_dir)  # raises if the checksums were not re-written
    assert HARDWARE_FILE in card["checksums"] and card["hardware_head"]["auroc"] == report["auroc"]
    assert "Metal implant caution" in ModelFolder(model_dir).card_markdown_path.read_text()

    fresh = load_predictor(model_dir, batch_size=8, warmup=False)
    plates = sorted((data / "val").rglob("plate-*.png"))
    bones = sorted((data / "val").rglob("bone-*.png"))
    scored = fresh.predict(plates + bones, with_cam=True)
    cautions = [p.row()["caution"] for p in scored]
    assert sum(c == METAL_CAUTION for c in cautions[: len(plates)]) >= len(plates) - 1
    assert sum(c == "" for c in cautions[len(plates) :]) >= len(bones) - 1
    assert all(0 <= float(p.row()["metal_probability"]) <= 1 for p in scored)

    # the dashboard's table, CSV and ZIP say it too
    threshold = fresh.threshold
    fired = [p for p in scored if p.row()["caution"]]
    frame = results.results_frame(fired, threshold)
    assert set(frame["caution"]) == {METAL_CAUTION}
    table = results.predictions_csv(fired, threshold).decode()
    assert {row["caution"] for row in csv.DictReader(io.StringIO(table))} == {METAL_CAUTION}
    archive = zipfile.ZipFile(io.BytesIO(results.overlay_zip(fired[:1], 0.4, threshold)))
    (member,) = archive.namelist()
    assert METAL_CAUTION in Image.open(io.BytesIO(archive.read(member))).text["Description"]


def test_report_and_capture_carry_the_caution_and_a_flagged_image_does_not(
    tiny_loaded,
):
    from dicom_helpers import encoded, make_study

    from fracture.dicom.results import read_report
    from fracture.dicom.scoring import score_instances
    from fracture.inference.predictor import Predictor

    predictor = Predictor(tiny_loaded, batch_size=4)
    size = predictor.engine.run(
        np.zeros((1, predictor.config.image_size, predictor.config.image_size, 3), np.float32),
        with_cam=False,
    ).pooled.shape[1]
    # A head that always sees metal, whatever the features.
    predictor.hardware_head = HardwareHead(
        ("absent", "present"), np.zeros((size, 2), np.float32), np.array([0.0, 5.0], np.float32)
    )
    study = make_study(1, seed=3)
    scored = score_instances(predictor, study, [encoded(ds) for ds in study])
    values = read_report(scored.objects[-1][1])
    assert values["caution"] == METAL_CAUTION
    capture = pydicom.dcmread(io.BytesIO(encoded(scored.objects[0][1])))
    assert METAL_CAUTION.upper() in str(capture.ImageComments)

    class FlagEverything:
        threshold = -1.0

        def score(self, features):
            return np.zeros(len(next(iter(features.values()))))

    predictor.ood_gate = FlagEverything()
    flagged = predictor.predict([encoded(study[0])])[0]
    assert flagged.metal_probability is None and flagged.row()["caution"] == ""
    scored = score_instances(predictor, study, [encoded(ds) for ds in study])
    assert "caution" not in read_report(scored.objects[-1][1])
