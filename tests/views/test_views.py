"""fracture.views: the tables, downloads, images and figures behind the pages, no Streamlit."""

from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from fracture.inference.prediction import CSV_COLUMNS, Prediction
from fracture.views import (
    batch,
    browse,
    context,
    figures,
    learn,
    overlays,
    report,
    results,
    studies,
    summaries,
)

from conftest import radiograph_like, write_png


def _ok(name: str, probability: float, **extra) -> Prediction:
    return Prediction(
        source=name, status="ok", probability=probability, label="normal", threshold=0.5, **extra
    )


def _failed(name: str) -> Prediction:
    return Prediction(source=name, status="error", error=f"{name}: is empty (0 bytes)")


@pytest.mark.parametrize(
    "module",
    [batch, browse, context, figures, learn, overlays, report, results, studies, summaries],
)
def test_module_does_not_import_streamlit(module):
    # The core must stay importable and testable without a script runner.
    assert "streamlit" not in module.__dict__
    source = module.__file__
    with open(source, encoding="utf-8") as handle:
        assert "import streamlit" not in handle.read()


def test_label_uses_the_predictors_inclusive_rule():
    assert results.label_for(0.3, 0.3) == "fracture"
    assert results.label_for(0.2999, 0.3) == "normal"


@pytest.mark.parametrize(
    ("probability", "threshold", "band"),
    [
        (0.02, 0.5, results.BAND_NORMAL),
        (0.45, 0.5, results.BAND_UNCERTAIN),
        (0.55, 0.5, results.BAND_UNCERTAIN),
        (0.97, 0.5, results.BAND_FRACTURE),
        # A low (high-sensitivity) threshold: 0.04 is near it, 0.001 clearly below it.
        (0.04, 0.05, results.BAND_UNCERTAIN),
        (0.001, 0.05, results.BAND_NORMAL),
        (0.3, 0.05, results.BAND_FRACTURE),
        (0.0, 0.5, results.BAND_NORMAL),
        (1.0, 0.5, results.BAND_FRACTURE),
    ],
)
def test_confidence_band_is_measured_in_logits_around_the_threshold(probability, threshold, band):
    assert results.confidence_band(probability, threshold) == band


def test_confidence_band_rejects_a_non_positive_margin():
    with pytest.raises(ValueError):
        results.confidence_band(0.5, 0.5, margin=0)


def test_results_frame_sorts_most_suspicious_first_and_errors_last():
    predictions = [
        _ok("a.png", 0.2),
        _failed("broken.png"),
        _ok("b.png", 0.9, in_distribution=False),
        _ok("c.png", 0.2),
    ]
    frame = results.results_frame(predictions, threshold=0.5)
    assert list(frame.columns) == list(results.RESULT_COLUMNS)
    assert frame["file"].tolist() == ["a.png", "c.png", "b.png", "broken.png"]
    # The index leads back to the input order whatever the sort.
    assert frame.index.tolist() == [0, 3, 2, 1]
    assert frame.loc[0, "label"] == "normal"
    # Flagged out of distribution: no label, no band, no probability shown; after judged rows.
    assert frame.loc[2, "label"] == "not assessed" and frame.loc[2, "confidence"] == ""
    assert frame.loc[2, "shown_probability"] == ""
    assert not frame.loc[2, "in_distribution"] and frame.loc[0, "in_distribution"] is not True
    assert frame.loc[1, "label"] == "could not be read" and "empty" in frame.loc[1, "error"]
    assert frame.loc[1, "confidence"] == ""
    assert frame["probability"].isna().tolist() == [False, False, False, True]


def test_results_frame_puts_not_assessed_rows_last_by_name_not_by_hidden_probability():
    predictions = [
        _ok("zebra.png", 0.99, in_distribution=False),
        _failed("b-broken.png"),
        _ok("apple.png", 0.01, in_distribution=False),
        _ok("mid.png", 0.5),
        _failed("a-broken.png"),
        _ok("moon.png", 0.6, in_distribution=False),
    ]
    frame = results.results_frame(predictions, threshold=0.5)
    assert frame["file"].tolist() == [
        "mid.png",
        "apple.png",
        "moon.png",
        "zebra.png",
        "a-broken.png",
        "b-broken.png",
    ]


def test_a_clicked_cell_or_a_ticked_row_picks_the_row_and_steps_stop_at_the_ends():
    assert results.selected_row(None) is None
    assert results.selected_row({"rows": [], "cells": []}) is None
    assert results.selected_row({"rows": [3], "cells": []}) == 3
    assert results.selected_row({"rows": [], "cells": [(4, "file")]}) == 4
    assert [results.step_row(i, 1, 3) for i in range(3)] == [1, 2, 2]
    assert [results.step_row(i, -1, 3) for i in range(3)] == [0, 0, 1]
    assert results.row_selection(2)["selection"]["rows"] == [2]
    with pytest.raises(ValueError):
        results.step_row(0, 1, 0)


