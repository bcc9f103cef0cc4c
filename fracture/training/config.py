"""The configurable parameters of a training run."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    """Configurable parameters of a training run."""

    image_size: int = 224
    fine_tune_from: str = "conv5_block1_out"
    head_epochs: int = 2
    epochs: int = 8  # fine-tuning epochs after the head phase
    batch_size: int = 32
    head_lr: float = 1e-3
    lr: float = 1e-4
    weight_decay: float = 1e-4
    dropout: float = 0.3
    augment: bool = True
    views: int = 2  # cached views per training image; view 0 is unaugmented
    patience: int = 3  # fine-tuning epochs without val AUROC gain before stopping
    seed: int = 0
    strategy: str = "default"  # default | mirrored | multiworker
    val_fraction: float = 0.15
    # What to learn (fracture.training.tasks.TASKS): "classes", one output per class
    # folder (binary when the folders are fracture and normal); "fracture", fracture
    # or not from a K-class folder set with a normal class.
    task: str = "classes"
    # Box supervision (fracture.training.losses): how much the box-alignment loss
    # counts against the cross-entropy; 0 turns it off. Images without boxes are
    # unaffected, so it is on by default. Binary fracture model only: a K-class
    # model has no single fracture logit whose map the boxes could teach.
    box_weight: float = 1.0
    # How much positive evidence on a normal image costs, inside that loss.
    normal_evidence_weight: float = 0.2
    # How much positive evidence outside the boxes of a fractured image costs, inside
    # that loss (the share of the map's mass in the boxes); 0 rewards the peak only.
    box_mass_weight: float = 0.0
    # 2 runs conv5 at stride 1, dilation 2: a Grad-CAM grid twice as fine
    # (fracture.model.network.ModelConfig.conv5_dilation).
    conv5_dilation: int = 1

    @property
    def total_epochs(self) -> int:
        return self.head_epochs + self.epochs
