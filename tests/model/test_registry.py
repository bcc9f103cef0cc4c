"""Model registry: promotion, rollback, fallback from damaged models, crash safety."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fracture.config import PROJECT_ROOT, Settings
from fracture.io.files import atomic_write_json
from fracture.model import registry
from fracture.model.folder import ModelConfig, ModelLoadError, file_checksums, read_config
from fracture.training import runs


def make_model(
    directory: Path,
    name: str = "m",
    version: str = "1",
    auroc: float = 0.8,
    created: str = "2025-01-01T00:00:00Z",
) -> Path:
    """A model folder that passes read_config without building a network (fast)."""
    directory.mkdir(parents=True)
    atomic_write_json(directory / "config.json", ModelConfig(name=name, version=version).to_json())
    np.savez(directory / "weights.npz", head=np.random.default_rng(len(name)).normal(size=64))
    card = {
        "name": name,
        "version": version,
        "created": created,
        "val_metrics": {"auroc": auroc},
        "checksums": file_checksums(directory),
    }
    atomic_write_json(directory / "model_card.json", card)
    return directory


def corrupt(directory: Path) -> None:
    path = directory / "weights.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(models_dir=tmp_path / "models", runs_dir=tmp_path / "runs")
    make_model(
        s.models_dir / "default", name="fracatlas", version="0", created="2024-01-01T00:00:00Z"
    )
    s.runs_dir.mkdir()
    return s


@pytest.fixture
def candidate(settings: Settings) -> Path:
    return make_model(
        settings.runs_dir / "run-a" / "model",
        name="run-a",
        version="20250101",
        auroc=0.9,
        created="2025-01-01T00:00:00Z",
    )


def test_without_active_file_the_default_model_is_served(settings):
    assert registry.active_name(settings) == "default"
    assert registry.active_model_dir(settings) == settings.models_dir / "default"


def test_promote_activates_the_candidate_and_keeps_the_old_for_rollback(settings, candidate):
    version = registry.promote(candidate, settings=settings)
    assert version.name == "run-a-20250101"
    assert version.active and version.valid and version.val_auroc == 0.9
    assert (settings.models_dir / "ACTIVE").read_text().strip() == version.name
    assert registry.active_model_dir(settings) == settings.models_dir / version.name
    read_config(settings.models_dir / version.name)
    assert candidate.is_dir(), "the run's candidate is copied, not moved"
    assert registry.rollback(settings).name == "default"
    assert registry.active_model_dir(settings) == settings.models_dir / "default"
    assert (settings.models_dir / version.name).is_dir(), "rollback keeps the newer version"


def test_default_names_are_unique_and_explicit_duplicates_are_refused(settings, candidate):
    first = registry.promote(candidate, settings=settings)
    second = registry.promote(candidate, settings=settings)
    assert second.name == f"{first.name}-2"
    with pytest.raises(FileExistsError, match="already exists"):
        registry.promote(candidate, name=first.name, settings=settings)
    with pytest.raises(ValueError, match="Invalid model name"):
        registry.promote(candidate, name="../escape", settings=settings)


def test_rollback_twice_goes_two_versions_back_and_set_active_rolls_forward(settings, tmp_path):
    a = registry.promote(make_model(tmp_path / "a", name="a"), settings=settings)
    b = registry.promote(make_model(tmp_path / "b", name="b"), settings=settings)
    assert registry.rollback(settings).name == a.name
    assert registry.rollback(settings).name == "default"
    with pytest.raises(ModelLoadError, match="Nothing to roll back to"):
        registry.rollback(settings)
    assert registry.set_active(b.name, settings).active
    assert registry.rollback(settings).name == "default"


def test_promoting_a_corrupt_candidate_is_refused(settings, tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    corrupt(broken)
    with pytest.raises(ModelLoadError, match="corrupt or half-written"):
        registry.promote(broken, settings=settings)
    assert registry.active_name(settings) == "default"
    assert [v.name for v in registry.list_versions(settings)] == ["default"]
    assert not list(settings.models_dir.glob(".staging-*"))
    # The intact original promotes fine: the refusal was about the flipped byte.
    assert registry.promote(tiny_model_dir, settings=settings).name == "tiny-test"


def test_a_corrupted_active_model_falls_back_to_the_previous_valid_one(settings, tmp_path, caplog):
    a = registry.promote(make_model(tmp_path / "a", name="a"), settings=settings)
    b = registry.promote(make_model(tmp_path / "b", name="b"), settings=settings)
    corrupt(settings.models_dir / b.name)
    with caplog.at_level(logging.WARNING, logger="fracture.model.registry"):
        assert registry.active_model_dir(settings) == settings.models_dir / a.name
    assert any("unusable" in r.getMessage() and b.name in r.getMessage() for r in caplog.records)
    assert registry.active_name(settings) == b.name, "reading never rewrites ACTIVE"
    corrupt(settings.models_dir / a.name)
    assert registry.active_model_dir(settings) == settings.models_dir / "default"
    corrupt(settings.models_dir / "default")
    with pytest.raises(ModelLoadError, match="No valid model"):
        registry.active_model_dir(settings)


def test_set_active_refuses_invalid_or_unknown_versions(settings, tmp_path):
    a = registry.promote(make_model(tmp_path / "a", name="a"), settings=settings)
    corrupt(settings.models_dir / a.name)
    with pytest.raises(ModelLoadError, match="Cannot activate"):
        registry.set_active(a.name, settings)
    with pytest.raises(ModelLoadError, match="No model at"):
        registry.set_active("missing", settings)


def test_list_versions_is_newest_first_shows_errors_and_skips_staging(settings, tmp_path):
    registry.promote(
        make_model(tmp_path / "old", name="old", created="2025-02-01T00:00:00Z"), settings=settings
    )
    new = registry.promote(
        make_model(tmp_path / "new", name="new", created="2025-03-01T00:00:00Z"), settings=settings
    )
    corrupt(settings.models_dir / "old-1")
    (settings.models_dir / ".staging-x-1234").mkdir()
    versions = registry.list_versions(settings)
    assert [v.name for v in versions] == [new.name, "old-1", "default"]
    assert [v.active for v in versions] == [True, False, False]
    assert not versions[1].valid and "checksum" in versions[1].error
    assert versions[1].version == "1" and versions[1].created == "2025-02-01T00:00:00Z"
    assert registry.cleanup_staging(settings) == [settings.models_dir / ".staging-x-1234"]


def test_active_file_with_a_path_is_ignored(settings, caplog):
    (settings.models_dir / "ACTIVE").write_text("../../etc\n")
    with caplog.at_level(logging.WARNING, logger="fracture.model.registry"):
        assert registry.active_model_dir(settings) == settings.models_dir / "default"


def test_discard_deletes_only_model_folders_inside_runs(settings, candidate, tmp_path):
    with pytest.raises(ValueError, match="only model folders inside"):
        runs.discard_candidate(settings.models_dir / "default", settings)
    with pytest.raises(ValueError, match="only model folders inside"):
        runs.discard_candidate(settings.runs_dir / ".." / "models" / "default", settings)
    with pytest.raises(ValueError, match="only model folders inside"):
        runs.discard_candidate(settings.runs_dir, settings)
    (settings.runs_dir / "notes").mkdir()
    with pytest.raises(ValueError, match="not a model folder"):
        runs.discard_candidate(settings.runs_dir / "notes", settings)
    link = settings.runs_dir / "link"
    link.symlink_to(settings.models_dir / "default")
    with pytest.raises(ValueError, match="symbolic link"):
        runs.discard_candidate(link, settings)
    runs.discard_candidate(candidate, settings)
    assert not candidate.exists() and (settings.models_dir / "default").is_dir()


PROMOTE_SCRIPT = (
    "import sys; from pathlib import Path; from fracture.model import registry;"
    "from fracture.config import Settings;"
    "registry.promote(Path(sys.argv[1]), settings=Settings(models_dir=Path(sys.argv[2])))"
)


@pytest.mark.parametrize("step", registry.PAUSE_STEPS)
def test_sigkill_during_promotion_leaves_a_valid_active_model(settings, tmp_path, step):
    previous = registry.promote(make_model(tmp_path / "a", name="a"), settings=settings)
    candidate = make_model(tmp_path / "b", name="b")
    marker = tmp_path / "paused"
    env = {
        **os.environ,
        registry.PAUSE_ENV: step,
        registry.PAUSE_FILE_ENV: str(marker),
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", PROMOTE_SCRIPT, str(candidate), str(settings.models_dir)], env=env
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert process.poll() is None, f"promotion exited before reaching {step}"
            assert time.monotonic() < deadline, f"promotion never reached {step}"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()

    active = registry.active_name(settings)
    assert active == previous.name, "ACTIVE is rewritten last, so the kill left the old model"
    read_config(settings.models_dir / active)
    assert registry.active_model_dir(settings) == settings.models_dir / active
    names = {v.name for v in registry.list_versions(settings)}
    assert not any(n.startswith(".") for n in names)
    assert ("b-1" in names) == (step in {"after_rename", "before_active_write"})
    registry.cleanup_staging(settings)
    assert not list(settings.models_dir.glob(".staging-*"))
    # The registry still works after the crash, and rollback ignores the
    # never-activated version that HISTORY may already name.
    assert registry.rollback(settings).name == "default"
    assert registry.promote(candidate, settings=settings).active


def test_version_of_finds_the_stored_copy_of_a_candidate(settings, candidate, tmp_path):
    assert registry.version_of(candidate, settings) is None
    version = registry.promote(candidate, settings=settings)
    found = registry.version_of(candidate, settings)
    assert found is not None and found.name == version.name
    other = make_model(tmp_path / "other", name="other", auroc=0.7)
    assert registry.version_of(other, settings) is None
    assert registry.version_of(tmp_path / "nothing", settings) is None