def test_results_frame_relabels_at_the_chosen_operating_point():
    frame = results.results_frame([_ok("a.png", 0.4)], threshold=0.3)
    assert frame.loc[0, "label"] == "fracture"


def test_predictions_csv_has_the_cli_columns_input_order_and_chosen_threshold():
    predictions = [
        _ok("a.png", 0.4),
        _failed("broken.png"),
        _ok("b.png", 0.1),
        _ok("cat.png", 0.9, in_distribution=False),
    ]
    data = results.predictions_csv(
        predictions, 0.3, model_name="m", model_version="7", operating_point="high_sensitivity"
    )
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert list(rows[0]) == [*CSV_COLUMNS, "model_name", "model_version", "operating_point"]
    assert {(r["model_name"], r["model_version"], r["operating_point"]) for r in rows} == {
        ("m", "7", "high_sensitivity")
    }
    # Out of distribution: its own documented value, never a label.
    assert rows[3]["prediction"] == results.CSV_NOT_ASSESSED == "not_assessed"
    assert [row["path"] for row in rows] == ["a.png", "broken.png", "b.png", "cat.png"]
    assert rows[0]["prediction"] == "fracture" and float(rows[0]["threshold"]) == pytest.approx(0.3)
    assert rows[1]["status"] == "error" and rows[1]["probability"] == ""
    assert rows[2]["prediction"] == "normal"


def test_batch_counts():
    predictions = [_ok("a", 0.9, in_distribution=False), _ok("b", 0.1), _failed("c")]
    # The flagged image counts as not assessed, not as a fracture: the counts add up.
    assert results.batch_counts(predictions, 0.5) == {
        "fracture": 0,
        "normal": 1,
        "error": 1,
        "not_assessed": 1,
    }


@pytest.mark.parametrize(
    ("probability", "text"),
    [
        (0.0, "< 1%"),
        (0.004, "< 1%"),
        (0.01, "1%"),
        (0.1844, "18%"),
        (0.99, "99%"),
        (0.9996, "> 99%"),
        (1.0, "> 99%"),
        (None, ""),
    ],
)
def test_probabilities_are_shown_with_the_precision_they_bear(probability, text):
    assert results.format_probability(probability) == text


def test_threshold_is_formatted_alike_everywhere():
    assert results.format_threshold(0.12775) == "12.8%"
    # a phantom model's tiny threshold never reads "0.0%" (as if everything were a fracture)
    assert results.format_threshold(0.0004) == "< 1%"
    assert results.exact_percent(0.0004) == "0.04%"
    figure = figures.probability_histogram([0.1, 0.2], 0.12775)
    assert "12.8%" in figure.layout.title.text


@pytest.mark.parametrize(
    ("source", "member"),
    [
        ("a.png", "a_gradcam.png"),
        ("scans/2024/b.dcm", "scans/2024/b_gradcam.png"),
        ("../../etc/passwd", "etc/passwd_gradcam.png"),
        ("/abs/x.jpg", "abs/x_gradcam.png"),
        ("we?ird*name.png", "we_ird_name_gradcam.png"),
        ("..", "image_gradcam.png"),
    ],
)
def test_overlay_member_names_stay_inside_the_archive(source, member):
    assert results.overlay_member_name(source) == member


def test_overlay_zip_writes_one_png_per_image_and_lists_failures():
    image = radiograph_like(1)
    heat = np.zeros(image.shape[:2], np.float32)
    heat[10:20, 10:20] = 1.0
    predictions = iter(
        [
            _ok("x/a.png", 0.7, image=image, heatmap=heat),
            _ok("y/a.png", 0.2, image=image, heatmap=heat),
            _ok("x/a.png", 0.2, image=image, heatmap=heat),  # same name twice: kept apart
            _failed("broken.png"),
        ]
    )
    data = results.overlay_zip(predictions, alpha=0.5, threshold=0.5)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        assert sorted(names) == sorted(
            ["x/a_gradcam.png", "y/a_gradcam.png", "x/a_2_gradcam.png", "errors.txt"]
        )
        overlay = np.asarray(Image.open(io.BytesIO(archive.read("x/a_gradcam.png"))))
        # The overlay, a colour bar on its right and a caption strip below it.
        assert overlay.shape[0] > image.shape[0] and overlay.shape[1] > image.shape[1]
        bar = overlay[: image.shape[0], image.shape[1] :]
        assert (bar[..., 0] > 200).any() and (bar[..., 2] > 200).any()  # red and blue ends
        caption = overlay[image.shape[0] :, : image.shape[1]]
        assert (caption < 100).any()  # dark text on white
        # Hot pixels are coloured, cold ones are the radiograph unchanged.
        assert not np.array_equal(overlay[15, 15], image[15, 15])
        np.testing.assert_array_equal(overlay[60, 60], image[60, 60])
        errors = archive.read("errors.txt").decode()
        assert errors.count("broken.png") == 1  # the message already names the file


