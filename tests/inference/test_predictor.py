"""Predictor and the `predict` command: every input gets a row, broken ones included."""

from __future__ import annotations

import csv
import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from fracture.inference.prediction import CSV_COLUMNS
from fracture.inference.predictor import Predictor

from conftest import radiograph_like, write_png


def _png_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(radiograph_like(seed)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_mixed_sources_keep_order_and_report_errors(tiny_predictor, tmp_path):
    good_path = write_png(tmp_path / "a.png", seed=1)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    sources = [good_path, _png_bytes(2), radiograph_like(3), empty, b"<html>not an image</html>"]
    names = ["a.png", "upload.png", "array", "empty.png", "page.jpg"]
    results = tiny_predictor.predict(sources, names=names)
    assert [r.source for r in results] == names
    assert [r.status for r in results] == ["ok", "ok", "ok", "error", "error"]
    for result in results[:3]:
        assert 0.0 <= result.probability <= 1.0
        expected = "fracture" if result.probability >= tiny_predictor.threshold else "normal"
        assert result.label == expected
    assert "empty" in results[3].error.lower()
    assert results[4].probability is None and results[4].error


def test_same_image_gives_same_probability_whatever_the_source(tiny_predictor, tmp_path):
    path = write_png(tmp_path / "same.png", seed=7)
    by_path, by_bytes, by_array = tiny_predictor.predict(
        [path, path.read_bytes(), radiograph_like(7)]
    )
    assert by_path.probability == pytest.approx(by_bytes.probability, abs=1e-6)
    assert by_path.probability == pytest.approx(by_array.probability, abs=1e-6)


def test_batching_does_not_change_results(tiny_predictor):
    images = [radiograph_like(seed) for seed in range(6)]
    together = [r.probability for r in tiny_predictor.predict(images)]
    alone = [tiny_predictor.predict([image])[0].probability for image in images]
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_cam_results_carry_heatmap_and_image_at_input_size(tiny_predictor):
    result = tiny_predictor.predict([radiograph_like(4)], with_cam=True)[0]
    assert result.heatmap.shape == (96, 80)
    assert result.image.shape == (96, 80, 3)
    assert 0 <= result.heatmap.min() and result.heatmap.max() <= 1


def test_temperature_scales_probability(tiny_predictor):
    # The tiny model's temperature is 1.0, where scaling changes nothing: use 2.0.
    loaded = dataclasses.replace(
        tiny_predictor.loaded, config=dataclasses.replace(tiny_predictor.config, temperature=2.0)
    )
    scaled = Predictor(loaded, batch_size=4, warmup=False)
    logits = np.array([-2.0, 0.0, 3.0])
    # sigmoid(logit / 2): sigmoid(-1), sigmoid(0), sigmoid(1.5)
    expected = [0.2689414213699951, 0.5, 0.8175744761936437]
    np.testing.assert_allclose(scaled.probability_from_logit(logits), expected, rtol=1e-12)
    assert tiny_predictor.probability_from_logit(np.array([3.0]))[0] > expected[2]


# --- CLI ---------------------------------------------------------------------


def _run_cli(args: list[str]) -> int:
    from fracture.cli.main import main

    return main(args)


def test_cli_writes_one_row_per_file_for_a_mixed_folder(tmp_path, tiny_model_dir, use_fake_weights):
    folder = tmp_path / "batch"
    write_png(folder / "good1.png", 1)
    write_png(folder / "nested" / "good2.png", 2)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("this is text, not a picture")
    (folder / "truncated.png").write_bytes(_png_bytes(3)[:60])
    out = tmp_path / "results.csv"
    overlays = tmp_path / "overlays"
    code = _run_cli(
        [
            "predict",
            str(folder),
            "--model",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--gradcam-dir",
            str(overlays),
            "--batch-size",
            "2",
        ]
    )
    assert code == 0
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    by_name = {row["path"].split("/")[-1]: row for row in rows}
    assert set(by_name) == {"good1.png", "good2.png", "empty.png", "notes.png", "truncated.png"}
    for name in ("good1.png", "good2.png"):
        assert by_name[name]["status"] == "ok" and by_name[name]["error"] == ""
        assert 0 <= float(by_name[name]["probability"]) <= 1
        assert by_name[name]["prediction"] in {"fracture", "normal"}
    for name in ("empty.png", "notes.png", "truncated.png"):
        assert by_name[name]["status"] == "error" and by_name[name]["error"]
        assert by_name[name]["probability"] == ""
    assert len(list(overlays.glob("*.png"))) == 2


def test_cli_fails_clearly_when_nothing_could_be_scored(
    tmp_path, tiny_model_dir, use_fake_weights, capsys
):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "b.jpg").write_text("<html></html>")
    code = _run_cli(
        ["predict", str(folder), "--model", str(tiny_model_dir), "--out", str(tmp_path / "r.csv")]
    )
    assert code != 0
    assert "no image could be processed" in capsys.readouterr().err
    assert len(list(csv.DictReader((tmp_path / "r.csv").open()))) == 2


def test_cli_says_clearly_when_there_is_no_model(tmp_path, use_fake_weights, capsys):
    write_png(tmp_path / "x.png")
    code = _run_cli(["predict", str(tmp_path / "x.png"), "--model", str(tmp_path / "missing")])
    assert code == 2
    assert "No model at" in capsys.readouterr().err


def test_prior_shift_is_removed_before_temperature(tiny_predictor, monkeypatch):
    import dataclasses

    image = radiograph_like(11)
    base = tiny_predictor.predict([image])[0]
    shifted = dataclasses.replace(tiny_predictor.config, prior_shift=1.5)
    monkeypatch.setattr(tiny_predictor, "config", shifted)
    result = tiny_predictor.predict([image])[0]
    assert result.logit == pytest.approx(base.logit - 1.5, abs=1e-5)
    assert result.probability < base.probability


def test_display_size_heat_map_is_computed_at_the_shown_size(tiny_model_dir, fake_imagenet_weights):
    # Issue 25: a page shows at most DISPLAY_MAX_SIDE pixels; the heat map is made at
    # that size in one resize, never at the full radiograph's size and then shrunk.
    from fracture.model.folder import load_model

    loaded = load_model(tiny_model_dir, fake_imagenet_weights)
    full = Predictor(loaded, batch_size=2)
    shown = Predictor(loaded, batch_size=2, display_max_side=120)
    image = np.repeat(np.repeat(radiograph_like(9, height=96, width=80), 5, axis=0), 5, axis=1)
    big = full.predict([image], with_cam=True)[0]
    small = shown.predict([image], with_cam=True)[0]
    assert big.heatmap.shape == (480, 400)
    assert small.image.shape == (120, 100, 3) and small.heatmap.shape == (120, 100)
    assert small.probability == big.probability and small.geometry == big.geometry
    # The same map, sampled coarser: its shrunk full-size twin agrees closely.
    import cv2

    shrunk = cv2.resize(big.heatmap, (100, 120), interpolation=cv2.INTER_AREA)
    assert np.abs(shrunk - small.heatmap).max() < 0.05
    with pytest.raises(ValueError, match="at least 1"):
        Predictor(loaded, batch_size=2, display_max_side=0, warmup=False)
