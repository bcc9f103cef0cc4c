"""K-class inference: per-class probabilities, Grad-CAM for a chosen class, the CSV.

The model here is built by hand so that what it should do is known: a phantom's
fracture type decides its class. A bright horizontal line is a "transverse" fracture,
a vertical one "longitudinal", no line "normal". Two line detectors feed a GAP +
dense head whose weights send each detector to its class, so class k's Grad-CAM must
light up where, and only where, class k's line is.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from fracture.inference.engine import InferenceEngine
from fracture.inference.prediction import CLASS_COLUMN_PREFIX, CSV_COLUMNS, csv_columns
from fracture.inference.predictor import Predictor, with_class_map
from fracture.model.folder import LoadedModel, ModelConfig
from fracture.model.network import CAM_LAYER, LOGIT_LAYER, POOL_LAYER

SIZE = 64
GRID = 8  # the CAM grid: 64 px pooled by 8
CLASSES = ["longitudinal", "normal", "transverse"]
BACKGROUND, LINE = 20.0, 200.0


def _phantom_model():
    """Conv line detectors -> 8 x 8 grid (the CAM layer) -> GAP -> dense(3) -> softmax."""
    import keras

    image = keras.Input(shape=(SIZE, SIZE, 3), name="image")
    detect = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="lines")
    features = keras.layers.AveragePooling2D(SIZE // GRID, name=CAM_LAYER)(detect(image))
    pooled = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER)(features)
    dropped = keras.layers.Dropout(0.3, name="head_dropout")(pooled)
    logits = keras.layers.Dense(len(CLASSES), name=LOGIT_LAYER)(dropped)
    model = keras.Model(image, keras.layers.Activation("softmax", name="probability")(logits))

    # A bright row between dark rows (horizontal line) or column (vertical line);
    # uniform areas and lines of the other direction give exactly 0. Divided by the
    # response to a full-contrast line, so a line pixel reads 1.
    horizontal = np.array([[-1, -1, -1], [2, 2, 2], [-1, -1, -1]], np.float32)
    scale = 6 * (LINE - BACKGROUND)
    kernel = np.zeros((3, 3, 3, 3), np.float32)
    for channel in range(3):  # the mean of R, G, B
        kernel[:, :, channel, 0] = horizontal.T / (3 * scale)  # vertical line -> feature 0
        kernel[:, :, channel, 2] = horizontal / (3 * scale)  # horizontal line -> feature 2
    bias = np.array([0.0, 1.0, 0.0], np.float32)  # feature 1: constant, for "normal"
    detect.set_weights([kernel, bias])
    # Class k reads feature k: longitudinal <- vertical lines, transverse <- horizontal.
    weights = np.zeros((3, 3), np.float32)
    weights[0, 0] = weights[2, 2] = 600.0
    head_bias = np.array([0.0, 3.0, 0.0], np.float32)  # without a line, normal wins
    model.get_layer(LOGIT_LAYER).set_weights([weights, head_bias])
    return model


def _phantom(lines: list[tuple[str, int, int]]) -> np.ndarray:
    """A dark image with bright lines of 32 px: ("transverse" | "longitudinal", row, col)."""
    image = np.full((SIZE, SIZE, 3), BACKGROUND, np.float32)
    for kind, row, col in lines:
        if kind == "transverse":
            image[row, col : col + 32] = LINE
        else:
            image[row : row + 32, col] = LINE
    return image


@pytest.fixture(scope="module")
def phantom_model():
    return _phantom_model()


@pytest.fixture(scope="module")
def predictor(phantom_model):
    config = ModelConfig(
        image_size=SIZE,
        classes=CLASSES,
        thresholds={"high_sensitivity": 0.3, "high_specificity": 0.6},
        name="phantom-types",
    )
    return Predictor(LoadedModel(phantom_model, config, {}, None), batch_size=4)


def _reference_grad_cam(model, image: np.ndarray, k: int) -> np.ndarray:
    """Grad-CAM of class k by the gradient (Selvaraju et al. 2017), gradients summed over cells."""
    import keras
    import tensorflow as tf

    graph = keras.Model(
        model.input, [model.get_layer(CAM_LAYER).output, model.get_layer(LOGIT_LAYER).output]
    )
    with tf.GradientTape() as tape:
        features, logits = graph(image[None], training=False)
        score = logits[0, k]
    gradients = tape.gradient(score, features)[0].numpy()
    return np.maximum((features[0].numpy() * gradients.sum(axis=(0, 1))).sum(-1), 0)


def test_every_class_map_is_grad_cam_of_that_class_from_one_forward_pass(phantom_model):
    engine = InferenceEngine(phantom_model, batch_size=2)
    images = np.stack(
        [
            _phantom([("transverse", 12, 4), ("longitudinal", 30, 52)]),
            _phantom([("longitudinal", 4, 10)]),
        ]
    )
    out = engine.run(images, with_cam=True)
    assert out.logits.shape == (2, 3) and out.cams.shape == (2, GRID, GRID, 3)
    for index, image in enumerate(images):
        for k in range(3):
            expected = _reference_grad_cam(phantom_model, image, k)
            np.testing.assert_allclose(out.cams[index, ..., k], expected, rtol=1e-4, atol=1e-6)
    # The maps come with the very logits the plain forward pass gives.
    np.testing.assert_allclose(out.logits, engine.run(images, with_cam=False).logits, rtol=1e-6)


def test_each_class_map_lights_up_where_that_class_is(predictor):
    # A transverse line in the top-left, a longitudinal one on the right.
    image = _phantom([("transverse", 10, 2), ("longitudinal", 28, 56)]).astype(np.uint8)
    [prediction] = predictor.predict([image], with_cam=True)
    evidence = prediction.class_evidence
    transverse = evidence[..., CLASSES.index("transverse")]
    longitudinal = evidence[..., CLASSES.index("longitudinal")]
    top_t = np.unravel_index(np.argmax(transverse), transverse.shape)
    top_l = np.unravel_index(np.argmax(longitudinal), longitudinal.shape)
    assert top_t[0] == 10 // GRID and top_t[1] <= 34 // GRID  # on the horizontal line
    assert top_l[1] == 56 // GRID and top_l[0] >= 28 // GRID  # on the vertical line
    # Along the middle of the other class's line (its ends are corners, which both
    # detectors see), a class has no evidence at all, up to float round-off.
    assert longitudinal[10 // GRID, 2] < 1e-4 * longitudinal.max()
    assert transverse[5, 56 // GRID] < 1e-4 * transverse.max()
    assert not np.allclose(transverse, longitudinal)
    assert float(evidence[..., CLASSES.index("normal")].max()) < 1e-4 * transverse.max()


@pytest.mark.parametrize(
    "lines, expected",
    [
        ([("transverse", 30, 16)], "transverse"),
        ([("longitudinal", 16, 30)], "longitudinal"),
        ([], "normal"),
    ],
)
def test_the_phantoms_fracture_type_decides_the_class(predictor, lines, expected):
    [prediction] = predictor.predict([_phantom(lines).astype(np.uint8)], with_cam=True)
    probabilities = prediction.class_probabilities
    assert list(probabilities) == CLASSES  # the model's class order
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-9)
    assert prediction.top_class == expected and prediction.cam_class == expected
    # The fracture probability is "any fracture": 1 - P(normal), labelled at the threshold.
    assert prediction.probability == pytest.approx(1.0 - probabilities["normal"])
    assert prediction.label == ("normal" if expected == "normal" else "fracture")
    assert prediction.logit is None
    assert prediction.heatmap.shape == (SIZE, SIZE)


def test_picking_another_class_redraws_without_running_the_network(predictor, monkeypatch):
    image = _phantom([("transverse", 10, 2), ("longitudinal", 28, 56)]).astype(np.uint8)
    [prediction] = predictor.predict([image], with_cam=True)

    def no_network(*args, **kwargs):
        raise AssertionError("the network ran again")

    monkeypatch.setattr(predictor.engine, "run", no_network)
    shown = {name: with_class_map(prediction, name, predictor.config) for name in CLASSES}
    assert {name: p.cam_class for name, p in shown.items()} == {n: n for n in CLASSES}
    assert not np.allclose(shown["transverse"].heatmap, shown["longitudinal"].heatmap)
    # The normal class's map is not a finding: never a box.
    assert shown["normal"].box is None and shown["normal"].box_style is None
    with pytest.raises(ValueError, match="not one of the model's classes"):
        with_class_map(prediction, "spiral", predictor.config)


def test_csv_rows_carry_one_probability_per_class(predictor):
    images = [_phantom([("transverse", 30, 16)]).astype(np.uint8), b"not an image"]
    predictions = predictor.predict(images, names=["a.png", "b.png"])
    columns = predictor.csv_columns
    assert columns == csv_columns(CLASSES)
    assert columns[: len(CSV_COLUMNS)] == CSV_COLUMNS
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for prediction in predictions:
        writer.writerow(prediction.row())
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    values = [float(rows[0][CLASS_COLUMN_PREFIX + name]) for name in CLASSES]
    assert sum(values) == pytest.approx(1.0, abs=1e-5)
    assert rows[0]["top_class"] == "transverse"
    assert float(rows[0]["probability"]) == pytest.approx(
        1 - values[CLASSES.index("normal")], abs=1e-5
    )
    assert rows[1]["status"] == "error" and rows[1][CLASS_COLUMN_PREFIX + "normal"] == ""


def test_without_a_normal_class_the_top_class_is_the_answer(phantom_model):
    config = ModelConfig(image_size=SIZE, classes=["vertical", "flat", "horizontal"], thresholds={})
    predictor = Predictor(LoadedModel(phantom_model, config, {}, None), batch_size=2)
    [prediction] = predictor.predict([_phantom([("transverse", 30, 16)]).astype(np.uint8)])
    assert prediction.probability is None and prediction.threshold is None
    assert prediction.label == prediction.top_class == "horizontal"


def test_cli_predict_writes_class_columns_for_a_saved_k_class_model(
    tmp_path, fake_imagenet_weights, use_fake_weights
):
    import keras

    from fracture.cli.main import main
    from fracture.model.folder import imagenet_reference, save_model
    from fracture.model.network import build_classifier

    from conftest import TINY_SIZE, write_png

    config = ModelConfig(
        image_size=TINY_SIZE,
        fine_tune_from="conv5_block2_out",
        classes=["comminuted", "normal", "oblique"],
        thresholds={"high_sensitivity": 0.4, "high_specificity": 0.7},
        name="tiny-types",
    )
    model = build_classifier(config, fake_imagenet_weights)
    reference = imagenet_reference(model, config)
    keras.utils.set_random_seed(4)
    logit = model.get_layer(LOGIT_LAYER)
    kernel, bias = logit.get_weights()
    logit.set_weights(
        [np.random.default_rng(5).normal(0, 0.05, kernel.shape).astype("float32"), bias]
    )
    directory = tmp_path / "model"
    save_model(model, config, directory, reference=reference, card={"name": "tiny-types"})
    images = [write_png(tmp_path / "in" / f"{i}.png", seed=i) for i in range(3)]
    out = tmp_path / "out.csv"
    assert (
        main(["predict", str(tmp_path / "in"), "--model", str(directory), "--out", str(out)]) == 0
    )
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(images)
    assert tuple(rows[0]) == csv_columns(config.class_names)
    for row in rows:
        values = [float(row[CLASS_COLUMN_PREFIX + name]) for name in config.class_names]
        assert sum(values) == pytest.approx(1.0, abs=1e-5)
        assert row["top_class"] == config.class_names[int(np.argmax(values))]


# --------------------------------------------------------------------------
# What the pages build from K-class predictions (no Streamlit)


def test_heat_for_class_fits_the_kept_display_image(predictor):
    import dataclasses

    from fracture.views import results

    image = _phantom([("transverse", 10, 2), ("longitudinal", 28, 56)]).astype(np.uint8)
    [prediction] = predictor.predict([image], with_cam=True)
    # The page keeps a shrunken copy of the image; the map must follow it.
    small = dataclasses.replace(prediction, image=prediction.image[::2, ::2])
    shown = results.heat_for_class(small, "longitudinal", predictor.config)
    assert shown.heatmap.shape == (SIZE // 2, SIZE // 2) and shown.cam_class == "longitudinal"
    full = with_class_map(prediction, "longitudinal", predictor.config)
    assert full.heatmap.shape == (SIZE, SIZE)
    assert np.argmax(full.heatmap.max(axis=0)) >= 56 - GRID  # the vertical line's column


def test_batch_csv_table_and_figures_for_classes(predictor):
    from fracture.views import figures, results

    images = [_phantom([("longitudinal", 16, 30)]).astype(np.uint8), b"broken"]
    predictions = predictor.predict(images, names=["a.png", "b.png"])
    text = results.predictions_csv(predictions, 0.3, model_name="m", class_names=CLASSES).decode()
    header = text.splitlines()[0].split(",")
    assert header[: len(CSV_COLUMNS)] == list(CSV_COLUMNS)
    assert [CLASS_COLUMN_PREFIX + name for name in CLASSES] == header[
        len(CSV_COLUMNS) : len(CSV_COLUMNS) + 3
    ]
    frame = results.class_results_frame(predictions)
    assert frame["class"].tolist() == ["longitudinal", "could not be read"]
    assert list(frame.columns) == ["file", "class", *CLASSES, "error"]

    figure = figures.class_probability_figure(predictions[0].class_probabilities, "longitudinal")
    assert list(figure.data[0].y) == CLASSES
    matrix = [[5, 1, 0], [0, 4, 2], [1, 0, 6]]
    confusion = figures.class_confusion_figure(matrix, CLASSES)
    assert list(confusion.data[0].text.ravel()) == sum(matrix, [])
    with pytest.raises(ValueError, match="does not fit 2 class names"):
        figures.class_confusion_figure(matrix, CLASSES[:2])