def test_thumbnail_shrinks_keeping_aspect_and_never_enlarges():
    image = np.zeros((400, 200, 3), np.uint8)
    assert browse.thumbnail(image, 100).shape == (100, 50, 3)
    assert browse.thumbnail(image, 1000) is image


def test_draw_boxes_marks_the_box_edges_in_a_copy():
    image = np.zeros((101, 101, 3), np.uint8)
    out = browse.draw_boxes(image, [(0.2, 0.2, 0.6, 0.6)], thickness=1)
    assert image.max() == 0  # input untouched
    assert tuple(out[20, 40]) == browse.COLOUR_BOX  # top edge
    assert out[40, 40].max() == 0  # inside stays clear


def test_load_thumbnail_decodes_shrinks_and_draws(tmp_path):
    path = write_png(tmp_path / "a.png", seed=2)  # 96 x 80
    out = browse.load_thumbnail(path, [(0.1, 0.1, 0.5, 0.5)], max_side=48)
    assert out.shape == (48, 40, 3)
    assert (out == np.array(browse.COLOUR_BOX, np.uint8)).all(axis=2).any()


def test_load_thumbnail_raises_invalid_image_for_a_broken_file(tmp_path):
    from fracture.io.images import InvalidImageError

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(InvalidImageError):
        browse.load_thumbnail(broken)


def test_image_sizes_reads_headers_samples_and_reports_failures(tmp_path):
    paths = [write_png(tmp_path / f"{i}.png", seed=i) for i in range(5)]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    sizes, problems = browse.image_sizes([*paths, broken])
    assert len(sizes) == 5 and set(sizes["width"]) == {80} and set(sizes["height"]) == {96}
    assert len(problems) == 1 and "broken.png" in problems[0]
    sample, _ = browse.image_sizes(paths, limit=3)
    assert len(sample) == 3


def test_filter_frame_and_pages():
    import pandas as pd

    frame = pd.DataFrame(
        {
            "split": ["train", "train", "val", "val"],
            "label_name": ["fractured", "normal", "fractured", "normal"],
            "region": ["hand", None, "leg", "hand"],
        }
    )
    assert len(browse.filter_frame(frame, split="val")) == 2
    assert len(browse.filter_frame(frame, split="train", label_name="normal")) == 1
    assert len(browse.filter_frame(frame, region="unknown")) == 1
    assert len(browse.filter_frame(frame)) == 4
    assert browse.page_count(0, 12) == 1
    assert browse.page_count(25, 12) == 3
    assert browse.page_slice(25, 3, 12) == slice(24, 25)
    assert browse.page_slice(25, 9, 12) == slice(24, 25)  # clamped to the last page
    assert browse.page_slice(5, 1, 12) == slice(0, 5)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, None),
        (-1, None),
        (float("nan"), None),
        (42.4, "42 s"),
        (750, "12 min 30 s"),
        (3 * 3600 + 5 * 60, "3 h 05 min"),
    ],
)
def test_format_duration(seconds, text):
    assert summaries.format_duration(seconds) == text


