"""The ONNX runtime of the server (fracture.inference.runtime): TensorFlow's answers without TensorFlow.

* Fast tier, a tiny 64-px model with a two-level localisation head, on generated images:
  the ONNX predictor gives the TensorFlow float32 predictor's probabilities, labels at
  both operating points, heat maps, pooled features (what the OOD gate and the
  region and hardware heads read) and localisation outputs and boxes; a server
  process with ``FRACTURE_RUNTIME=onnx`` predicts a phantom without importing
  TensorFlow; the export in the model folder is refused when corrupt or stale;
  ``auto`` follows its rule.
* Slow tier, with ../shared: the default model on FracAtlas val, the export built by
  the child process as a server would at first start; no label changes at either
  operating point, and maps within the tolerances below.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fracture.config import PROJECT_ROOT, Settings
from fracture.inference.runtime import (
    TENSORFLOW_MIN_MEMORY_MIB,
    RuntimeChoiceError,
    choose_runtime,
    ensure_onnx_export,
)
from fracture.model.folder import ONNX_RECORD, ModelFolder

from conftest import radiograph_like

# Float32 in both runtimes, with BatchNorm folded in both: what differs is the order
# of the sums (oneDNN against MLAS), about 1e-6 relative per layer.
PROBABILITY_TOLERANCE = 1e-4
# Heat maps (Grad-CAM, logit units), pooled features and localisation outputs: the
# largest absolute difference, relative to the largest magnitude of the TensorFlow values.
MAP_TOLERANCE = 1e-3
# On val (384 px, the default model): the same budget, measured 2e-6 for the probability
# in the bench run of 2026-12-02 (BENCHMARKS.md, "ONNX Runtime instead of TensorFlow").
VAL_PROBABILITY_TOLERANCE = 1e-4
VAL_MAP_TOLERANCE = 1e-3


def _relative(tf_value: np.ndarray, onnx_value: np.ndarray) -> float:
    scale = max(float(np.abs(tf_value).max()), 1e-6)
    return float(np.abs(np.asarray(tf_value) - np.asarray(onnx_value)).max() / scale)


@pytest.fixture(scope="module")
def exported(tiny_onnx_model_dir, fake_imagenet_weights):
    """The tiny model with a localiser and its ONNX export (conftest), loaded in Keras too."""
    from fracture.model.folder import load_model

    return tiny_onnx_model_dir, load_model(tiny_onnx_model_dir, fake_imagenet_weights)


@pytest.fixture(scope="module")
def both(exported):
    """(TensorFlow float32 predictor, ONNX predictor) over the same model folder."""
    from fracture.inference.predictor import Predictor
    from fracture.inference.runtime import OnnxNetwork

    directory, loaded = exported
    settings = Settings()
    tensorflow = Predictor(loaded, batch_size=4, precision="float32", settings=settings)
    onnx = OnnxNetwork(directory, settings).predictor(batch_size=4)
    return tensorflow, onnx


def _images() -> list[np.ndarray]:
    from fracture.data.phantoms import render_phantom

    rng = np.random.default_rng(11)
    phantoms = [
        np.repeat(render_phantom(rng, 96, fractured=bool(i % 2)).image[..., None], 3, axis=2)
        for i in range(4)
    ]
    return [*phantoms, *(radiograph_like(seed, 60 + 9 * seed, 90 - 4 * seed) for seed in range(4))]


def test_onnx_predictor_gives_tensorflow_float32_answers(both):
    tensorflow, onnx = both
    assert onnx.precision == "onnx-float32"
    images = _images()
    expected = tensorflow.predict(images, with_cam=True)
    got = onnx.predict(images, with_cam=True)
    probabilities = np.array([p.probability for p in expected])
    logits = np.array([p.logit for p in expected])
    assert np.ptp(logits) > 0.1  # the images differ, so agreement means something

    assert [p.logit for p in got] == pytest.approx(list(logits), abs=1e-3)
    assert [p.probability for p in got] == pytest.approx(
        list(probabilities), abs=PROBABILITY_TOLERANCE
    )
    # The model's two operating points, and one between the middle two probabilities
    # (the tiny model is sure of every image: that one splits them).
    middle = float(np.mean(np.sort(probabilities)[3:5]))
    for threshold in (*tensorflow.config.thresholds.values(), middle):
        assert [p.verdict(threshold).label for p in got] == [
            p.verdict(threshold).label for p in expected
        ]
    for tf_p, onnx_p in zip(expected, got):
        assert _relative(tf_p.evidence, onnx_p.evidence) < MAP_TOLERANCE
        assert onnx_p.heatmap.shape == tf_p.heatmap.shape
        assert float(np.abs(onnx_p.heatmap - tf_p.heatmap).max()) < 10 * MAP_TOLERANCE
        # The pooled features by layer, as the OOD gate and the numpy heads read them.
        assert set(onnx_p.features) == set(tf_p.features) == {"avg_pool", "conv4_block6_out"}
        for layer, values in tf_p.features.items():
            assert _relative(values, onnx_p.features[layer]) < MAP_TOLERANCE
        assert onnx_p.location_outputs.shape == tf_p.location_outputs.shape == (8, 8, 5)
        assert _relative(tf_p.location_outputs, onnx_p.location_outputs) < MAP_TOLERANCE
        assert len(onnx_p.location_boxes) == len(tf_p.location_boxes)
        for a, b in zip(onnx_p.location_boxes, tf_p.location_boxes):
            assert a.coordinates == pytest.approx(b.coordinates, abs=1e-3)
    assert any(p.location_boxes for p in got)  # the boxes were compared, not skipped


def test_onnx_predictor_keeps_going_past_a_bad_file(both, tmp_path):
    _, onnx = both
    good = tmp_path / "good.png"
    Image.fromarray(radiograph_like(1)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    rows = onnx.predict([str(good), str(bad), str(good)])
    assert [p.status for p in rows] == ["ok", "error", "ok"]
    assert "bad.png" in rows[1].error
    assert rows[0].probability == pytest.approx(rows[2].probability, abs=1e-7)


# The server's view: one process, FRACTURE_RUNTIME=onnx, the factory the pages call.
_SERVER_SCRIPT = r"""
import json, sys
from fracture.inference.runtime import load_network
network = load_network(sys.argv[1])
predictor = network.predictor(batch_size=2)
first, = predictor.predict([sys.argv[2]], with_cam=True)
print(json.dumps({
    "runtime": network.runtime,
    "status": first.status,
    "probability": first.probability,
    "heat": None if first.heatmap is None else list(first.heatmap.shape),
    "tensorflow": "tensorflow" in sys.modules,
    "keras": "keras" in sys.modules,
}))
"""


def test_server_with_the_onnx_runtime_never_imports_tensorflow(exported, both, tmp_path):
    from fracture.data.phantoms import render_phantom

    directory, _ = exported
    tensorflow, _ = both
    phantom = render_phantom(np.random.default_rng(5), 96, fractured=True).image
    path = tmp_path / "phantom.png"
    Image.fromarray(phantom).save(path)
    env = {**os.environ, "FRACTURE_RUNTIME": "onnx", "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _SERVER_SCRIPT, str(directory), str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["runtime"] == "onnx"
    assert result["tensorflow"] is False and result["keras"] is False
    assert result["status"] == "ok" and result["heat"] == [96, 96]
    expected = tensorflow.predict([str(path)])[0].probability
    assert result["probability"] == pytest.approx(expected, abs=PROBABILITY_TOLERANCE)


def test_the_export_is_refused_when_corrupt_or_built_from_other_weights(tmp_path):
    """Checked with stand-in files: the record, not the network, is under test here."""
    folder = ModelFolder(tmp_path / "model")
    folder.path.mkdir()
    (folder.path / "config.json").write_text("{}")
    (folder.path / "weights.npz").write_bytes(b"weights one")
    assert "no ONNX export" in folder.onnx_export_problem()

    staged = folder.onnx_staging_dir()
    (staged / "model.onnx").write_bytes(b"network")
    (staged / "preprocessing.json").write_text("{}")
    assert folder.install_onnx_export(staged) == folder.onnx_dir
    assert not staged.exists()
    assert folder.onnx_export_problem() is None
    assert json.loads((folder.onnx_dir / ONNX_RECORD).read_text())["built_from"] == (
        folder.checksums()
    )

    (folder.onnx_dir / "model.onnx").write_bytes(b"netw0rk")
    assert "model.onnx does not match" in folder.onnx_export_problem()
    (folder.onnx_dir / "model.onnx").write_bytes(b"network")
    assert folder.onnx_export_problem() is None

    (folder.path / "weights.npz").write_bytes(b"weights two")  # retrained in place
    assert "other model files" in folder.onnx_export_problem()


def test_a_missing_export_that_cannot_be_built_says_how_to_build_it(tmp_path, monkeypatch):
    """The child process fails (no model to export): a clear error, not a traceback."""
    folder = tmp_path / "empty-model"
    folder.mkdir()
    with pytest.raises(RuntimeChoiceError, match="--into-model-folder"):
        ensure_onnx_export(folder)


def test_auto_falls_back_to_tensorflow_where_the_export_cannot_be_had(
    tiny_model_dir, use_fake_weights, monkeypatch
):
    """``auto`` chose ONNX but the export cannot be built: TensorFlow serves; ``onnx`` refuses."""
    from fracture.inference import runtime

    def no_export(directory):
        raise RuntimeChoiceError("no tf2onnx here")

    monkeypatch.setattr(runtime, "choose_runtime", lambda setting: "onnx")
    monkeypatch.setattr(runtime, "ensure_onnx_export", no_export)
    network = runtime.load_network(tiny_model_dir, runtime="auto", settings=Settings())
    assert network.runtime == "tensorflow"
    assert network.predictor(batch_size=2, warmup=False).precision in ("float32", "bfloat16")
    with pytest.raises(RuntimeChoiceError, match="no tf2onnx"):
        runtime.load_network(tiny_model_dir, runtime="onnx", settings=Settings())


def test_auto_chooses_onnx_on_a_small_host_and_tensorflow_elsewhere():
    big, small = 16 * 1024, 1024
    both_installed = {"tensorflow_installed": True, "onnxruntime_installed": True}
    assert choose_runtime("auto", memory_mib=big, **both_installed) == "tensorflow"
    assert choose_runtime("auto", memory_mib=small, **both_installed) == "onnx"
    assert choose_runtime("auto", memory_mib=TENSORFLOW_MIN_MEMORY_MIB - 1, **both_installed) == (
        "onnx"
    )
    assert (
        choose_runtime(
            "auto", memory_mib=big, tensorflow_installed=False, onnxruntime_installed=True
        )
        == "onnx"
    )
    assert (
        choose_runtime(
            "auto", memory_mib=small, tensorflow_installed=True, onnxruntime_installed=False
        )
        == "tensorflow"
    )
    assert choose_runtime("onnx", memory_mib=big) == "onnx"
    assert choose_runtime("tensorflow", memory_mib=small) == "tensorflow"


def test_the_runtime_setting_is_checked_where_it_is_read():
    assert Settings.load(environ={"FRACTURE_RUNTIME": "ONNX"}).runtime == "onnx"
    assert Settings().runtime == "auto"
    with pytest.raises(ValueError, match="tensorflow, onnx"):
        Settings.load(environ={"FRACTURE_RUNTIME": "tflite"})


@pytest.mark.slow
def test_onnx_runtime_parity_on_validation_radiographs(shared_fracatlas, shared_weights, tmp_path):
    """The default model on FracAtlas val: the export built by the child, as at first start.

    No label changes at either operating point against TensorFlow float32, every heat
    map, pooled feature and localisation output within VAL_MAP_TOLERANCE (relative to
    that image's largest value), the OOD flag and the boxes unchanged.
    """
    from fracture.inference.predictor import Predictor
    from fracture.inference.runtime import OnnxNetwork
    from fracture.model.folder import load_model

    val = shared_fracatlas / "val"
    if not val.is_dir():
        pytest.skip("../shared/data/fracatlas/val is not present")
    directory = tmp_path / "default"
    shutil.copytree(PROJECT_ROOT / "models" / "default", directory)
    os.environ["FRACTURE_IMAGENET_WEIGHTS"] = str(shared_weights)  # for the export child
    try:
        ensure_onnx_export(directory)
    finally:
        del os.environ["FRACTURE_IMAGENET_WEIGHTS"]
    settings = Settings(imagenet_weights=shared_weights)
    tensorflow = Predictor(
        load_model(directory, shared_weights), batch_size=16, precision="float32", settings=settings
    )
    onnx = OnnxNetwork(directory, settings).predictor(batch_size=16)
    paths = sorted(str(path) for path in val.glob("*/*") if path.suffix.lower() in (".jpg", ".png"))
    worst = {"probability": 0.0, "heat": 0.0, "features": 0.0, "location": 0.0}
    changed = {name: 0 for name in tensorflow.config.thresholds}
    compared = 0
    for tf_p, onnx_p in zip(
        tensorflow.iter_predict(paths, with_cam=True), onnx.iter_predict(paths, with_cam=True)
    ):
        assert tf_p.status == onnx_p.status
        if not tf_p.ok:
            continue
        compared += 1
        worst["probability"] = max(worst["probability"], abs(tf_p.probability - onnx_p.probability))
        for name, threshold in tensorflow.config.thresholds.items():
            changed[name] += tf_p.verdict(threshold).label != onnx_p.verdict(threshold).label
        assert tf_p.in_distribution == onnx_p.in_distribution, tf_p.source
        worst["heat"] = max(worst["heat"], _relative(tf_p.evidence, onnx_p.evidence))
        for layer, values in tf_p.features.items():
            worst["features"] = max(worst["features"], _relative(values, onnx_p.features[layer]))
        if tf_p.location_outputs is not None:
            worst["location"] = max(
                worst["location"], _relative(tf_p.location_outputs, onnx_p.location_outputs)
            )
    print(f"ONNX against TensorFlow float32 on {compared} val images: {worst}, changed {changed}")
    assert compared > 100
    assert changed == {name: 0 for name in changed}
    assert worst["probability"] < VAL_PROBABILITY_TOLERANCE
    assert max(worst["heat"], worst["features"], worst["location"]) < VAL_MAP_TOLERANCE


@pytest.mark.slow
def test_a_probability_that_adds_the_heads_peak_is_the_same_in_the_export(
    exported, fake_imagenet_weights, tmp_path
):
    """With ``localiser_weight`` set, the export's own probability and the ONNX predictor's
    both carry the head's peak, once, as the TensorFlow predictor does."""
    import dataclasses

    from fracture.inference.export import export_into_model_folder, run_export
    from fracture.inference.predictor import Predictor
    from fracture.inference.preprocess import letterbox
    from fracture.inference.runtime import OnnxNetwork
    from fracture.model.folder import load_model

    directory = tmp_path / "weighted"
    shutil.copytree(exported[0], directory, ignore=shutil.ignore_patterns("onnx"))
    folder = ModelFolder(directory)
    config, card = folder.read()
    folder.rewrite_config(dataclasses.replace(config, localiser_weight=0.4), card)
    loaded = load_model(directory, fake_imagenet_weights)
    export_into_model_folder(loaded)
    tensorflow = Predictor(loaded, batch_size=4, precision="float32", settings=Settings())
    onnx = OnnxNetwork(directory, Settings()).predictor(batch_size=4)
    images = _images()[:4]
    expected = tensorflow.predict(images)
    plain = Predictor(exported[1], batch_size=4, precision="float32", settings=Settings())
    # The tiny model is sure of every image, so the logits show the weight, not the
    # probabilities: TensorFlow's logit is the plain one plus 0.4 x the head's peak.
    for weighted, unweighted in zip(expected, plain.predict(images)):
        assert abs(weighted.location_peak) > 0.1
        assert weighted.logit == pytest.approx(
            unweighted.logit + 0.4 * weighted.location_peak, abs=1e-3
        )
    got = onnx.predict(images)
    assert [p.logit for p in got] == pytest.approx([p.logit for p in expected], abs=1e-3)
    assert [p.probability for p in got] == pytest.approx(
        [p.probability for p in expected], abs=PROBABILITY_TOLERANCE
    )
    # The export's own outputs, as a runtime without this package reads them.
    batch = np.stack([letterbox(image, config.image_size)[0] for image in images])
    outputs = run_export(folder.onnx_dir, batch)
    assert list(outputs["logit"]) == pytest.approx([p.logit for p in expected], abs=1e-3)
    assert list(outputs["probability"]) == pytest.approx(
        [p.probability for p in expected], abs=PROBABILITY_TOLERANCE
    )
