"""One source for each figure: one calibration error and one method on the card and the Model page,
every AUROC and accuracy named for what it is, and a reliability chart whose legend leaves the curves alone.

Issue 22, point 7: the Model page gave three calibration errors and two method names
for one model, and the Train page called a fracture-against-normal accuracy the
K-class accuracy. No TensorFlow here: cards and reports are dictionaries.
"""

from __future__ import annotations

import re

from fracture.model.card import (
    calibration_facts,
    calibration_sentence,
    headline,
    render_card_markdown,
)
from fracture.views import figures, summaries

PLATT = "Platt scaling (a temperature and a bias), fitted on val"


def _report() -> dict:
    """An evaluation.json with the three calibration errors the issue found, all different."""
    reliability = {
        "mean_predicted": [0.05, 0.5, 0.9],
        "observed_frequency": [0.04, 0.55, 0.85],
        "counts": [50, 20, 10],
    }
    return {
        "auroc": 0.91,
        "n": 80,
        "n_positive": 20,
        "temperature": 1.2,
        "ece": 0.049,  # in sample: the fit saw these images
        "ece_uncalibrated": 0.052,
        "reliability": reliability,
        "reliability_uncalibrated": reliability,
        "calibration_fit": {
            "method": PLATT,
            "temperature": 1.2,
            "ece_before": 0.057,
            "ece_after_in_sample": 0.049,
            "ece_after_out_of_fold": 0.056,
            "threshold_method": "median over bootstrap resamples of val",
            "operating_points": {},
        },
    }


def _card(report: dict) -> dict:
    return {
        "name": "m",
        "version": "1",
        "temperature": 1.2,
        "thresholds": {"high_sensitivity": 0.1},
        "operating_point": "high_sensitivity",
        "val_metrics": headline(report),
        "calibration": report["calibration_fit"],
    }


def _percentages_after(text: str, words: str) -> set[str]:
    return set(re.findall(rf"{words}[^%|]*?(\d+(?:\.\d+)?%)", text, flags=re.IGNORECASE))


def test_the_card_and_the_page_state_one_calibration_error_and_one_method():
    report = _report()
    card = _card(report)
    facts = calibration_facts(report, card)
    assert facts["method"] == PLATT and facts["ece"] == 0.056 and "out of fold" in facts["basis"]
    markdown = render_card_markdown(card, report)
    sentence = calibration_sentence(report, card)
    for text in (markdown, sentence):
        assert _percentages_after(text, "calibration error") == {"5.6%"}, text
        assert "temperature scaling" not in text.lower()
    assert PLATT in markdown and PLATT in sentence
    # the table row says the same figure as the sentence
    (row,) = [line for line in markdown.splitlines() if line.startswith("| Expected calibration")]
    assert "5.6%" in row


def test_without_a_recorded_fit_the_evaluated_error_and_temperature_scaling_are_named():
    report = _report()
    del report["calibration_fit"]
    facts = calibration_facts(report)
    assert facts["ece"] == 0.049 and facts["method"].startswith("Temperature scaling")
    assert _percentages_after(calibration_sentence(report), "calibration error") == {"4.9%"}


def test_the_reliability_legend_sits_outside_the_plot_and_carries_no_second_figure():
    figure = figures.reliability_figure(_report())
    legend = figure.layout.legend
    assert legend.y is not None and legend.y < 0 and legend.orientation == "h"
    assert figure.layout.margin.b >= 60
    assert not any("%" in (trace.name or "") for trace in figure.data)


def _class_report(with_normal: bool) -> dict:
    multiclass = {"class_names": ["normal", "a", "b", "c", "d"], "accuracy": 0.58}
    if with_normal:
        # the top level is any fracture against normal at the operating point
        return {"auroc": 0.91, "accuracy": 0.88, "macro_auroc": 0.878, "multiclass": multiclass}
    return {"auroc": 0.878, "accuracy": 0.58, "multiclass": multiclass}


def test_the_train_page_names_every_auroc_and_accuracy_for_what_it_is():
    card = {
        "multiclass": True,
        "classes": ["normal", "a", "b", "c", "d"],
        "normal_class": "normal",
        "val_metrics": headline(_class_report(with_normal=True)),
    }
    frame = summaries.compare_metrics(card, None)
    named = dict(zip(frame["metric"], frame["new model"]))
    assert named["AUROC, any fracture against normal"] == 0.91
    assert named["Macro AUROC (each of the 5 classes against the rest, averaged)"] == 0.878
    assert named["Accuracy over 5 classes (most likely class)"] == 0.58
    assert named["Accuracy, any fracture against normal (default operating point)"] == 0.88
    assert len(set(frame["metric"])) == len(frame)
    markdown = render_card_markdown(card, {})
    assert "| Accuracy over 5 classes (most likely class) | 58% |" in markdown
    assert "| Accuracy, any fracture against normal | 88% |" in markdown

    without_normal = {**card, "normal_class": None}
    without_normal["val_metrics"] = headline(_class_report(with_normal=False))
    frame = summaries.compare_metrics(without_normal, None)
    named = dict(zip(frame["metric"], frame["new model"]))
    assert named == {
        "Macro AUROC (each of the 5 classes against the rest, averaged)": 0.878,
        "Accuracy over 5 classes (most likely class)": 0.58,
    }


def test_a_fracture_model_says_fracture_against_normal():
    card = {"multiclass": False, "val_metrics": {"auroc": 0.9, "accuracy": 0.8}}
    frame = summaries.compare_metrics(card, None)
    assert list(frame["metric"]) == [
        "AUROC, fracture against normal",
        "Accuracy, fracture against normal (default operating point)",
    ]


def test_the_training_curves_say_which_auroc_the_epochs_measured():
    history = [{"epoch": 1, "train_auroc": 0.7, "val_auroc": 0.68, "train_loss": 1, "val_loss": 1}]
    titles = [a.text for a in figures.training_curves_figure(history).layout.annotations]
    assert "AUROC" in titles
    named = figures.training_curves_figure(history, "Macro AUROC over 5 classes")
    assert "Macro AUROC over 5 classes" in [a.text for a in named.layout.annotations]