def test_run_progress_for_preparing_epochs_and_the_end_in_plain_words():
    caching = summaries.run_progress(
        {
            "state": "caching",
            "phase": "caching features",
            "done": 160,
            "total": 216,
            "eta_seconds": 2,
            "message": "Computing frozen-backbone features (160/216)",
        }
    )
    assert caching.fraction == pytest.approx(160 / 216)
    # no time left while preparing: that rate says nothing about the epochs ahead
    assert caching.eta is None and not caching.finished
    assert caching.label == "preparing images" and caching.text == "Preparing images (160 of 216)"
    first_epoch = {"state": "running", "phase": "head", "epoch": 1, "epochs": 4, "batches": 10}
    assert summaries.run_progress({**first_epoch, "batch": 5, "eta_seconds": 90}).eta is None
    ended = summaries.run_progress({**first_epoch, "batch": 10, "eta_seconds": 90})
    assert ended.eta == "1 min 30 s" and ended.label == "training"
    running = summaries.run_progress(
        {
            "state": "running",
            "phase": "fine-tune",
            "epoch": 3,
            "epochs": 4,
            "batch": 5,
            "batches": 10,
            "eta_seconds": 30,
        }
    )
    assert running.fraction == pytest.approx((2 + 0.5) / 4) and running.eta == "30 s"
    finishing = summaries.run_progress({"state": "finishing", "phase": "ood", "message": "x"})
    assert finishing.label == "saving the model" and "finish" not in finishing.text.lower()
    assert "out-of-distribution" not in finishing.text
    done = summaries.run_progress({"state": "completed", "eta_seconds": 3})
    assert done.fraction == 1.0 and done.finished and done.eta is None
    unknown = summaries.run_progress({})
    assert unknown.state == "unknown" and unknown.fraction is None


def test_card_headline_and_comparison():
    new = {
        "name": "run",
        "version": "2",
        "val_metrics": {"auroc": 0.9, "auroc_ci": [0.85, 0.94], "sensitivity": 0.8},
    }
    old = {"val_metrics": {"auroc": 0.85, "sensitivity": None}}
    assert summaries.card_headline(new) == {
        "name": "run",
        "version": "2",
        "val_auroc": 0.9,
        "val_auroc_ci": [0.85, 0.94],
    }
    assert summaries.card_headline(None)["val_auroc"] is None
    table = summaries.compare_metrics(new, old)
    assert table["metric"].tolist() == [
        "AUROC, fracture against normal",
        "Sensitivity (default operating point)",
    ]
    assert table.loc[0, "difference"] == pytest.approx(0.05)
    assert table.loc[1, "difference"] is None or str(table.loc[1, "difference"]) == "<NA>"
    assert summaries.compare_metrics(None, None).empty


def test_models_compare_only_on_the_same_dataset_fingerprint():
    def card(fingerprint):
        return {"training_data": {"fingerprint": fingerprint}}

    assert summaries.same_dataset(card("abc"), card("abc"))
    assert not summaries.same_dataset(card("abc"), card("xyz"))
    assert not summaries.same_dataset(card(None), card(None))  # unknown matches nothing
    assert not summaries.same_dataset({}, card("abc"))


def test_hardware_subgroup_only_where_the_dataset_has_hardware():
    with_hardware = {"n": 60, "subgroups": {"hardware_free": {"n": 50, "auroc": 0.8}}}
    without = {"n": 60, "subgroups": {"hardware_free": {"n": 60, "auroc": 0.8}}}
    assert summaries.hardware_free_subgroup(with_hardware)["auroc"] == 0.8
    assert summaries.hardware_free_subgroup(without) is None
    assert summaries.hardware_free_subgroup({}) is None


@pytest.fixture(scope="module")
def report():
    from fracture.evaluation.metrics import evaluation_report

    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 40)
    logits = labels * 2.0 + rng.normal(0, 1, labels.size)
    regions = ["hand", "leg"] * 20 + ["hip"] * 40
    hardware = [False] * 70 + [True] * 10
    thresholds = {"high_sensitivity": 0.3, "high_specificity": 0.7}
    return evaluation_report(
        labels,
        logits,
        1.2,
        thresholds,
        regions=regions,
        hardware=hardware,
        n_bootstrap=50,
        pointing={"hits": 3, "n": 4, "score": 0.75},
    )


def test_figures_build_from_an_evaluation_report(report):
    roc = figures.roc_figure({"active": report, "other": report})
    names = [trace.name for trace in roc.data]
    assert any(name.startswith("active (AUROC") for name in names)
    assert sum("high sensitivity" in (name or "") for name in names) == 1
    assert figures.pr_figure(report).data[0].x is not None
    reliability = figures.reliability_figure(report)
    assert len(reliability.data) == 3  # diagonal, calibrated, before scaling
    regions = figures.region_auroc_figure(report)
    assert "without hardware" in regions.data[0].x
    # the n= labels sit at the bars' foot, clear of the intervals' whiskers at the top
    assert regions.data[0].insidetextanchor == "start"
    matrix = report["operating_points"]["high_sensitivity"]["confusion_matrix"]
    confusion = figures.confusion_figure(matrix)
    assert np.asarray(confusion.data[0].z).sum() == report["n"]
    with pytest.raises(ValueError):
        figures.confusion_figure([[1, 2, 3]])


