"""Every figure the dashboard draws (plotly), from metrics, cards, runs and predictions.

One module per concern, all reachable as ``figures.<name>`` (the pages'
``from fracture.views import figures``):

* ``_style``: the shared colours, margins and legend places, so "fracture" looks
  the same on every page;
* ``probability``: Predict's gauge and batch histogram;
* ``dataset``: Dataset's class balance, breakdowns and image sizes;
* ``training``: Train's curves and confusion matrix;
* ``evaluation``: the Model page's ROC, PR, reliability and per-region figures;
* ``classes``: the figures of a K-class model;
* ``radiograph``: radiographs as zoomable figures with boxes and points.

The pages only place these figures; nothing here imports Streamlit.
"""

from __future__ import annotations

from fracture.views.figures._style import (
    COLOUR_FRACTURE,
    COLOUR_NORMAL,
    COLOUR_TRAIN,
    COLOUR_VAL,
    class_colours,
)
from fracture.views.figures.classes import (
    class_confusion_figure,
    class_probability_figure,
    class_roc_figure,
    per_class_figure,
)
from fracture.views.figures.dataset import (
    breakdown_figure,
    class_balance_figure,
    plural,
    size_figure,
)
from fracture.views.figures.evaluation import (
    body_region_accuracy_figure,
    pr_figure,
    region_auroc_figure,
    reliability_figure,
    roc_figure,
)
from fracture.views.figures.probability import probability_gauge, probability_histogram
from fracture.views.figures.radiograph import (
    COLOUR_STUDENT,
    COLOUR_TRUTH,
    BoxMark,
    PointMark,
    image_uri,
    radiograph_figure,
)
from fracture.views.figures.training import confusion_figure, training_curves_figure

__all__ = [
    "BoxMark",
    "COLOUR_STUDENT",
    "COLOUR_TRUTH",
    "PointMark",
    "image_uri",
    "radiograph_figure",
    "COLOUR_FRACTURE",
    "COLOUR_NORMAL",
    "COLOUR_TRAIN",
    "COLOUR_VAL",
    "body_region_accuracy_figure",
    "breakdown_figure",
    "class_balance_figure",
    "class_confusion_figure",
    "class_probability_figure",
    "class_roc_figure",
    "per_class_figure",
    "class_colours",
    "confusion_figure",
    "pr_figure",
    "plural",
    "probability_gauge",
    "probability_histogram",
    "region_auroc_figure",
    "reliability_figure",
    "roc_figure",
    "size_figure",
    "training_curves_figure",
]
