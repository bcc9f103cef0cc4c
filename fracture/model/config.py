"""A model's configuration (``config.json`` of a model folder): what it takes to rebuild it.

:class:`ModelConfig` is what the network is built from (:mod:`fracture.model.network`),
what the folder stores (:mod:`fracture.model.folder`) and what the card describes
(:mod:`fracture.model.card`); it lives here, below all three, so that none of them
imports another just to name it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from fracture.data.records import label_from_name

__all__ = ["ModelConfig", "BINARY_CLASSES", "FORMAT_VERSION"]

FORMAT_VERSION = 1
# The binary model's classes, in output order: column 1 is the fracture probability.
BINARY_CLASSES: tuple[str, str] = ("normal", "fracture")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a classifier and prepare its input."""

    image_size: int = 224
    # Layers after this one are fine-tuned; it and everything before stay ImageNet.
    fine_tune_from: str = "conv5_block1_out"
    dropout: float = 0.3
    # None: the binary fracture model, one sigmoid logit (classes "normal" and
    # "fracture"); every model folder saved before K classes existed reads as this.
    # A list: a K-class softmax model whose logit layer has one unit per class, in
    # this order (the order the training data's class folders sorted to). Stored
    # only when set, so a binary config.json is byte for byte what it always was.
    classes: list[str] | None = None
    # Calibration and operating points are fitted on val. Class-weighted training
    # trains the logit as if both classes were equally common, which adds
    # log(w_fracture / w_normal) to it; ``prior_shift`` removes that before the
    # temperature is applied, so probabilities match the data's prevalence.
    # Binary only: Platt scaling fits it with the temperature (one logit, one bias).
    # A K-class model keeps it at 0; its temperature divides all K logits,
    # softmax(logits / T) (Guo et al., "On Calibration of Modern Neural Networks",
    # ICML 2017), which changes confidence but never the ranking or the top class.
    prior_shift: float = 0.0
    temperature: float = 1.0
    # Binary models with a localisation head: the raw fracture logit the calibration
    # reads is the classifier's logit plus this weight times the head's peak centre
    # logit (fracture.model.localiser), fitted on val with the calibration
    # (fracture.evaluation.operating_points.calibrate) and kept only where it raises
    # the out-of-fold AUROC. Two heads that read the same pass and were trained for
    # different jobs make a small ensemble: the head's peak alone separates fractured
    # from normal radiographs with an AUROC near 0.9. 0: the classifier's logit
    # alone (every folder saved before it existed). Stored only when set.
    localiser_weight: float = 0.0
    # Operating points on the probability of any fracture: the fracture probability
    # of a binary model, 1 - P(normal) of a K-class model with a normal class
    # (:attr:`normal_index`). Empty for a K-class model without one: it has no
    # "fracture or not" to threshold, and reports its top class instead.
    thresholds: dict[str, float] = field(
        default_factory=lambda: {"high_sensitivity": 0.5, "high_specificity": 0.5}
    )
    operating_point: str = "high_sensitivity"
    # "bfloat16" once `python -m fracture bench --apply` has found it within 0.005
    # AUROC of float32 on val and faster; None serves float32.
    inference_precision: str | None = None
    # 2: the last stage (conv5) runs at stride 1 with dilation 2, so the Grad-CAM
    # grid is 1/16 of the input (24 x 24 at 384 px) instead of 1/32 (Yu and Koltun,
    # "Multi-Scale Context Aggregation by Dilated Convolutions", ICLR 2016; the
    # DeepLab recipe). The ImageNet weights stay valid; a finer grid is what lets
    # a heat map land on a fracture a few millimetres wide. 1: plain ResNet-50.
    conv5_dilation: int = 1
    # Heat-map intensity is evidence / evidence_scale, clipped to [0, 1]: one
    # absolute scale fixed on val, so a confident normal shows little heat and a
    # fracture shows its evidence (see fracture.inference.gradcam). None: each
    # map is scaled to its own peak (models saved before the scale existed).
    evidence_scale: float | None = None
    name: str = "untrained"
    version: str = "0"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.localiser_weight) and self.localiser_weight >= 0):
            raise ValueError(
                f"localiser_weight must be a finite number >= 0, got {self.localiser_weight}"
            )
        if self.classes is None:
            return
        if self.localiser_weight:
            raise ValueError("localiser_weight is for the binary model only")
        classes = [str(name) for name in self.classes]
        # A list whatever came in (a tuple, JSON), so that saved and loaded configs compare equal.
        object.__setattr__(self, "classes", classes)
        if len(classes) < 2:
            raise ValueError(f"A K-class model needs at least 2 classes, got {classes}")
        if any(not name.strip() for name in classes):
            raise ValueError(f"Class names must not be blank, got {classes}")
        duplicates = sorted({name for name in classes if classes.count(name) > 1})
        if duplicates:
            raise ValueError(f"Class names must be unique; repeated: {', '.join(duplicates)}")
        if self.prior_shift != 0.0:
            raise ValueError("prior_shift is for the binary model only; a K-class model has 0")

    @property
    def is_multiclass(self) -> bool:
        """Whether this is a K-class softmax model (False: the binary sigmoid model)."""
        return self.classes is not None

    @property
    def class_names(self) -> list[str]:
        """The classes in output order; ``["normal", "fracture"]`` for the binary model."""
        return list(self.classes) if self.classes is not None else list(BINARY_CLASSES)

    @property
    def num_outputs(self) -> int:
        """Units of the logit layer: 1 for the binary model (one sigmoid logit), else K."""
        return len(self.classes) if self.classes is not None else 1

    @property
    def normal_index(self) -> int | None:
        """Index into :attr:`class_names` of the class meaning "no fracture", or None.

        Recognised by the folder-name synonyms of :data:`fracture.data.records.CLASS_SYNONYMS`
        ("normal", "negative", "non-fractured", ...); the first such class wins.
        """
        for index, name in enumerate(self.class_names):
            if label_from_name(name) == 0:
                return index
        return None

    @property
    def threshold(self) -> float:
        """The any-fracture threshold of the chosen operating point."""
        if self.operating_point not in self.thresholds:
            raise ValueError(
                f"Model {self.name!r} has no {self.operating_point!r} threshold"
                + (
                    ": it has no normal class, so it names the most likely class instead"
                    if self.normal_index is None
                    else ""
                )
            )
        return float(self.thresholds[self.operating_point])

    def probabilities(self, raw_logits: ArrayLike) -> np.ndarray:
        """Calibrated class probabilities (n, len(class_names)) from the network's raw logits.

        Binary: ``p = sigmoid((z - prior_shift) / temperature)`` gives the columns
        (1 - p, p); ``raw_logits`` may be (n,) or (n, 1). K classes:
        ``softmax(z / temperature)`` over the (n, K) logits.
        """
        from scipy.special import softmax

        z = np.asarray(raw_logits, np.float64)
        if self.classes is None:
            scaled = (z.reshape(len(z)) - self.prior_shift) / self.temperature
            # The very expression the binary Predictor has always used, so that its
            # probabilities stay identical to the last bit (exp overflows to 0 safely).
            with np.errstate(over="ignore"):
                fracture = 1.0 / (1.0 + np.exp(-scaled))
            return np.stack([1.0 - fracture, fracture], axis=1)
        if z.ndim != 2 or z.shape[1] != self.num_outputs:
            raise ValueError(f"Expected logits of shape (n, {self.num_outputs}), got {z.shape}")
        return softmax(z / self.temperature, axis=1)

    def any_fracture(self, probabilities: ArrayLike) -> np.ndarray | None:
        """P(any fracture) per row of :meth:`probabilities`: 1 - P(normal); None without a normal class.

        This is what operating points, triage and the CSV use. For the binary model
        it is the fracture column itself, exactly the probability it always gave.
        """
        p = np.asarray(probabilities, np.float64)
        if self.classes is None:
            return p[:, 1]
        index = self.normal_index
        return None if index is None else 1.0 - p[:, index]

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["classes"] is None:
            del data["classes"]
        if not data["localiser_weight"]:
            del data["localiser_weight"]
        return {"format": FORMAT_VERSION, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
