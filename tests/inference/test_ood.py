"""The out-of-distribution gate: synthetic features, the tiny model, and (slow) the real one."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from fracture.evaluation.ood_fit import fit_for_model, measure, ood_probe_images
from fracture.inference.ood import (
    GATE_LAYERS,
    OOD_FILE,
    LayeredOODGate,
    OODGate,
    OODGateError,
    conformal_threshold,
    fit_layered_ood_gate,
    fit_ood_gate,
    load_ood_gate,
)
from fracture.model.network import EARLY_FEATURE_LAYER, POOL_LAYER

from conftest import radiograph_like

DIM = 96


def _in_distribution(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    """Anisotropic Gaussian with a decaying spectrum, like CNN features: a few strong axes."""
    basis = np.linalg.qr(np.random.default_rng(123).normal(size=(dim, dim)))[0]
    scales = 3.0 / np.sqrt(1.0 + np.arange(dim))
    return 5.0 + (rng.normal(size=(n, dim)) * scales) @ basis.T


def _out_of_distribution(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    """A second cluster: the same shape, its centre moved by half the cloud's overall spread."""
    shift = np.random.default_rng(321).normal(size=dim)
    return _in_distribution(rng, n, dim) + 3.5 * shift / np.linalg.norm(shift)


@pytest.fixture(scope="module")
def gate() -> OODGate:
    rng = np.random.default_rng(0)
    return fit_ood_gate(
        _in_distribution(rng, 2000),
        _in_distribution(rng, 1000),
        n_components=32,
        false_alarm_rate=0.05,
    )


def test_separates_in_from_out_of_distribution(gate: OODGate) -> None:
    rng = np.random.default_rng(1)
    report = measure(gate, _in_distribution(rng, 2000), _out_of_distribution(rng, 500))
    assert report["auroc"] > 0.95
    assert report["detection_rate"] > 0.8
    assert report["n_in"] == 2000 and report["n_out"] == 500


def test_false_alarm_rate_on_fresh_in_distribution_data_is_the_chosen_one(gate: OODGate) -> None:
    fresh = _in_distribution(np.random.default_rng(2), 40_000)
    flagged = 1.0 - gate.is_in_distribution(fresh).mean()
    # Split-conformal guarantee is "at most alpha" on average; with 1000
    # held-out rows the realised rate has a standard deviation near 0.007.
    assert 0.03 <= flagged <= 0.07, flagged


@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.2])
def test_threshold_is_the_conformal_quantile_of_heldout_scores(alpha: float) -> None:
    rng = np.random.default_rng(3)
    train, heldout = _in_distribution(rng, 500), _in_distribution(rng, 400)
    fitted = fit_ood_gate(train, heldout, false_alarm_rate=alpha, n_components=16)
    scores = np.sort(fitted.score(heldout))
    rank = math.ceil((len(scores) + 1) * (1 - alpha))
    assert fitted.threshold == scores[rank - 1]
    assert np.mean(scores > fitted.threshold) <= alpha
    # ... which is the plain (1 - alpha) percentile up to one or two ranks.
    neighbours = scores[max(rank - 3, 0) : rank + 2]
    assert neighbours[0] <= np.quantile(scores, 1 - alpha) <= neighbours[-1]
    assert fitted.false_alarm_rate == alpha and fitted.n_train == 500 and fitted.n_heldout == 400


def test_conformal_threshold_edge_cases() -> None:
    assert conformal_threshold(np.array([3.0, 1.0, 2.0]), 0.01) == 3.0  # rank past n: the maximum
    assert conformal_threshold(np.arange(1.0, 101.0), 0.5) == 51.0
    with pytest.raises(ValueError):
        conformal_threshold(np.array([]), 0.05)
    with pytest.raises(ValueError):
        conformal_threshold(np.array([1.0, np.nan]), 0.05)


def test_save_load_round_trip_scores_identically(gate: OODGate, tmp_path: Path) -> None:
    path = gate.save(tmp_path / OOD_FILE)
    loaded = OODGate.load(path)
    probe = _out_of_distribution(np.random.default_rng(4), 50)
    np.testing.assert_array_equal(loaded.score(probe), gate.score(probe))
    assert loaded.threshold == gate.threshold and loaded.n_train == gate.n_train
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_full_size_gate_is_small_and_finite_with_fewer_rows_than_features(tmp_path: Path) -> None:
    """2048-d pooled features from 600 images: the shrinkage keeps every distance finite."""
    rng = np.random.default_rng(5)
    dim = 2048
    scales = 3.0 / np.sqrt(1.0 + np.arange(dim))

    def features(n: int) -> np.ndarray:  # axis-aligned: a 2048-d rotation costs seconds
        return np.abs(1.0 + rng.normal(size=(n, dim)) * scales)  # ReLU features are >= 0

    fitted = fit_ood_gate(features(300), features(100))
    assert fitted.n_components == 149  # at most half the training rows
    scores = fitted.score(features(100))
    assert np.all(np.isfinite(scores)) and np.all(scores > 0)
    big = fit_ood_gate(features(540), features(50))
    assert big.n_components == 256
    size = big.save(tmp_path / "big.npz").stat().st_size
    assert size < 2 * 2**20, size


