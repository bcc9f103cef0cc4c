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

import functools
import hashlib
import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from fracture.errors import ModelLoadError
from fracture.io.files import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from fracture.model.card import render_card_markdown
from fracture.model.config import BINARY_CLASSES, ModelConfig
from fracture.model.network import LOGIT_LAYER, build_classifier, trained_layers
from fracture.model.reports import EvaluationReport, ModelCard

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
    "LOCALISER_FILE",
    "EVALUATION_FILE",
    "ONNX_DIR",
    "ONNX_RECORD",
    "HEAD_FILES",
    "HeadFile",
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
# Optional localisation head on conv4's features (see fracture.model.localiser).
LOCALISER_FILE = "localiser.npz"
# Optional hardware (metal implant) head, the same kind of head (fracture.inference.heads).
HARDWARE_FILE = "hardware_head.npz"
# The optional heads a model folder can hold beside the network, each in its own
# file that the card's checksums cover. A new head adds its file name here, and
# passes its object to ModelFolder.write_model(heads={NAME: head}).
HEAD_FILES: tuple[str, ...] = (OOD_FILE, REGION_FILE, HARDWARE_FILE, LOCALISER_FILE)
EVALUATION_FILE = "evaluation.json"
# The model's ONNX export, for the TensorFlow-free runtime (fracture.inference.runtime):
# a folder derived from the files above by ``fracture export --into-model-folder``
# (fracture.inference.export writes what is inside). ONNX_RECORD beside it holds the
# SHA-256 of every exported file and the checksums of the model files it was built
# from, so a corrupt export, or one left from weights that have since changed, is
# refused and rebuilt, never served.
ONNX_DIR = "onnx"
ONNX_RECORD = "built_from.json"
_ONNX_STAGING_PREFIX = ".onnx-staging-"


def _is_head(name: str) -> bool:
    return name == LOGIT_LAYER


class HeadFile(Protocol):
    """A head that writes itself to one file of a model folder (the OOD gate, the region head)."""

    def save(self, path: str | os.PathLike[str]) -> Any: ...


def save_model(
    model: "keras.Model",
    config: ModelConfig,
    directory: str | os.PathLike[str],
    *,
    reference: dict[str, list[np.ndarray]],
    card: ModelCard | None = None,
) -> Path:
    """Write ``model`` as a model folder: config, weight deltas and card (no Markdown, no heads).

    ``reference`` maps layer names to their ImageNet weights (see
    :func:`imagenet_reference`); the backbone is stored as float16 differences from it, which are small, so
    float16 loses nothing that matters. Call :func:`quantise_like_saved` first
    when the in-memory model must predict exactly as the saved one will. A
    finished model with its heads, evaluation and card for people is
    :meth:`ModelFolder.write_model`'s job.
    """
    folder = ModelFolder(directory)
    folder.write_network(model, config, reference=reference)
    folder.write_card(card or {}, markdown=False)
    return folder.path


def _encode_weights(
    model: "keras.Model", config: ModelConfig, reference: dict[str, list[np.ndarray]]
) -> bytes:
    """The ``weights.npz`` bytes: the head in float32, the backbone as float16 deltas."""
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
    return buffer.getvalue()


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
    for name in (CONFIG_FILE, WEIGHTS_FILE, *HEAD_FILES):
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


