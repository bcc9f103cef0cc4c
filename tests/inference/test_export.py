"""Exports (fracture.inference.export): each format loads in its own runtime and matches Keras.

* SavedModel in tf.saved_model.load, ONNX in ONNX Runtime, TFLite in the TFLite interpreter:
  calibrated probabilities within 1e-3 of the Keras model's on generated radiographs, and the
  heat map equal to the engine's Grad-CAM.
* The config written beside the network describes the preprocessing and the calibration.
* (with ../shared) the same parity on validation radiographs with the default model.
"""

from __future__ import annotations

import numpy as np
import pytest

from fracture.inference.export import (
    FORMATS,
    INT8_FORMAT,
    ExportError,
    export_model,
    quantize_onnx_int8,
    read_export_config,
    run_export,
)
from fracture.inference.predictor import Predictor
from fracture.inference.preprocess import letterbox

from conftest import radiograph_like

PROBABILITY_TOLERANCE = 1e-3
HEATMAP_TOLERANCE = 1e-3  # relative to the largest evidence in the batch (logit units)


@pytest.fixture(scope="module")
def onnx_export(tiny_loaded, tmp_path_factory):
    """One float32 ONNX export for the int8 tests (each conversion takes half a minute)."""
    return export_model(tiny_loaded, "onnx", tmp_path_factory.mktemp("onnx"))


def _reference(loaded, images: list[np.ndarray]):
    """Keras probabilities and Grad-CAMs (float32 engine) and the letterboxed network inputs."""
    predictor = Predictor(loaded, batch_size=len(images), precision="float32")
    inputs = np.stack([letterbox(image, loaded.config.image_size)[0] for image in images])
    output = predictor.engine.run(inputs, with_cam=True)
    logits = predictor.corrected_logit(predictor.raw_logit(output))
    return inputs, logits, predictor.probability_from_logit(logits), output.cams


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_matches_keras_in_its_own_runtime(tiny_loaded, tmp_path, fmt):
    images = [radiograph_like(seed, 60 + 7 * seed, 90 - 3 * seed) for seed in range(6)]
    images.append(np.zeros((50, 50, 3), np.uint8))  # a black image: an all-zero heat map
    inputs, logits, expected, cams = _reference(tiny_loaded, images)
    assert np.ptp(logits) > 0.1  # the images give different answers, so parity means something

    result = export_model(tiny_loaded, fmt, tmp_path / fmt)
    outputs = run_export(result.directory, inputs)

    np.testing.assert_allclose(outputs["probability"], expected, atol=PROBABILITY_TOLERANCE, rtol=0)
    np.testing.assert_allclose(outputs["logit"], logits, atol=1e-3, rtol=1e-4)
    assert outputs["heatmap"].shape == cams.shape
    tolerance = HEATMAP_TOLERANCE * max(1.0, float(np.abs(cams).max()))
    np.testing.assert_allclose(outputs["heatmap"], cams, atol=tolerance, rtol=0)
    assert outputs["heatmap"].min() >= 0

    config = read_export_config(result.directory)
    assert config["format"] == fmt
    assert config["preprocessing"]["size"] == tiny_loaded.config.image_size
    assert config["calibration"]["temperature"] == tiny_loaded.config.temperature
    assert config["calibration"]["applied_inside"] is True
    assert config["thresholds"] == dict(tiny_loaded.config.thresholds)