def test_score_checks_its_input_and_flags_non_finite_rows(gate: OODGate) -> None:
    with pytest.raises(ValueError, match=r"\(N, 96\)"):
        gate.score(np.zeros((3, DIM + 1)))
    with pytest.raises(ValueError):
        gate.score(np.zeros(DIM))
    rows = np.vstack([gate.mean, np.full(DIM, np.nan)])
    assert gate.is_in_distribution(rows).tolist() == [True, False]
    assert gate.score(np.zeros((0, DIM))).shape == (0,)


def test_fit_refuses_bad_input() -> None:
    rng = np.random.default_rng(6)
    good = _in_distribution(rng, 50)
    with pytest.raises(ValueError, match="false_alarm_rate"):
        fit_ood_gate(good, good, false_alarm_rate=0.0)
    with pytest.raises(ValueError, match="NaN"):
        fit_ood_gate(np.vstack([good, np.full(DIM, np.nan)]), good)
    with pytest.raises(ValueError, match="features per row"):
        fit_ood_gate(good, good[:, :10])


def test_load_refuses_a_file_that_is_not_a_gate(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(OODGateError, match="not an OOD gate"):
        OODGate.load(path)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(OODGateError, match="not a readable OOD gate"):
        OODGate.load(garbage)
    from fracture.model.folder import ModelLoadError

    assert issubclass(OODGateError, ModelLoadError)  # the CLI reports it like a bad model folder


def _two_layers(rng: np.random.Generator, n: int, strange_early: bool = False) -> dict:
    """In-distribution head features; early features in or (``strange_early``) out of it."""
    early = _in_distribution(rng, n, 48)
    if strange_early:  # moved by twice the cloud's overall spread
        early = early + 6.0 * np.eye(48)[0]
    return {POOL_LAYER: _in_distribution(rng, n), EARLY_FEATURE_LAYER: early}


@pytest.fixture(scope="module")
def layered() -> LayeredOODGate:
    rng = np.random.default_rng(10)
    labels = np.arange(1500) % 5 == 0  # two classes, as the real gate has
    return fit_layered_ood_gate(
        _two_layers(rng, 1500),
        _two_layers(rng, 600),
        n_components=16,
        false_alarm_rate=0.02,
        train_labels=labels,
        heldout_labels=np.arange(600) % 5 == 0,
    )


def test_layered_gate_flags_what_only_the_early_layer_finds_strange(
    layered: LayeredOODGate,
) -> None:
    """The reason for the second layer: an input whose head features look ordinary."""
    rng = np.random.default_rng(11)
    strange = _two_layers(rng, 300, strange_early=True)
    head_only = layered.parts[0]
    assert layered.layers == GATE_LAYERS and head_only.layer == POOL_LAYER
    assert np.mean(head_only.is_in_distribution(strange)) > 0.9  # the head alone lets them in
    assert np.mean(~layered.is_in_distribution(strange)) > 0.8
    # In distribution only where every layer says so; the score is the largest ratio.
    fresh = _two_layers(rng, 2000)
    ratios = layered.layer_scores(fresh)
    both = np.all([part.is_in_distribution(fresh) for part in layered.parts], axis=0)
    np.testing.assert_array_equal(layered.is_in_distribution(fresh), both)
    np.testing.assert_allclose(layered.score(fresh), np.maximum(*ratios.values()))
    # Each layer holds its own rate, so the union's is at most their sum.
    assert np.mean(~layered.is_in_distribution(fresh)) <= 2 * 0.02 + 0.015


def test_layered_gate_round_trip_and_older_formats_still_load(
    layered: LayeredOODGate, gate: OODGate, tmp_path: Path
) -> None:
    path = layered.save(tmp_path / OOD_FILE)
    loaded = load_ood_gate(path)
    assert isinstance(loaded, LayeredOODGate) and loaded.layers == layered.layers
    probe = _two_layers(np.random.default_rng(12), 40, strange_early=True)
    np.testing.assert_array_equal(loaded.score(probe), layered.score(probe))
    assert layered.summary()["layer_thresholds"][EARLY_FEATURE_LAYER] == (loaded.parts[1].threshold)
    one_layer = load_ood_gate(gate.save(tmp_path / "format2.npz"))
    assert isinstance(one_layer, OODGate) and one_layer.layer == POOL_LAYER
    with pytest.raises(OODGateError, match="format 3"):
        OODGate.load(path)  # the one-layer reader says which format it met


def test_layered_gate_says_which_features_are_missing(layered: LayeredOODGate) -> None:
    rng = np.random.default_rng(13)
    with pytest.raises(ValueError, match=EARLY_FEATURE_LAYER):
        layered.score({POOL_LAYER: _in_distribution(rng, 3)})
    with pytest.raises(ValueError, match="by layer name"):
        layered.score(_in_distribution(rng, 3))


def test_layered_fit_leaves_out_a_layer_it_was_not_given(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = np.random.default_rng(14)
    head = {POOL_LAYER: _in_distribution(rng, 200)}
    with caplog.at_level("WARNING", logger="fracture.inference.ood"):
        fitted = fit_layered_ood_gate(head, {POOL_LAYER: _in_distribution(rng, 50)})
    assert fitted.layers == (POOL_LAYER,)
    assert EARLY_FEATURE_LAYER in caplog.text
    with pytest.raises(ValueError, match=POOL_LAYER):
        fit_layered_ood_gate(
            {EARLY_FEATURE_LAYER: head[POOL_LAYER]}, {EARLY_FEATURE_LAYER: head[POOL_LAYER]}
        )


def test_probe_images_are_valid_rgb_arrays() -> None:
    probes = ood_probe_images()
    assert len(probes) >= 25
    for name in (
        "camera",
        "astronaut",
        "text_document",
        "synthetic_chest_ct",
        "near_white_frame",
        "uniform_noise",
        "hubble_deep_field",
        "immunohistochemistry",
    ):
        assert name in probes
    for name, image in probes.items():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
        assert min(image.shape[:2]) >= 32 and max(image.shape[:2]) <= 1024, name
        assert image.std() > 0, f"{name} is constant; the Predictor would score nothing"
    again = ood_probe_images()
    assert all(np.array_equal(probes[k], again[k]) for k in probes)  # seeded


# --------------------------------------------------------------------------- through the Predictor


def test_fit_for_model_on_phantoms_updates_the_model_folder(
    tmp_path: Path, tiny_model_dir: Path, use_fake_weights: Path
) -> None:
    from fracture.data.phantoms import synthesize_phantoms
    from fracture.inference.predictor import load_predictor
    from fracture.model.folder import read_config

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)  # the session fixture stays gate-free
    data = tmp_path / "phantoms"
    synthesize_phantoms(data, 40, size=64)
    predictor = load_predictor(model_dir, batch_size=8, warmup=False)  # tracing is not under test
    assert predictor.ood_gate is None

    gate = fit_for_model(model_dir, data, predictor=predictor)

    assert predictor.ood_gate is gate
    assert gate.n_train == 32 and gate.n_heldout == 8
    assert gate.layers == GATE_LAYERS  # the head's features and conv4's
    assert gate.parts[1].n_features == 1024
    _, card = read_config(model_dir)  # raises if the checksums were not re-written
    assert OOD_FILE in card["checksums"]
    assert card["ood"]["threshold"] == gate.threshold
    assert card["name"] == "tiny-test"  # the rest of the card survives

    fresh = load_predictor(model_dir, batch_size=8, warmup=False)
    images = list(ood_probe_images().values())[:3]
    results = fresh.predict([radiograph_like(1), *images])
    for result in results:
        assert isinstance(result.in_distribution, bool)
        assert result.ood_score is not None and math.isfinite(result.ood_score)
        assert result.in_distribution == (result.ood_score <= gate.threshold)
        assert result.row()["in_distribution"] in ("true", "false")
    val_paths = sorted((data / "val").rglob("*.png"))
    val_results = fresh.predict(val_paths)
    # The held-out images themselves: at most ceil(alpha * 9) - 1 = 0 flagged.
    assert sum(not r.in_distribution for r in val_results) <= 1

    # The checksum now guards the gate: a swapped gate file is refused.
    (model_dir / OOD_FILE).write_bytes((model_dir / OOD_FILE).read_bytes() + b"\0")
    from fracture.model.folder import ModelLoadError

    with pytest.raises(ModelLoadError, match=OOD_FILE):
        read_config(model_dir)


def test_fit_for_model_refuses_a_corrupt_folder_before_any_work(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from fracture.model.folder import ModelLoadError

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError):
        fit_for_model(model_dir, tmp_path / "no-data")


def test_ood_command_line_fit_then_measure(
    tmp_path: Path, tiny_model_dir: Path, use_fake_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from fracture.cli.ood import add_ood_parser
    from fracture.data.phantoms import synthesize_phantoms
    from fracture.model.folder import read_config

    parser = argparse.ArgumentParser()
    add_ood_parser(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        return args.func(args)

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    data = tmp_path / "phantoms"
    synthesize_phantoms(data, 24, size=64, val_fraction=0.25)

    assert run("ood", "measure", str(data), "--model", str(model_dir)) == 2
    assert f"has no {OOD_FILE}" in capsys.readouterr().err

    assert run("ood", "fit", str(data), "--model", str(model_dir), "--max-train", "12") == 0
    assert "OOD gate written" in capsys.readouterr().out
    _, card = read_config(model_dir)
    assert card["ood"]["n_train"] == 12 and card["ood"]["n_heldout"] == 6

    report_path = tmp_path / "ood.json"
    code = run("ood", "measure", str(data), "--model", str(model_dir), "--json", str(report_path))
    assert code == 0
    printed = capsys.readouterr().out
    assert "AUROC" in printed and "False-alarm rate" in printed and "camera" in printed
    report = json.loads(report_path.read_text())
    assert 0.0 <= report["auroc"] <= 1.0 and report["n_in"] == 6
    assert set(report["probes"]) == set(ood_probe_images())


# --------------------------------------------------------------------------- real model, real data


@pytest.mark.slow
def test_real_model_gate_separates_fracatlas_from_probe_images(
    tmp_path: Path, shared_fracatlas: Path, shared_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fracture.config import PROJECT_ROOT
    from fracture.evaluation.ood_fit import extract_features
    from fracture.inference.predictor import load_predictor
    from fracture.model.folder import read_config

    source = PROJECT_ROOT / "models" / "default"
    if not (source / "config.json").is_file():
        pytest.skip("models/default does not exist yet")
    monkeypatch.setenv("FRACTURE_IMAGENET_WEIGHTS", str(shared_weights))
    from fracture.config import get_settings

    get_settings.cache_clear()
    try:
        model_dir = tmp_path / "default"
        shutil.copytree(source, model_dir)  # never rewrite the shipped model's card here
        predictor = load_predictor(model_dir)
        started = time.perf_counter()
        gate = fit_for_model(model_dir, shared_fracatlas, predictor=predictor, max_train=1000)
        read_config(model_dir)
        from fracture.data.layouts import load_dataset

        val = load_dataset(shared_fracatlas).split("val")
        in_features, _ = extract_features(predictor, [r.path for r in val])
        probes = ood_probe_images()
        out_features, _ = extract_features(predictor, list(probes.values()), names=list(probes))
        report = measure(gate, in_features, out_features)
        scores = dict(zip(probes, gate.score(out_features)))
    finally:
        get_settings.cache_clear()
    print(json.dumps(report, indent=2))
    seconds = time.perf_counter() - started
    print(f"threshold {gate.threshold:.3f}; fit and measure took {seconds:.0f} s")
    for name, score in sorted(scores.items(), key=lambda item: item[1]):
        print(f"  {name:<24} {score:9.3f} {'flagged' if score > gate.threshold else 'MISSED'}")
    # val is the held-out set the threshold was chosen on, so the false-alarm
    # rate here is at most alpha by construction; AUROC is the real test.
    assert report["auroc"] >= 0.9
    assert report["false_alarm_rate"] <= 0.10


def test_margin_multiplies_each_layers_threshold_and_survives_a_round_trip(tmp_path):
    from fracture.inference.ood import fit_layered_ood_gate, load_ood_gate

    rng = np.random.default_rng(0)
    train = {"avg_pool": rng.normal(size=(200, 8)), "conv4_block6_out": rng.normal(size=(200, 6))}
    held = {"avg_pool": rng.normal(size=(60, 8)), "conv4_block6_out": rng.normal(size=(60, 6))}
    plain = fit_layered_ood_gate(train, held, n_components=4, margin=1.0)
    wide = fit_layered_ood_gate(train, held, n_components=4, margin=1.5)
    for a, b in zip(plain.parts, wide.parts):
        assert b.threshold == pytest.approx(1.5 * a.threshold)
    assert wide.summary()["margin"] == 1.5
    assert load_ood_gate(wide.save(tmp_path / "ood.npz")).margin == 1.5
    with pytest.raises(ValueError, match="margin"):
        fit_layered_ood_gate(train, held, n_components=4, margin=0.5)
