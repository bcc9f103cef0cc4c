"""The Predict page with a localisation head: Where and Why, boxes only at a fracture verdict.

The tiny test model gets a random localiser with a strong centre bias (as in
test_localiser_inference.py), so it finds boxes on every image; its operating points
are set around one image's probability, so that image is labelled fracture at the
high-sensitivity point and normal at the high-specificity one.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest

from fracture.config import get_settings

from app_helpers import add_evaluation, png_bytes
from conftest import with_random_localiser

streamlit_testing = pytest.importorskip("streamlit.testing.v1")
AppTest = streamlit_testing.AppTest
APP = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture(scope="module")
def located_env(tmp_path_factory, tiny_model_dir, fake_imagenet_weights):
    import fracture.model.imagenet as weights
    from fracture.inference.predictor import Predictor
    from fracture.model.folder import ModelFolder, load_model

    base = tmp_path_factory.mktemp("where")
    directory, _ = with_random_localiser(tiny_model_dir, base)
    predictor = Predictor(
        load_model(directory, fake_imagenet_weights), precision="float32", warmup=False
    )
    probability = predictor.predict([png_bytes(1)])[0].probability
    # The image sits between the two points: fracture at one, normal at the other.
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["thresholds"] = {
        "high_sensitivity": probability - 0.01,
        "high_specificity": probability + 0.01,
    }
    config["threshold"] = probability - 0.01
    config_path.write_text(json.dumps(config))
    folder = ModelFolder(directory)
    folder.rewrite_card(folder.read_card())
    models = base / "models"
    shutil.copytree(directory, models / "default")
    add_evaluation(models / "default")
    patch = pytest.MonkeyPatch()
    patch.setenv("FRACTURE_CONFIG", str(base / "no-such-config.toml"))
    patch.setenv("FRACTURE_MODELS_DIR", str(models))
    for name in ("data", "runs", "cache"):
        (base / name).mkdir(exist_ok=True)
        patch.setenv(f"FRACTURE_{name.upper()}_DIR", str(base / name))
    patch.delenv("FRACTURE_ADMIN_PASSWORD", raising=False)
    resolved = weights.ResolvedWeights(path=fake_imagenet_weights, sha256="fake", source="explicit")
    patch.setattr(weights, "resolve_imagenet_weights", lambda *a, **k: resolved)
    get_settings.cache_clear()
    yield SimpleNamespace(models=models, thresholds=config["thresholds"], weights=resolved)
    patch.undo()
    get_settings.cache_clear()


def _viewer(at) -> dict:
    charts = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    (viewer,) = [c for c in charts if c["data"] and c["data"][0].get("source")]
    return viewer


def _pick_point(at, name: str) -> None:
    (radio,) = [r for r in at.radio if r.label == "Operating point"]
    radio.set_value(name).run()
    assert not at.exception, [e.value for e in at.exception]


def test_where_is_the_default_and_boxes_follow_the_operating_point(located_env):
    at = AppTest.from_file(APP, default_timeout=180).run()
    _pick_point(at, "high_sensitivity")
    at.file_uploader[0].upload("wrist.png", png_bytes(1), "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert next(m for m in at.metric if m.label == "Label").value == "Fracture"
    (switch,) = [w for w in at.get("button_group") if w.label == "Map"]
    assert switch.value == "where"
    boxed = _viewer(at)
    assert boxed["layout"]["shapes"], "labelled fracture: the head's boxes are drawn"
    scores = [a["text"] for a in boxed["layout"]["annotations"]]
    assert len(scores) == len(boxed["layout"]["shapes"]) and all(s.endswith("%") for s in scores)
    assert "centre probability" in json.dumps(boxed["data"][1]["marker"])

    # Why: the Grad-CAM map, in its own units; the same boxes (they mark the finding).
    switch.set_value("why").run()
    why = _viewer(at)
    assert "evidence" in json.dumps(why["data"][1]["marker"])
    assert why["data"][0]["source"] != boxed["data"][0]["source"]

    # The same image at the high-specificity point is labelled normal: no box anywhere.
    _pick_point(at, "high_specificity")
    assert next(m for m in at.metric if m.label == "Label").value == "Normal"
    assert not _viewer(at)["layout"].get("shapes")


def test_the_zip_has_boxes_only_at_a_fracture_verdict(located_env):
    from fracture.inference.predictor import Predictor
    from fracture.model.folder import load_model
    from fracture.views import results

    predictor = Predictor(
        load_model(located_env.models / "default", located_env.weights.path),
        precision="float32",
        warmup=False,
    )
    thresholds = located_env.thresholds

    def overlay(threshold: float) -> np.ndarray:
        from PIL import Image

        predictions = predictor.iter_predict([png_bytes(1)], names=["wrist.png"], with_cam=True)
        data = results.overlay_zip(predictions, 0.45, threshold, thresholds=thresholds)
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return np.asarray(Image.open(io.BytesIO(archive.read("wrist_gradcam.png"))))

    height, width = 96, 80  # the uploaded image, top left; the caption strip differs anyway
    boxed = overlay(thresholds["high_sensitivity"])[:height, :width]
    plain = overlay(thresholds["high_specificity"])[:height, :width]
    # Over the image only the boxes differ (white lines, score text on a dark outline).
    differs = np.any(boxed != plain, axis=-1)
    assert differs.sum() > 20
    assert (boxed[differs] >= 200).all(axis=-1).mean() > 0.3
    assert not (plain == 255).all(axis=-1).any(), "no white box line at the normal verdict"
