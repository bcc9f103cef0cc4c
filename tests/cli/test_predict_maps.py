"""``fracture predict``'s raw maps and overlays with a localisation head: the "where" map and every box.

A tiny model with a random, centre-biased localiser (``with_random_localiser``) finds boxes on
every image; the operating point decides which images are labelled fracture, and only
those get boxes, in the overlay and in the CSV.
"""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from conftest import with_random_localiser, write_png


@pytest.fixture(scope="module")
def located_dir(tiny_model_dir, tmp_path_factory):
    directory, _ = with_random_localiser(tiny_model_dir, tmp_path_factory.mktemp("located"))
    return directory


class FlagEverything:
    threshold = -1.0

    def score(self, features):
        return np.zeros(len(next(iter(features.values()))))


def _predict(tmp_path, monkeypatch, model_dir, threshold, *extra, flag=False):
    """Run the CLI on three images at ``threshold``; returns (files, rows, the predictor)."""
    import fracture.inference.predictor as predictor_module
    from fracture.cli.main import main

    loaded = []
    original = predictor_module.load_predictor

    def at_threshold(*args, **kwargs):
        predictor = original(*args, **kwargs)
        predictor.config = dataclasses.replace(
            predictor.config,
            thresholds={"high_sensitivity": threshold, "high_specificity": 1.0},
            operating_point="high_sensitivity",
        )
        predictor.ood_gate = FlagEverything() if flag else None
        loaded.append(predictor)
        return predictor

    monkeypatch.setattr(predictor_module, "load_predictor", at_threshold)
    files = [write_png(tmp_path / "in" / f"image{seed}.png", seed) for seed in range(3)]
    out = tmp_path / "results.csv"
    argv = ["predict", str(tmp_path / "in"), "--model", str(model_dir), "--out", str(out)]
    assert main([*argv, *extra]) == 0
    with out.open() as handle:
        rows = {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(handle)}
    return files, rows, loaded[0]


def _by_stem(folder, suffix):
    return {path.name.split("_", 1)[1].rsplit(suffix, 1)[0]: path for path in folder.glob("*")}


def test_heatmap_dir_writes_the_where_map_and_heatmap_kind_the_grad_cam(
    tmp_path, monkeypatch, located_dir, use_fake_weights
):
    maps, cams = tmp_path / "maps", tmp_path / "cams"
    files, _, predictor = _predict(
        tmp_path / "a", monkeypatch, located_dir, 0.0, "--heatmap-dir", str(maps)
    )
    _predict(
        tmp_path / "b",
        monkeypatch,
        located_dir,
        0.0,
        "--heatmap-dir",
        str(cams),
        "--heatmap-kind",
        "gradcam",
    )
    expected = predictor.predict(
        [np.asarray(Image.open(path).convert("RGB")) for path in files], with_cam=True
    )
    written, grad_cams = _by_stem(maps, "_heatmap.npy"), _by_stem(cams, "_heatmap.npy")
    assert set(written) == set(grad_cams) == {path.stem for path in files}
    for path, prediction in zip(files, expected):
        where = np.load(written[path.stem])
        assert where.dtype == np.float32 and where.shape == prediction.image.shape[:2]
        assert 0.0 <= where.min() <= where.max() <= 1.0
        np.testing.assert_allclose(where, prediction.location_image(), atol=1e-5)
        grad_cam = np.load(grad_cams[path.stem])
        assert grad_cam.dtype == np.float32 and grad_cam.shape == where.shape
        np.testing.assert_allclose(grad_cam, prediction.evidence_image(), atol=1e-4)
        assert not np.allclose(grad_cam, where)


def test_without_the_head_heatmap_dir_writes_the_grad_cam(
    tmp_path, monkeypatch, tiny_model_dir, use_fake_weights
):
    maps = tmp_path / "maps"
    files, _, predictor = _predict(
        tmp_path, monkeypatch, tiny_model_dir, 0.5, "--heatmap-dir", str(maps)
    )
    image = np.asarray(Image.open(files[0]).convert("RGB"))
    (prediction,) = predictor.predict([image], with_cam=True)
    assert prediction.location_image() is None
    written = _by_stem(maps, "_heatmap.npy")
    np.testing.assert_allclose(
        np.load(written[files[0].stem]), prediction.evidence_image(), atol=1e-4
    )


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_overlays_draw_the_where_map_and_every_box_only_on_images_labelled_fracture(
    tmp_path, monkeypatch, located_dir, use_fake_weights, threshold
):
    from fracture.inference.gradcam import draw_scored_boxes, overlay_heatmap

    overlays = tmp_path / "overlays"
    files, rows, predictor = _predict(
        tmp_path, monkeypatch, located_dir, threshold, "--gradcam-dir", str(overlays)
    )
    written = _by_stem(overlays, "_gradcam.png")
    boxes_seen = 0
    for path in files:
        image = np.asarray(Image.open(path).convert("RGB"))
        (prediction,) = predictor.predict([image], with_cam=True)
        assert prediction.location_boxes, "the centre-biased head finds a box on every image"
        plain = overlay_heatmap(image, prediction.location_image(), alpha=0.4)
        drawn = np.asarray(Image.open(written[path.stem]))
        row = rows[path.name]
        if threshold == 0.0:
            assert row["prediction"] == "fracture"
            assert prediction.drawn_boxes == prediction.location_boxes
            expected = draw_scored_boxes(plain, prediction.drawn_boxes, prediction.box_style)
            np.testing.assert_array_equal(drawn, expected)
            assert not np.array_equal(drawn, plain)
            listed = json.loads(row["boxes"])
            assert [b["score"] for b in listed] == pytest.approx(
                [b.score for b in prediction.drawn_boxes], abs=1e-4
            )
            boxes_seen += len(listed)
        else:
            assert row["prediction"] == "normal" and row["boxes"] == "" and row["box_x0"] == ""
            np.testing.assert_array_equal(drawn, plain)
    assert boxes_seen or threshold == 1.0


def test_a_flagged_image_gets_no_box_in_its_overlay_or_row(
    tmp_path, monkeypatch, located_dir, use_fake_weights
):
    from fracture.inference.gradcam import overlay_heatmap

    overlays = tmp_path / "overlays"
    files, rows, predictor = _predict(
        tmp_path, monkeypatch, located_dir, 0.0, "--overlay-dir", str(overlays), flag=True
    )
    written = _by_stem(overlays, "_gradcam.png")
    for path in files:
        row = rows[path.name]
        assert row["prediction"] == "not_assessed"
        assert row["boxes"] == "" and row["box_x0"] == "" and row["box_style"] == ""
        image = np.asarray(Image.open(path).convert("RGB"))
        (prediction,) = predictor.predict([image], with_cam=True)
        assert prediction.location_boxes and prediction.drawn_boxes == []
        plain = overlay_heatmap(image, prediction.location_image(), alpha=0.4)
        np.testing.assert_array_equal(np.asarray(Image.open(written[path.stem])), plain)
