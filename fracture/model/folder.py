"""The model-folder format: where a trained model lives on disk, and how it is saved and loaded.

A saved model is a small folder: only what differs from ImageNet (the
fine-tuned blocks as float16 deltas, the head in float32) plus
``config.json`` and the model card. Loading rebuilds ResNet-50 from the
resolved ImageNet weights and applies the difference, which keeps a model
folder near 30 MB so that it lives in git and on a hosted demo without LFS.
Every file that defines the model's behaviour is covered by a SHA-256 in the
card, and a folder whose files do not match is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from fracture.data.records import label_from_name
from fracture.errors import ModelLoadError
from fracture.io.files import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from fracture.model.card import render_card_markdown
from fracture.model.network import LOGIT_LAYER, build_classifier, trained_layers

if TYPE_CHECKING:
    import keras

__all__ = [
    "ModelFolder",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "CARD_JSON",
    "CARD_MD",
    "OOD_FILE",
    "REGION_FILE",
    "EVALUATION_FILE",
    "ModelConfig",
    "BINARY_CLASSES",
    "LoadedModel",
    "ModelLoadError",
    "save_model",
    "load_model",
    "file_checksums",
    "quantise_like_saved",
    "imagenet_reference",
    "read_config",
    "apply_stored_weights",
]

CONFIG_FILE = "config.json"


WEIGHTS_FILE = "weights.npz"


CARD_JSON = "model_card.json"


CARD_MD = "model_card.md"


OOD_FILE = "ood.npz"
# Optional body-region head on the pooled features (see fracture.inference.region).
REGION_FILE = "region_head.npz"
# Optional hardware (metal implant) head, the same kind of head (fracture.inference.heads).
HARDWARE_FILE = "hardware_head.npz"
EVALUATION_FILE = "evaluation.json"


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
        if self.classes is None:
            return
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
        return {"format": FORMAT_VERSION, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _is_head(name: str) -> bool:
    return name == LOGIT_LAYER


def save_model(
    model: "keras.Model",
    config: ModelConfig,
    directory: str | os.PathLike[str],
    *,
    reference: dict[str, list[np.ndarray]],
    card: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a model folder: config, weight deltas and card.

    ``reference`` maps layer names to their ImageNet weights (see
    :func:`imagenet_reference`); the backbone is stored as float16 differences from it, which are small, so
    float16 loses nothing that matters. Call :func:`quantise_like_saved` first
    when the in-memory model must predict exactly as the saved one will.
    """
    folder = ModelFolder(directory)
    arrays: dict[str, np.ndarray] = {}
    for layer in trained_layers(model, config):
        values = [np.asarray(w) for w in layer.get_weights()]
        if _is_head(layer.name):
            for index, value in enumerate(values):
                arrays[f"head/{layer.name}/{index}"] = value.astype(np.float32)
            continue
        base = reference[layer.name]
        for index, (value, base_value) in enumerate(zip(values, base)):
            arrays[f"delta/{layer.name}/{index}"] = (value - base_value).astype(np.float16)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    folder.write_weights(buffer.getvalue())
    folder.write_config(config)
    folder.write_card(dict(card or {}), markdown=False)
    return folder.path


def imagenet_reference(model: "keras.Model", config: ModelConfig) -> dict[str, list[np.ndarray]]:
    """Snapshot the weights of the layers that fine-tuning will change, before it does."""
    return {
        layer.name: [np.array(w) for w in layer.get_weights()]
        for layer in trained_layers(model, config)
        if not _is_head(layer.name)
    }


def quantise_like_saved(
    model: "keras.Model", config: ModelConfig, reference: dict[str, list[np.ndarray]]
) -> None:
    """Round the fine-tuned backbone to what :func:`save_model` stores.

    Evaluating, calibrating and choosing thresholds after this step means the
    numbers in the model card describe the model that is shipped, bit for bit.
    """
    for layer in trained_layers(model, config):
        if _is_head(layer.name):
            continue
        base = reference[layer.name]
        rounded = [
            b + (w - b).astype(np.float16).astype(np.float32)
            for w, b in zip(layer.get_weights(), base)
        ]
        layer.set_weights(rounded)


