"""Training: the feature cache, seeds, resume after a kill, tf.distribute, and learning.

Everything runs on small synthetic phantoms so it needs neither ../shared nor
the network (the learning test uses real ImageNet weights when they resolve
offline, from the user cache or the npm mirror, and skips otherwise).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fracture.config import PROJECT_ROOT, Settings
from fracture.data.phantoms import synthesize_phantoms
from fracture.training.config import TrainConfig
from fracture.training.runs import read_status
from fracture.training.trainer import train

from conftest import TINY_SIZE

TINY = TrainConfig(
    image_size=TINY_SIZE,
    fine_tune_from="conv5_block2_out",
    head_epochs=1,
    epochs=1,
    batch_size=8,
    views=2,
    seed=3,
)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms") / "data"
    synthesize_phantoms(root, 32, size=96, seed=1)
    return root


def _settings(tmp_path: Path) -> Settings:
    return Settings(cache_dir=tmp_path / "cache", runs_dir=tmp_path / "runs")


def test_feature_cache_matches_the_uncached_forward_pass(phantoms, tmp_path, fake_imagenet_weights):
    from fracture.data.layouts import load_dataset
    from fracture.inference.preprocess import letterbox
    from fracture.io.images import load_image
    from fracture.model.folder import ModelConfig
    from fracture.model.network import build_classifier, split_at
    from fracture.training.cache import FeatureCache, compute_features

    model = build_classifier(
        ModelConfig(image_size=TINY_SIZE, fine_tune_from=TINY.fine_tune_from), fake_imagenet_weights
    )
    stem, tail = split_at(model, TINY.fine_tune_from)
    records = load_dataset(phantoms).split("val")[:6]
    cache = FeatureCache(tmp_path / "features", "test-model")
    features, usable, boxes = compute_features(records, 1, stem, cache, TINY)
    assert usable.all()
    # View 0 is unaugmented: boxes only move into the letterboxed frame.
    assert [len(b) for b in boxes[0]] == [len(r.boxes) for r in records]
    images = np.stack([letterbox(load_image(r.path), TINY_SIZE)[0] for r in records])
    direct = tail(stem(images)).numpy()[:, 0]
    cached = tail(features[0].astype(np.float32)).numpy()[:, 0]
    # The cache stores float16 activations; the logits agree to float16 precision.
    np.testing.assert_allclose(cached, direct, rtol=2e-2, atol=2e-2 * np.abs(direct).max())

    # A second pass is served from disk: the stem is not called again.
    calls = []
    original_call = stem.call
    stem.call = lambda *a, **k: calls.append(1) or original_call(*a, **k)
    again, _, boxes_again = compute_features(records, 1, stem, cache, TINY)
    stem.call = original_call
    assert calls == [] and np.array_equal(again, features)
    np.testing.assert_allclose(
        np.array(sum(boxes_again[0], ())), np.array(sum(boxes[0], ())), atol=1e-6
    )


def test_cache_key_depends_on_content_view_and_preprocessing(tmp_path):
    from fracture.training.cache import FeatureCache

    a = FeatureCache(tmp_path, "resnet50|w|224|conv5_block1_out")
    b = FeatureCache(tmp_path, "resnet50|w|384|conv5_block1_out")
    assert a.key("abc", 0, 1) != a.key("abd", 0, 1)
    assert a.key("abc", 0, 1) != a.key("abc", 1, 1)
    assert a.key("abc", 0, 1) != b.key("abc", 0, 1)
    assert a.key("abc", 0, 1) == a.key("abc", 0, 2)  # the unaugmented view ignores the seed
    assert a.key("abc", 1, 1) != a.key("abc", 1, 2)


@pytest.mark.slow
def test_run_writes_status_metrics_checkpoint_and_a_loadable_model(
    phantoms, tmp_path, use_fake_weights
):
    from fracture.model.folder import load_model

    run = tmp_path / "run"
    model_dir = train(phantoms, run, TINY, settings=_settings(tmp_path))
    status = read_status(run)
    assert status["state"] == "completed"
    history = json.loads((run / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    for key in (
        "train_loss",
        "train_auroc",
        "val_loss",
        "val_auroc",
        "val_sensitivity",
        "val_specificity",
        "train_accuracy",
    ):
        assert key in history[0]
    assert (run / "metrics.csv").read_text().startswith("epoch,phase,")
    assert (run / "checkpoints" / "best.weights.h5").is_file()
    assert list((run / "tensorboard").iterdir())
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["seed"] == TINY.seed and "intended_use" in card
    assert set(card["thresholds"]) == {"high_sensitivity", "high_specificity"}
    loaded = load_model(model_dir, use_fake_weights)
    assert loaded.config.temperature > 0


@pytest.mark.slow
def test_same_seed_gives_the_same_metrics(phantoms, tmp_path, use_fake_weights):
    settings = _settings(tmp_path)
    train(phantoms, tmp_path / "a", TINY, settings=settings)
    train(phantoms, tmp_path / "b", TINY, settings=settings)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    first = strip(json.loads((tmp_path / "a" / "metrics.json").read_text()))
    second = strip(json.loads((tmp_path / "b" / "metrics.json").read_text()))
    assert first == second


def _train_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fracture",
        "train",
        str(data),
        "--out",
        str(out),
        "--image-size",
        str(TINY_SIZE),
        "--fine-tune-from",
        TINY.fine_tune_from,
        "--batch-size",
        "8",
        "--no-pretrained",
        "--seed",
        "3",
        *extra,
    ]


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FRACTURE_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONPATH": str(PROJECT_ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


@pytest.mark.slow
def test_resume_after_sigkill_continues_from_last_complete_epoch(phantoms, tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(
        _train_command(phantoms, run, "--head-epochs", "1", "--epochs", "4"),
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline:
        state = (
            json.loads((run / "state.json").read_text()) if (run / "state.json").exists() else {}
        )
        if state.get("completed_epoch", 0) >= 2:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads((run / "state.json").read_text())["completed_epoch"]
    assert read_status(run)["state"] in {"interrupted", "completed"}
    if read_status(run)["state"] == "completed":
        pytest.skip("the run finished before it could be killed")
    result = subprocess.run(
        _train_command(phantoms, run, "--resume"),
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    epochs = [row["epoch"] for row in json.loads((run / "metrics.json").read_text())]
    assert epochs == list(range(1, len(epochs) + 1))  # no epoch lost or repeated
    assert len(epochs) > killed_at
    assert read_status(run)["state"] == "completed"


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(phantoms, tmp_path):
    run = tmp_path / "mirrored"
    result = subprocess.run(
        _train_command(
            phantoms,
            run,
            "--head-epochs",
            "1",
            "--epochs",
            "1",
            "--strategy",
            "mirrored",
            "--logical-cpus",
            "2",
        ),
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    status = read_status(run)
    assert status["state"] == "completed" and status["replicas"] == 2
    assert (run / "model" / "weights.npz").is_file()


@pytest.mark.slow
def test_tiny_training_on_phantoms_beats_chance(tmp_path):
    from fracture.evaluation.evaluate import evaluate_model
    from fracture.inference.predictor import load_predictor
    from fracture.model.imagenet import WeightsError, resolve_imagenet_weights

    try:
        resolve_imagenet_weights(allow_download=False)
    except WeightsError as error:
        pytest.skip(f"ImageNet weights unavailable offline: {error}")
    data = tmp_path / "phantoms"
    synthesize_phantoms(data, 120, size=160, seed=5)
    config = TrainConfig(
        image_size=128,
        fine_tune_from="conv5_block2_out",
        head_epochs=2,
        epochs=3,
        batch_size=16,
        views=2,
        seed=0,
    )
    model_dir = train(data, tmp_path / "run", config, settings=Settings(cache_dir=tmp_path / "c"))
    report = evaluate_model(
        data, predictor=load_predictor(model_dir, batch_size=8), n_bootstrap=100
    )
    assert report["auroc"] >= 0.8, report["auroc"]


def test_keep_usable_drops_unreadable_rows_without_copying():
    from fracture.training.cache import keep_usable

    features = np.arange(2 * 5 * 3, dtype=np.float16).reshape(2, 5, 3)
    expected = features[:, [0, 2, 3]].copy()
    kept = keep_usable(features, np.array([True, False, True, True, False]))
    np.testing.assert_array_equal(kept, expected)
    assert np.shares_memory(kept, features)  # the run's largest array is not doubled
    everything = np.ones((1, 4, 2), np.float16)
    assert keep_usable(everything, np.ones(4, bool)).base is everything


def test_the_training_child_builds_the_onnx_export_where_the_server_runs_onnx(
    monkeypatch, tmp_path
):
    """Binary model and ONNX runtime: built (by the child that ensure_onnx_export starts);
    TensorFlow runtime or a K-class model: not; a failed build is logged, not fatal."""
    from fracture.inference import runtime
    from fracture.model.config import ModelConfig
    from fracture.training.trainer import export_for_the_onnx_runtime

    built: list[Path] = []
    monkeypatch.setattr(runtime, "ensure_onnx_export", lambda path: built.append(path) or path)
    binary, classes = ModelConfig(), ModelConfig(classes=["normal", "simple", "comminuted"])
    assert export_for_the_onnx_runtime(tmp_path, Settings(runtime="onnx"), binary) is True
    assert built == [tmp_path]
    assert export_for_the_onnx_runtime(tmp_path, Settings(runtime="tensorflow"), binary) is False
    assert export_for_the_onnx_runtime(tmp_path, Settings(runtime="onnx"), classes) is False
    assert built == [tmp_path]

    def fails(path):
        raise runtime.RuntimeChoiceError("tf2onnx is not installed")

    monkeypatch.setattr(runtime, "ensure_onnx_export", fails)
    assert export_for_the_onnx_runtime(tmp_path, Settings(runtime="onnx"), binary) is False
