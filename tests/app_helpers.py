"""Helpers shared by the dashboard tests (test_app.py, test_browser.py); not a test module."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import radiograph_like


def png_bytes(seed: int = 0) -> bytes:
    """A small radiograph-like PNG, as a browser would upload it."""
    buffer = io.BytesIO()
    Image.fromarray(radiograph_like(seed)).save(buffer, format="PNG")
    return buffer.getvalue()


def add_evaluation(model_dir: Path) -> None:
    """Give a model folder the evaluation.json, card metrics and card text a trained one has.

    The numbers come from a synthetic validation set: they exercise every plot
    of the Model page, and say nothing about the model.
    """
    from fracture.evaluation.metrics import evaluation_report

    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 30)
    logits = labels * 1.5 + rng.normal(0, 1, labels.size)
    report = evaluation_report(
        labels,
        logits,
        1.0,
        {"high_sensitivity": 0.5, "high_specificity": 0.7},
        regions=["hand", "leg", "hip"] * 20,
        hardware=[False] * 50 + [True] * 10,
        pointing={"hits": 5, "n": 8, "score": 0.625},
        n_bootstrap=20,
    )
    (model_dir / "evaluation.json").write_text(json.dumps(report))
    card_path = model_dir / "model_card.json"
    card = json.loads(card_path.read_text())
    card.update(
        {"version": "1", "val_metrics": {"auroc": report["auroc"], "auroc_ci": report["auroc_ci"]}}
    )
    # Checksums cover config.json and weights.npz, not the card, so the model stays valid.
    card_path.write_text(json.dumps(card))
    name = card.get("name", model_dir.name)
    (model_dir / "model_card.md").write_text(
        f"# Model card: {name}\n\nA test model: its metrics are synthetic.\n"
    )


def make_model(directory: Path, imagenet_weights: Path | None, image_size: int = 64) -> Path:
    """Save an untrained model (ImageNet backbone, random head) with a synthetic evaluation."""
    import keras

    from fracture.model.folder import ModelConfig, imagenet_reference, save_model
    from fracture.model.network import build_classifier

    config = ModelConfig(
        image_size=image_size,
        fine_tune_from="conv5_block2_out",
        thresholds={"high_sensitivity": 0.5, "high_specificity": 0.7},
        name="browser-test",
        version="1",
    )
    model = build_classifier(config, imagenet_weights)
    reference = imagenet_reference(model, config)
    keras.utils.set_random_seed(0)
    save_model(model, config, directory, reference=reference, card={"name": config.name})
    add_evaluation(directory)
    return directory


PATIENT_NAME = "Doe^Jane"


def dicom_bytes(seed: int = 0) -> bytes:
    """A small DX DICOM file with a patient name, as a PACS export would have."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = radiograph_like(seed)[..., 0].astype(np.uint16) * 16  # 12-bit range
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = "P-12345"
    ds.set_pixel_data(pixels, "MONOCHROME2", 12)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