def file_checksums(directory: str | os.PathLike[str]) -> dict[str, str]:
    """SHA256 of the files that define a model's behaviour."""
    directory = Path(directory)
    checksums = {}
    for name in (CONFIG_FILE, WEIGHTS_FILE, OOD_FILE, REGION_FILE, HARDWARE_FILE):
        path = directory / name
        try:
            stat = path.stat()
        except OSError:
            continue
        if path.is_file():
            checksums[name] = _sha256(
                str(path.resolve()), stat.st_mtime_ns, stat.st_size, stat.st_ino
            )
    return checksums


@functools.lru_cache(maxsize=64)
def _sha256(path: str, mtime_ns: int, size: int, inode: int) -> str:
    """The file's SHA256, remembered while its change time, size and inode stay the same.

    The dashboard verifies the served folder every few seconds (hashing 28 MB of
    weights each time showed in the Predict page's profile); a rewritten, replaced
    or swapped file changes at least one of the key's fields and is hashed again.
    """
    del mtime_ns, size, inode  # only the cache key
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class LoadedModel:
    """A rebuilt classifier with its configuration and card."""

    model: "keras.Model"
    config: ModelConfig
    card: dict[str, Any]
    directory: Path | None


class ModelFolder:
    """One model folder on disk: the only code that knows its file names and how they change.

    Every write is atomic. Whatever rewrites a file that the card's checksums
    cover (config, weights, OOD gate, region head) rewrites the card last, so that an
    interruption leaves a folder that fails its checksum and is refused, never
    one that loads with mismatched parts.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ModelFolder({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def card_path(self) -> Path:
        return self.path / CARD_JSON

    @property
    def card_markdown_path(self) -> Path:
        return self.path / CARD_MD

    @property
    def ood_path(self) -> Path:
        return self.path / OOD_FILE

    @property
    def region_head_path(self) -> Path:
        return self.path / REGION_FILE

    @property
    def hardware_head_path(self) -> Path:
        return self.path / HARDWARE_FILE

    @property
    def evaluation_path(self) -> Path:
        return self.path / EVALUATION_FILE

    def has_config(self) -> bool:
        return self.config_path.is_file()

    def has_ood_gate(self) -> bool:
        return self.ood_path.is_file()

    def has_region_head(self) -> bool:
        return self.region_head_path.is_file()

    def has_hardware_head(self) -> bool:
        return self.hardware_head_path.is_file()

    def looks_like_model(self) -> bool:
        """Whether any file a model folder always has is here (complete or not)."""
        return any(path.exists() for path in (self.config_path, self.weights_path, self.card_path))

    def checksums(self) -> dict[str, str]:
        return file_checksums(self.path)

    def read(self) -> tuple[ModelConfig, dict[str, Any]]:
        """The config and card, verified against the card's checksums (see :func:`read_config`)."""
        return read_config(self.path)

    def read_card(self) -> dict[str, Any]:
        """The card as it is, unverified; empty when missing or unreadable (for listings)."""
        try:
            card = json.loads(self.card_path.read_text())
        except (OSError, ValueError):
            return {}
        return card if isinstance(card, dict) else {}

    def card_markdown(self) -> str | None:
        """The card for people, or None when the folder has none."""
        try:
            return self.card_markdown_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def read_evaluation(self) -> dict[str, Any] | None:
        """The validation report written with the model, or None."""
        report = read_json(self.evaluation_path, default=None)
        return report if isinstance(report, dict) else None

    def write_weights(self, data: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.weights_path, data)

    def write_config(self, config: ModelConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config_path, config.to_json())

    def write_evaluation(self, report: dict[str, Any]) -> None:
        atomic_write_json(self.evaluation_path, report)

    def write_card(self, card: dict[str, Any], *, markdown: bool = True) -> dict[str, Any]:
        """Write ``card`` with fresh checksums of every file; returns what was written.

        Call it after every other file of the folder is written: the checksums
        it stores are what :func:`read_config` verifies.
        """
        card = {**card, "checksums": self.checksums()}
        atomic_write_json(self.card_path, card)
        if markdown:
            self.write_markdown(card)
        return card

    def write_markdown(self, card: dict[str, Any]) -> None:
        """Render ``card`` as ``model_card.md`` (not covered by the checksums)."""
        atomic_write_text(self.card_markdown_path, render_card_markdown(card))

    def rewrite_card(self, card: dict[str, Any], **card_updates: Any) -> dict[str, Any]:
        """Give the card ``card_updates`` and fresh checksums, then re-render its Markdown."""
        return self.write_card({**card, **card_updates})

    def rewrite_config(
        self, config: ModelConfig, card: dict[str, Any], **card_updates: Any
    ) -> dict[str, Any]:
        """Write ``config``, then bring the card up to date (see :meth:`rewrite_card`)."""
        self.write_config(config)
        return self.rewrite_card(card, **card_updates)


