"""The Predict and Model pages with a K-class model (fracture types), driven by AppTest.

The served model is a tiny ResNet-50 with a three-class head (fake ImageNet weights, a
random head) and a synthetic evaluation: the pages are checked for what they show and
that picking a class's heat map runs nothing again, not for the model's accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fracture.config import get_settings

from app_helpers import png_bytes

streamlit_testing = pytest.importorskip("streamlit.testing.v1")
AppTest = streamlit_testing.AppTest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 180
CLASSES = ["comminuted", "normal", "transverse"]


def _k_class_model(
    directory: Path,
    imagenet_weights: Path,
    classes: list[str] = CLASSES,
    thresholds: dict[str, float] | None = None,
) -> Path:
    import keras

    from fracture.evaluation.evaluate import class_evaluation
    from fracture.model.folder import ModelConfig, imagenet_reference, save_model
    from fracture.model.network import LOGIT_LAYER, build_classifier

    config = ModelConfig(
        image_size=64,
        fine_tune_from="conv5_block2_out",
        classes=classes,
        thresholds={"high_sensitivity": 0.4, "high_specificity": 0.7}
        if thresholds is None
        else thresholds,
        name="fracture-types",
        version="1",
    )
    model = build_classifier(config, imagenet_weights)
    reference = imagenet_reference(model, config)
    keras.utils.set_random_seed(6)
    logit = model.get_layer(LOGIT_LAYER)
    kernel, bias = logit.get_weights()
    logit.set_weights([np.random.default_rng(7).normal(0, 0.05, kernel.shape).astype("f4"), bias])
    save_model(model, config, directory, reference=reference, card={"name": config.name})
    # A synthetic validation set: it exercises every plot, it says nothing about the model.
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 3, 90)
    logits = rng.normal(0, 1, (90, 3))
    logits[np.arange(90), labels] += 1.5
    report = class_evaluation(labels, config.probabilities(logits), config, n_bootstrap=20)
    (directory / "evaluation.json").write_text(json.dumps(report))
    return directory


def _environment(base: Path, fake_imagenet_weights: Path):
    import fracture.model.imagenet as weights

    for name in ("data", "runs"):
        (base / name).mkdir()
    patch = pytest.MonkeyPatch()
    patch.setenv("FRACTURE_CONFIG", str(base / "no-such-config.toml"))
    patch.setenv("FRACTURE_MODELS_DIR", str(base / "models"))
    patch.setenv("FRACTURE_DATA_DIR", str(base / "data"))
    patch.setenv("FRACTURE_RUNS_DIR", str(base / "runs"))
    patch.setenv("FRACTURE_CACHE_DIR", str(base / "cache"))
    patch.setenv("FRACTURE_BATCH_SIZE", "4")
    patch.delenv("FRACTURE_ADMIN_PASSWORD", raising=False)
    resolved = weights.ResolvedWeights(path=fake_imagenet_weights, sha256="fake", source="explicit")
    patch.setattr(weights, "resolve_imagenet_weights", lambda *a, **k: resolved)
    get_settings.cache_clear()
    yield SimpleNamespace(base=base, models=base / "models")
    patch.undo()
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def class_env(tmp_path_factory, fake_imagenet_weights):
    base = tmp_path_factory.mktemp("class-app")
    _k_class_model(base / "models" / "default", fake_imagenet_weights)
    yield from _environment(base, fake_imagenet_weights)


@pytest.fixture(scope="module")
def types_env(tmp_path_factory, fake_imagenet_weights):
    """A model of fracture types only: no normal class, so no threshold."""
    base = tmp_path_factory.mktemp("types-app")
    types = ["comminuted", "oblique", "transverse"]
    _k_class_model(base / "models" / "default", fake_imagenet_weights, types, thresholds={})
    yield from _environment(base, fake_imagenet_weights)


def _open(page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    if page != "app_pages/predict.py":
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(at: AppTest) -> str:
    kinds = ("markdown", "caption", "info", "warning", "error", "subheader", "header")
    return "\n".join(str(element.value) for kind in kinds for element in at.get(kind))


def test_predict_shows_every_class_and_picks_a_heat_map_without_scoring_again(class_env):
    from app_pages import _common

    at = _open("app_pages/predict.py")
    at.file_uploader[0].upload("wrist.png", png_bytes(2), "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(m.label == "Fracture probability" for m in at.metric)  # 1 - P(normal)
    picker = at.selectbox[0]
    assert picker.label == "Heat map for" and list(picker.options)[0].split(" ")[0] in CLASSES
    assert sorted(option.split(" ")[0] for option in picker.options) == CLASSES
    charts = at.get("plotly_chart")
    assert len(charts) == 2  # the class bars and the gauge
    assert "Probability of each class" in charts[0].proto.spec

    calls = []
    served = _common._load_served_model(
        str(class_env.models / "default"), _common._fingerprint(class_env.models / "default")
    )
    original = served.single.predict
    served.single.predict = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        other = next(name for name in CLASSES if not picker.value.startswith(name))
        picker.set_value(other).run()
    finally:
        served.single.predict = original
    assert not at.exception, [e.value for e in at.exception]
    assert calls == []
    # The class bars outline the class whose map is shown: now the picked one.
    bars = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    outlined = [y for y, c in zip(bars["y"], bars["marker"]["line"]["color"]) if c == "black"]
    assert outlined == [other]


def test_model_page_shows_per_class_results_in_plain_words(class_env):
    at = _open("app_pages/model.py")
    texts = _texts(at)
    assert "Per class" in texts and "Any fracture" in texts
    specs = "\n".join(chart.proto.spec for chart in at.get("plotly_chart"))
    assert "ROC per class" in specs and "Sensitivity and precision per class" in specs
    assert "called transverse" in specs  # the K x K matrix names its classes
    labels = [m.label for m in at.metric]
    assert "Cohen's kappa" in labels and "Classwise calibration error" in labels
    shown = texts + "\n".join(f"{m.label} {m.value}" for m in at.metric)
    assert "{" not in shown and str(class_env.base) not in shown


def test_a_model_without_a_normal_class_names_the_top_class_single_and_batch(types_env):
    at = _open("app_pages/predict.py")
    assert [r.label for r in at.radio] == ["Upload"]  # no operating point to pick
    at.file_uploader[0].upload("a.png", png_bytes(3), "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    top = next(m for m in at.metric if m.label == "Most probable class")
    assert top.value in ("comminuted", "oblique", "transverse")
    assert not any(m.label == "Fracture probability" for m in at.metric)

    at.file_uploader[0].upload("b.png", png_bytes(4), "image/png")
    at.file_uploader[0].upload("broken.png", b"not an image", "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert table["class"].tolist()[-1] == "could not be read"
    assert set(table["class"].tolist()[:-1]) <= {"comminuted", "oblique", "transverse"}

    at.switch_page("app_pages/model.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Per class" in _texts(at) and "Any fracture" not in _texts(at)


@pytest.fixture(scope="module")
def trained_env(tmp_path_factory, fake_imagenet_weights):
    """A K-class model as the trainer writes it (not a hand-made evaluation), served."""
    import shutil

    import keras

    from fracture.config import Settings
    from fracture.data.phantoms import synthesize_phantoms
    from fracture.model.imagenet import ResolvedWeights
    from fracture.training.config import TrainConfig
    from fracture.training.trainer import train

    base = tmp_path_factory.mktemp("trained-app")
    data = base / "types"
    synthesize_phantoms(data, 36, size=80, seed=3, classes=["normal", "oblique", "transverse"])
    patch = pytest.MonkeyPatch()
    import fracture.model.imagenet as weights

    resolved = ResolvedWeights(path=fake_imagenet_weights, sha256="fake", source="explicit")
    patch.setattr(weights, "resolve_imagenet_weights", lambda *a, **k: resolved)
    keras.utils.set_random_seed(0)
    config = TrainConfig(
        image_size=64,
        fine_tune_from="conv5_block2_out",
        head_epochs=1,
        epochs=0,
        batch_size=8,
        views=1,
        augment=False,
        seed=4,
    )
    settings = Settings(cache_dir=base / "cache", runs_dir=base / "train-runs")
    model_dir = train(data, base / "run", config, settings=settings)
    patch.undo()
    shutil.copytree(model_dir, base / "models" / "default")
    yield from _environment(base, fake_imagenet_weights)


@pytest.mark.slow
def test_a_trained_k_class_run_shows_per_class_results_on_the_model_page(trained_env):
    at = _open("app_pages/model.py")
    texts = _texts(at)
    assert "Per class" in texts and "Any fracture" in texts
    specs = "\n".join(chart.proto.spec for chart in at.get("plotly_chart"))
    assert "ROC per class" in specs and "called transverse" in specs
    assert "{" not in texts and str(trained_env.base) not in texts
    assert "Where the maps point" not in texts  # boxes mark fractures, not classes
