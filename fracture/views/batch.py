"""A batch on the Predict page at the engine's speed: one pass, kept small, ZIP made on the way.

Before (issue 25), a batch of 20 radiographs ran the network three times over: once
for the table (a batch predictor padded to its fixed size), again for the image shown,
and a third time, with heat maps, when the ZIP or CSV was asked for. Now the batch
goes once through the shared micro-batching queue
(:meth:`~fracture.inference.batching.SharedPredictor.iter_predict`, full batches, heat
maps at display size) and :class:`BatchScores` takes each result as it arrives:

- the table keeps a **light** copy (:func:`light`): the probability, the verdict's
  inputs and the boxes, without pixels, so the results can be re-thresholded at any
  operating point without the network, and the CSV written from them;
- the ZIP's overlay is handed to the worker pool (:class:`~fracture.views.results.OverlayArchive`)
  at once, so it is encoded while the table is drawn;
- only the few most suspicious images, the ones shown first, keep their pixels and
  maps (``keep_shown``), ready for the viewer; any other image is scored again when
  a person opens it (and then found by its content hash).

Streamlit-free; the page only calls it.
"""

from __future__ import annotations

import dataclasses

from fracture.inference.prediction import Prediction
from fracture.views.results import OverlayArchive, is_assessed

__all__ = ["KEEP_SHOWN", "BatchScores", "light"]

# Display-ready results kept per batch: the first rows a person sees (most suspicious
# first) without a second network pass. About 2-5 MB each at display size.
KEEP_SHOWN = 4


def light(prediction: Prediction) -> Prediction:
    """``prediction`` without its pixels and maps: what a table row, the CSV and a new
    operating point need (probability, verdict inputs, boxes), a few hundred bytes."""
    return dataclasses.replace(
        prediction,
        image=None,
        heatmap=None,
        features=None,
        evidence=None,
        location_outputs=None,
        class_evidence=None,
    )


class BatchScores:
    """The results of one batch, taken one at a time in input order.

    ``archive`` (optional) receives every full prediction first, so its overlay is
    encoded in the pool while the caller draws the table from :attr:`predictions`.
    """

    def __init__(self, archive: OverlayArchive | None = None, keep_shown: int = KEEP_SHOWN) -> None:
        self.archive = archive
        self.keep_shown = keep_shown
        self.predictions: list[Prediction] = []
        self._shown: list[tuple[float, int, Prediction]] = []

    def add(self, prediction: Prediction) -> None:
        """Take the next input's prediction (with its image and maps, or its error)."""
        position = len(self.predictions)
        if self.archive is not None:
            self.archive.add(prediction)
        self.predictions.append(light(prediction))
        if self.keep_shown and is_assessed(prediction) and prediction.image is not None:
            self._shown.append(
                (float(prediction.probability or 0.0), position, _viewable(prediction))
            )
            # Most suspicious first, as the table sorts; ties keep the upload order.
            self._shown.sort(key=lambda item: (-item[0], item[1]))
            del self._shown[self.keep_shown :]

    def __len__(self) -> int:
        return len(self.predictions)

    def shown_first(self) -> list[tuple[int, Prediction]]:
        """``(position, prediction)`` of the kept display-ready results, most suspicious first."""
        return [(position, prediction) for _, position, prediction in self._shown]


def _viewable(prediction: Prediction) -> Prediction:
    # The viewer needs the image, its maps and the head's grid; the pooled features
    # (the OOD gate's input, already applied) are dead weight.
    return dataclasses.replace(prediction, features=None)