def test_figures_cope_with_a_report_without_curves():
    empty = {"roc": None, "pr": None, "auroc": None}
    assert len(figures.roc_figure({"m": empty}).data) == 1  # only the chance line
    assert len(figures.pr_figure(empty).data) == 0
    assert len(figures.region_auroc_figure(empty).data[0].x) == 0


def test_probability_and_dataset_figures():
    gauge = figures.probability_gauge(0.8, 0.3)
    assert gauge.data[0].value == pytest.approx(80.0)
    assert gauge.data[0].gauge.threshold.value == pytest.approx(30.0)
    histogram = figures.probability_histogram([0.1, None, 0.9], 0.5)
    assert list(histogram.data[0].x) == [0.1, 0.9]
    balance = figures.class_balance_figure({"train": {"fractured": 3, "normal": 5, "total": 8}})
    assert [trace.name for trace in balance.data] == ["fractured", "normal"]

    import pandas as pd

    frame = pd.DataFrame(
        {
            "region": ["hand", None, "hand"],
            "label_name": ["fractured", "normal", "normal"],
            "hardware": pd.array([True, None, False], dtype="boolean"),
        }
    )
    regions = figures.breakdown_figure(frame, "region", "Regions")
    fractured, normal = regions.data
    assert dict(zip(fractured.x, fractured.y)) == {"hand": 1, "unknown": 0}
    assert dict(zip(normal.x, normal.y)) == {"hand": 1, "unknown": 1}
    hardware = figures.breakdown_figure(frame, "hardware", "Hardware")
    assert set(hardware.data[1].x) == {"True", "False", "unknown"}
    sizes = figures.size_figure(
        pd.DataFrame(
            {"path": ["/a/b.png", "/a/c.png", "/a/d.png"], "width": [3, 3, 5], "height": [4, 4, 6]}
        )
    )
    # One marker per distinct size, with its count: three files, two sizes.
    assert list(sizes.data[0].customdata) == [2, 1]
    assert "3 images sampled, 2 distinct sizes" in sizes.layout.title.text
    assert (
        figures.plural(1, "image") == "1 image" and figures.plural(1204, "image") == "1,204 images"
    )
    # One size only (a phantom set): whole-pixel ticks, no 255.5 px.
    single = figures.size_figure(pd.DataFrame({"path": ["a"], "width": [256], "height": [256]}))
    for axis in (single.layout.xaxis, single.layout.yaxis):
        assert axis.tickformat == "d" and axis.dtick == 5
        low, high = axis.range
        assert low < 256 < high and high - low >= 20


def test_training_curves_figure_marks_the_fine_tune_switch():
    history = [
        {
            "epoch": 1,
            "phase": "head",
            "train_loss": 0.7,
            "val_loss": 0.69,
            "train_auroc": 0.6,
            "val_auroc": 0.62,
        },
        {
            "epoch": 2,
            "phase": "fine-tune",
            "train_loss": 0.5,
            "val_loss": 0.6,
            "train_auroc": 0.8,
            "val_auroc": 0.7,
        },
    ]
    figure = figures.training_curves_figure(history)
    assert len(figure.data) == 4
    assert any(getattr(shape, "x0", None) == 1.5 for shape in figure.layout.shapes)
    assert len(figures.training_curves_figure([]).data) == 4  # empty run: axes, no crash


def test_body_region_figure_draws_each_region_with_its_interval():
    from fracture.evaluation.proportions import wilson_rate

    report = {
        "per_region": {
            "hand": wilson_rate(9, 10),
            "mixed": wilson_rate(3, 4),
            "hip": wilson_rate(0, 0),
        }
    }
    bars = figures.body_region_accuracy_figure(report).data[0]
    assert list(bars.x) == ["hand", "several regions"]  # plain words; no images, no bar
    assert list(bars.y) == [0.9, 0.75]
    low, high = report["per_region"]["hand"]["ci"]
    assert bars.error_y.arrayminus[0] == pytest.approx(0.9 - low)
    assert bars.error_y.array[0] == pytest.approx(high - 0.9)


def test_csv_names_regions_as_the_pages_do():
    row = Prediction(
        source="x.png",
        status="ok",
        probability=0.2,
        threshold=0.5,
        body_region="mixed",
        body_region_probability=0.9,
    ).row()
    assert row["body_region"] == "several regions"


def test_demote_headings_moves_headings_down_but_not_code():
    text = (
        "# Model card: a-very-long-name\n\n## Data\ntext #1\n```\n# a comment\n```\n###### deep\n"
    )
    assert summaries.demote_headings(text, 2) == (
        "### Model card: a-very-long-name\n\n#### Data\ntext #1\n```\n# a comment\n```\n###### deep\n"
    )
