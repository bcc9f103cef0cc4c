"""The configurable parameters of a training run: the one place they are defined.

:class:`TrainConfig` is checked when it is made, so a bad value fails in the
process that asked for it (the Train page, the command line), in words, before
TensorFlow loads in a training process. The ``train`` command's flags are
generated from its fields (:func:`fracture.cli.train.add_train_parser`), and a
background run gets it as ``train_config.json`` in its run folder
(:mod:`fracture.training.runs`), never as hand-written flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fracture.training.tasks import TASKS

__all__ = ["TrainConfig", "STRATEGIES"]

STRATEGIES = ("default", "mirrored", "multiworker")


def _option(default: Any, help: str, **metadata: Any) -> Any:
    """A field whose ``help`` (and ``choices``) the ``train`` command's flag shows."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class TrainConfig:
    """Configurable parameters of a training run."""

    image_size: int = _option(224, "network input side in pixels (each image letterboxed to it)")
    fine_tune_from: str = _option(
        "conv5_block1_out", "freeze up to this layer; the layers after it are fine-tuned"
    )
    head_epochs: int = _option(2, "head-only epochs first")
    epochs: int = _option(8, "fine-tuning epochs after the head phase")
    batch_size: int = _option(32, "images per training batch")
    head_lr: float = _option(1e-3, "learning rate of the head phase")
    lr: float = _option(1e-4, "learning rate of the fine-tuning phase")
    weight_decay: float = _option(1e-4, "AdamW weight decay")
    dropout: float = _option(0.3, "dropout before the logit layer")
    augment: bool = _option(True, "augmented views of the training images")
    views: int = _option(2, "cached views per training image; view 0 is unaugmented")
    patience: int = _option(3, "fine-tuning epochs without val AUROC gain before stopping")
    seed: int = _option(0, "seed of the split, the augmentation and the initialisation")
    strategy: str = _option(
        "default",
        "tf.distribute strategy: mirrored replicates over GPUs (or logical CPUs), "
        "multiworker reads TF_CONFIG",
        choices=STRATEGIES,
    )
    val_fraction: float = _option(
        0.15, "share of the images held out for validation when the dataset has no val split"
    )
    # What to learn (fracture.training.tasks.TASKS).
    task: str = _option(
        "classes",
        "classes (default): one output per class folder, a fracture model when the "
        "folders are fractured and normal, a K-class model for any other names; fracture: "
        "fracture or not, the other classes of a set with a normal class merged",
        choices=tuple(TASKS),
    )
    # Box supervision (fracture.training.losses). Images without boxes are
    # unaffected, so it is on by default. Binary fracture model only: a K-class
    # model has no single fracture logit whose map the boxes could teach.
    box_weight: float = _option(
        1.0,
        "weight of the box-alignment loss that teaches the heat map the radiologists' "
        "boxes (0 turns it off; images without boxes are unaffected)",
    )
    normal_evidence_weight: float = _option(
        0.2, "cost of heat-map evidence on normal images, inside the box loss"
    )
    box_mass_weight: float = _option(
        0.0,
        "cost of heat-map evidence outside the boxes of fractured images, inside the box "
        "loss (0, the default, rewards only the peak)",
    )
    # fracture.model.folder.ModelConfig.conv5_dilation
    conv5_dilation: int = _option(
        1,
        "2: conv5 at stride 1, dilation 2, a heat-map grid twice as fine (slower)",
        choices=(1, 2),
    )

    def __post_init__(self) -> None:
        problems = self._type_problems() or self._value_problems()
        if problems:
            raise ValueError("Invalid training settings: " + "; ".join(problems))

    def _type_problems(self) -> list[str]:
        problems = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _has_type(value, type(f.default)):
                problems.append(f"{f.name} must be {type(f.default).__name__}, got {value!r}")
            elif "choices" in f.metadata and value not in f.metadata["choices"]:
                choices = ", ".join(str(c) for c in f.metadata["choices"])
                problems.append(f"{f.name} must be one of {choices}, got {value!r}")
        return problems

    def _value_problems(self) -> list[str]:
        problems = []
        for name, least in {"image_size": 32, "batch_size": 1, "views": 1}.items():
            if getattr(self, name) < least:
                problems.append(f"{name} must be at least {least}, got {getattr(self, name)}")
        for name in (
            "head_epochs",
            "epochs",
            "patience",
            "seed",
            "weight_decay",
            "box_weight",
            "normal_evidence_weight",
            "box_mass_weight",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative, got {getattr(self, name)}")
        if self.total_epochs < 1:
            problems.append("head_epochs + epochs must be at least 1")
        for name in ("head_lr", "lr"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be at least 0 and below 1, got {self.dropout}")
        if not 0 < self.val_fraction < 1:
            problems.append(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        if not self.fine_tune_from.strip():
            problems.append("fine_tune_from must name a layer")
        return problems

    @property
    def total_epochs(self) -> int:
        return self.head_epochs + self.epochs

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        """The config a JSON object describes; unknown keys are an error, missing ones default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown training setting(s): {', '.join(unknown)}")
        return cls(**data)


def _has_type(value: Any, kind: type) -> bool:
    """Whether ``value`` fits a field whose default is a ``kind`` (an int fits a float field)."""
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):  # bool is an int in Python, but True is no batch size
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)