def read_config(directory: str | os.PathLike[str]) -> tuple[ModelConfig, dict[str, Any]]:
    """Read and verify a model folder's config and card without building anything."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise ModelLoadError(
            f"No model at {directory}: it has no {CONFIG_FILE}. Train one with "
            f"'python -m fracture train DATA --out runs/NAME' or pass --model."
        )
    card_path = directory / CARD_JSON
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    expected = card.get("checksums")
    if not expected:
        raise ModelLoadError(f"Model {directory} has no checksums in {CARD_JSON}; refusing it")
    actual = file_checksums(directory)
    for name, digest in expected.items():
        if actual.get(name) != digest:
            raise ModelLoadError(
                f"Model {directory} is corrupt or half-written: {name} does not match "
                f"the checksum in its model card"
            )
    unverified = sorted(set(actual) - set(expected))
    if unverified:
        raise ModelLoadError(
            f"Model {directory} has {', '.join(unverified)} not covered by the checksums "
            f"in {CARD_JSON}; refusing it"
        )
    config = ModelConfig.from_json(json.loads((directory / CONFIG_FILE).read_text()))
    return config, card


def load_model(
    directory: str | os.PathLike[str],
    imagenet_weights: str | os.PathLike[str] | None,
) -> LoadedModel:
    """Rebuild a saved model: ResNet-50 from ImageNet weights plus the stored difference."""
    directory = Path(directory)
    config, card = read_config(directory)
    model = build_classifier(config, imagenet_weights)
    with np.load(directory / WEIGHTS_FILE) as stored:
        arrays = {key: stored[key] for key in stored.files}
    apply_stored_weights(model, config, arrays)
    return LoadedModel(model=model, config=config, card=card, directory=directory)


def apply_stored_weights(
    model: "keras.Model", config: ModelConfig, arrays: dict[str, np.ndarray]
) -> None:
    """Add stored deltas to the ImageNet backbone and set the head."""
    used: set[str] = set()
    for layer in trained_layers(model, config):
        kind = "head" if _is_head(layer.name) else "delta"
        current = layer.get_weights()
        updated = []
        for index, value in enumerate(current):
            key = f"{kind}/{layer.name}/{index}"
            if key not in arrays:
                raise ModelLoadError(f"Stored weights lack {key}; the model folder is incomplete")
            stored = arrays[key].astype(np.float32)
            if stored.shape != value.shape:
                raise ModelLoadError(
                    f"Stored weights {key} have shape {stored.shape}, the network built from "
                    f"config.json has {value.shape}"
                    + (
                        f" (its classes list {config.num_outputs} outputs)"
                        if kind == "head"
                        else ""
                    )
                    + "; the model folder does not match its config"
                )
            updated.append(stored if kind == "head" else value + stored)
            used.add(key)
        layer.set_weights(updated)
    unused = set(arrays) - used
    if unused:
        raise ModelLoadError(
            f"Stored weights have {len(unused)} arrays this architecture does not use "
            f"(e.g. {sorted(unused)[0]}); was it saved with another fine_tune_from?"
        )