def test_int8_onnx_follows_float32_within_its_rounding(tiny_loaded, onnx_export, tmp_path):
    """Static int8 quantisation, calibrated on other images than it is checked on.

    Tolerances: uint8 activations round each layer's output to 1/255 of its
    calibrated range, int8 weights to 1/127 of each filter's largest weight;
    after ~50 layers the features carry a few per cent of relative error,
    which the float32 head passes on to the logit in proportion to its size.
    So: logits within 5 % of the largest logit's magnitude (this model's
    logits are about 11, so probabilities saturate and their 0.05 bound is
    the weaker check here; the bench checks AUROC on real radiographs), and
    heat maps correlated >= 0.9 with float32's, the strongest cell in place or
    one cell away.
    """
    pytest.importorskip("onnxruntime")
    size = tiny_loaded.config.image_size
    calibration = [letterbox(radiograph_like(100 + seed, 80, 70), size)[0] for seed in range(8)]
    images = [radiograph_like(seed, 60 + 7 * seed, 90 - 3 * seed) for seed in range(6)]
    inputs, logits, expected, cams = _reference(tiny_loaded, images)

    fp32 = onnx_export
    int8 = quantize_onnx_int8(
        fp32.directory, tmp_path / "int8", iter(calibration), calibration_source="generated"
    )
    outputs = run_export(int8.directory, inputs)

    # Really int8: the weights shrink to about a quarter.
    assert int8.network.stat().st_size < 0.4 * fp32.network.stat().st_size
    config = read_export_config(int8.directory)
    assert config["format"] == INT8_FORMAT
    assert config["quantisation"]["calibration_images"] == len(calibration)
    assert config["preprocessing"] == read_export_config(fp32.directory)["preprocessing"]

    np.testing.assert_allclose(outputs["probability"], expected, atol=0.05, rtol=0)
    np.testing.assert_allclose(outputs["logit"], logits, atol=0.05 * np.abs(logits).max(), rtol=0)
    assert not np.array_equal(outputs["logit"], logits)  # it did round
    assert outputs["heatmap"].shape == cams.shape and outputs["heatmap"].min() >= 0
    for got, want in zip(outputs["heatmap"], cams):
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] >= 0.9
        a = np.unravel_index(np.argmax(got), got.shape)
        b = np.unravel_index(np.argmax(want), want.shape)
        assert max(abs(a[0] - b[0]), abs(a[1] - b[1])) <= 1


def test_int8_needs_an_onnx_export_and_calibration_images(tiny_loaded, onnx_export, tmp_path):
    pytest.importorskip("onnxruntime")
    import json

    tflite = tmp_path / "tflite"
    tflite.mkdir()
    (tflite / "preprocessing.json").write_text(json.dumps({"format": "tflite"}))
    image = np.zeros((tiny_loaded.config.image_size,) * 2 + (3,), np.float32)
    with pytest.raises(ExportError, match="starts from an ONNX export"):
        quantize_onnx_int8(tflite, tmp_path / "int8", [image])
    with pytest.raises(ExportError, match="needs calibration images"):
        quantize_onnx_int8(onnx_export.directory, tmp_path / "int8", [])


def test_unknown_format_is_refused(tiny_loaded, tmp_path):
    with pytest.raises(ExportError, match="unknown export format"):
        export_model(tiny_loaded, "coreml", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_parity_on_validation_radiographs(shared_fracatlas, shared_weights, tmp_path, fmt):
    """The shipped model on 16 validation images: the 1e-3 float32 parity of the issue."""
    from pathlib import Path

    from fracture.io.images import load_image
    from fracture.model.folder import load_model

    model_dir = Path(__file__).resolve().parents[2] / "models" / "default"
    loaded = load_model(model_dir, shared_weights)
    files = sorted((shared_fracatlas / "val" / "fractured").glob("*.jpg"))[:8]
    files += sorted((shared_fracatlas / "val" / "normal").glob("*.jpg"))[:8]
    images = [load_image(path) for path in files]
    inputs, _, expected, cams = _reference(loaded, images)
    outputs = run_export(export_model(loaded, fmt, tmp_path / fmt).directory, inputs)
    np.testing.assert_allclose(outputs["probability"], expected, atol=PROBABILITY_TOLERANCE, rtol=0)
    tolerance = HEATMAP_TOLERANCE * max(1.0, float(np.abs(cams).max()))
    np.testing.assert_allclose(outputs["heatmap"], cams, atol=tolerance, rtol=0)


def test_cli_export_writes_the_network_and_its_config(
    tiny_model_dir, use_fake_weights, tmp_path, capsys
):
    from fracture.cli.main import main

    out = tmp_path / "onnx"
    assert main(["export", str(tiny_model_dir), "--format", "onnx", "--out", str(out)]) == 0
    assert (out / "model.onnx").stat().st_size > 1000
    assert read_export_config(out)["network_file"] == "model.onnx"
    assert "model.onnx" in capsys.readouterr().out


def test_cli_export_of_a_missing_model_is_a_clear_error(use_fake_weights, tmp_path, capsys):
    from fracture.cli.main import main

    status = main(["export", str(tmp_path / "nowhere"), "--format", "onnx", "--out", str(tmp_path)])
    assert status != 0
    assert "error:" in capsys.readouterr().err