def _stat_key(path: Path) -> tuple[int, int, int]:
    """What :func:`_sha256` remembers a file's digest by: change time, size, inode."""
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


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
    card: ModelCard
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

    @property
    def localiser_path(self) -> Path:
        return self.path / LOCALISER_FILE

    def has_localiser(self) -> bool:
        return self.localiser_path.is_file()

    def has_hardware_head(self) -> bool:
        return self.hardware_head_path.is_file()

    @property
    def onnx_dir(self) -> Path:
        return self.path / ONNX_DIR

    def onnx_staging_dir(self) -> Path:
        """A fresh empty folder inside this one to build an ONNX export in (same disk: the
        finished export is moved into place by a rename, see :meth:`install_onnx_export`)."""
        import tempfile

        return Path(tempfile.mkdtemp(prefix=_ONNX_STAGING_PREFIX, dir=self.path))

    def install_onnx_export(
        self, staged: str | os.PathLike[str], built_from: Mapping[str, str] | None = None
    ) -> Path:
        """Checksum the export built in ``staged`` and move it into place as :attr:`onnx_dir`.

        The record written first names the SHA-256 of every file of the export and the
        checksums of the model files it was built from: ``built_from``, the checksums
        verified when the model was loaded (``LoadedModel.card["checksums"]``), else the
        files' checksums now. An export already in
        place is replaced; a reader sees the old one or the new one, never half of one.
        """
        import shutil

        staged = Path(staged)
        files = {
            path.name: _sha256(str(path.resolve()), *_stat_key(path))
            for path in sorted(staged.iterdir())
            if path.is_file() and path.name != ONNX_RECORD
        }
        if not files:
            raise ModelLoadError(f"{staged} holds no exported files to install")
        source = dict(built_from) if built_from is not None else self.checksums()
        atomic_write_json(staged / ONNX_RECORD, {"files": files, "built_from": source})
        staged.chmod(0o755)  # mkdtemp made it private; a server may run as another user
        old = None
        if self.onnx_dir.exists():
            old = Path(str(staged) + ".old")
            os.replace(self.onnx_dir, old)
        os.replace(staged, self.onnx_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.onnx_dir

    def onnx_export_problem(self) -> str | None:
        """Why the folder's ONNX export cannot be served, in plain words; None when it can.

        Missing, unreadable, a file that does not match its checksum, or built from
        model files that have changed since.
        """
        record_path = self.onnx_dir / ONNX_RECORD
        if not record_path.is_file():
            return f"{self.path} has no ONNX export yet"
        record = read_json(record_path, default=None)
        if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
            return f"the ONNX export's record {record_path} is unreadable"
        for name, digest in record["files"].items():
            path = self.onnx_dir / name
            if not path.is_file():
                return f"the ONNX export lacks {name}"
            if _sha256(str(path.resolve()), *_stat_key(path)) != digest:
                return f"the ONNX export's {name} does not match its checksum"
        if record.get("built_from") != self.checksums():
            return "the ONNX export was built from other model files than the folder holds now"
        return None

    def looks_like_model(self) -> bool:
        """Whether any file a model folder always has is here (complete or not)."""
        return any(path.exists() for path in (self.config_path, self.weights_path, self.card_path))

    def checksums(self) -> dict[str, str]:
        return file_checksums(self.path)

    def read(self) -> tuple[ModelConfig, ModelCard]:
        """The config and card, verified against the card's checksums (see :func:`read_config`)."""
        return read_config(self.path)

    def read_card(self) -> ModelCard:
        """The card as it is, unverified; empty when missing or unreadable (for listings)."""
        try:
            card = json.loads(self.card_path.read_text())
        except (OSError, ValueError):
            return {}
        return cast(ModelCard, card) if isinstance(card, dict) else {}

    def card_markdown(self) -> str | None:
        """The card for people, or None when the folder has none."""
        try:
            return self.card_markdown_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def read_evaluation(self) -> EvaluationReport | None:
        """The validation report written with the model, or None."""
        report = read_json(self.evaluation_path, default=None)
        return cast(EvaluationReport, report) if isinstance(report, dict) else None

    def write_weights(self, data: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.weights_path, data)

    def write_config(self, config: ModelConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config_path, config.to_json())

    def write_evaluation(self, report: EvaluationReport) -> None:
        atomic_write_json(self.evaluation_path, report)

    def write_network(
        self,
        model: "keras.Model",
        config: ModelConfig,
        *,
        reference: dict[str, list[np.ndarray]],
    ) -> None:
        """Write the weights (see :func:`save_model`) and ``config.json``; the card must follow."""
        self.write_weights(_encode_weights(model, config, reference))
        self.write_config(config)

    def write_model(
        self,
        model: "keras.Model",
        config: ModelConfig,
        *,
        reference: dict[str, list[np.ndarray]],
        card: ModelCard,
        report: EvaluationReport | None = None,
        heads: Mapping[str, HeadFile] | None = None,
    ) -> ModelCard:
        """Write a complete model folder in the one order that keeps it verifiable; returns the card.

        1. each head in ``heads`` (file name -> object with ``save(path)``, e.g.
           ``{OOD_FILE: gate}``), whose name must be one of :data:`HEAD_FILES`;
        2. the network: ``weights.npz`` and ``config.json``;
        3. ``model_card.json`` with the checksums of everything above, so an
           interruption before it leaves a folder that is refused, never one that
           loads with mismatched parts;
        4. ``evaluation.json`` (``report``, when given) and ``model_card.md``, which
           no checksum covers.

        The trainer and the box-supervision recipe in ``tools/`` both finish here.
        ``card`` is what :func:`fracture.model.card.build_card` made.
        """
        heads = dict(heads or {})
        unknown = sorted(set(heads) - set(HEAD_FILES))
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)} is not a head file of a model folder "
                f"(known: {', '.join(HEAD_FILES)}); add it to HEAD_FILES so checksums cover it"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        for name, head in heads.items():
            head.save(self.path / name)
        self.write_network(model, config, reference=reference)
        written = self.write_card(card, markdown=False)
        if report is not None:
            self.write_evaluation(report)
        self.write_markdown(written)
        return written

    def write_card(self, card: ModelCard, *, markdown: bool = True) -> ModelCard:
        """Write ``card`` with fresh checksums of every file; returns what was written.

        Call it after every other file of the folder is written: the checksums
        it stores are what :func:`read_config` verifies.
        """
        card = {**card, "checksums": self.checksums()}
        atomic_write_json(self.card_path, card)
        if markdown:
            self.write_markdown(card)
        return card

    def write_markdown(self, card: ModelCard) -> None:
        """Render ``card`` as ``model_card.md`` (not covered by the checksums)."""
        atomic_write_text(self.card_markdown_path, render_card_markdown(card))

    def rewrite_card(self, card: ModelCard, **card_updates: Any) -> ModelCard:
        """Give the card ``card_updates`` and fresh checksums, then re-render its Markdown."""
        return self.write_card(cast(ModelCard, {**card, **card_updates}))

    def rewrite_config(
        self, config: ModelConfig, card: ModelCard, **card_updates: Any
    ) -> ModelCard:
        """Write ``config``, then bring the card up to date (see :meth:`rewrite_card`)."""
        self.write_config(config)
        return self.rewrite_card(card, **card_updates)


def read_config(directory: str | os.PathLike[str]) -> tuple[ModelConfig, ModelCard]:
    """Read and verify a model folder's config and card without building anything."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise ModelLoadError(
            f"No model at {directory}: it has no {CONFIG_FILE}. Train one with "
            f"'python -m fracture train DATA --out runs/NAME' or pass --model."
        )
    card_path = directory / CARD_JSON
    card: ModelCard = json.loads(card_path.read_text()) if card_path.is_file() else {}
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
