"""Model versions on disk: which one is active, promotion and rollback.

Layout of ``settings.models_dir``::

    models/
      default/            the shipped model (in git)
      <name>/             one folder per promoted version (model folder format)
      ACTIVE              one line: the folder name of the active model
      HISTORY             JSON list of names, oldest first: the activation stack
      .staging-*          half-copied promotions (ignored; see cleanup_staging)

Why it is crash-safe: a promotion copies the candidate into a hidden staging
folder, fsyncs it, renames it to its final name (atomic on one file system) and
only then rewrites ``ACTIVE`` atomically. A SIGKILL or power cut at any point
therefore leaves ``ACTIVE`` naming a complete model, old or new. Readers verify
checksums anyway (:func:`fracture.model.folder.read_config`) and fall back down the
history when the active folder was damaged later.

Import cost: this module imports numpy (through ``fracture.model.network``) but not
TensorFlow, so the dashboard and the CLI can list versions instantly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fracture.config import Settings, get_settings
from fracture.io.files import (
    atomic_write_json,
    atomic_write_text,
    check_name,
    exclusive_lock,
    fsync_path,
    read_json,
)
from fracture.model.folder import ModelFolder, ModelLoadError, read_config
from fracture.model.reports import ModelCard

__all__ = [
    "ModelVersion",
    "list_versions",
    "version_of",
    "active_name",
    "active_model_dir",
    "promote",
    "rollback",
    "rollback_target",
    "set_active",
    "cleanup_staging",
    "ACTIVE_FILE",
    "HISTORY_FILE",
    "DEFAULT_NAME",
]

log = logging.getLogger(__name__)

ACTIVE_FILE = "ACTIVE"
HISTORY_FILE = "HISTORY"
DEFAULT_NAME = "default"
STAGING_PREFIX = ".staging-"
LOCK_FILE = ".registry.lock"
# Test-only hook: when set to a step name, promote() sleeps at that step so a
# test can SIGKILL it there (and proves the crash leaves a valid ACTIVE). If
# FRACTURE_TEST_PAUSE_FILE is also set, that file is created on arrival.
PAUSE_ENV = "FRACTURE_TEST_PAUSE_AT"
PAUSE_FILE_ENV = "FRACTURE_TEST_PAUSE_FILE"
PAUSE_STEPS = ("during_copy", "after_copy", "after_rename", "before_active_write")


@dataclass(frozen=True)
class ModelVersion:
    """One model folder in ``models_dir`` as the dashboard lists it."""

    name: str
    path: Path
    active: bool  # the model predictions actually use (after any fallback)
    valid: bool
    error: str | None
    card: ModelCard = field(default_factory=lambda: ModelCard(), compare=False)

    @property
    def model_name(self) -> str | None:
        return self.card.get("name")

    @property
    def version(self) -> str | None:
        value = self.card.get("version")
        return None if value is None else str(value)

    @property
    def created(self) -> str | None:
        return self.card.get("created")

    @property
    def val_auroc(self) -> float | None:
        metrics = self.card.get("val_metrics") or {}
        value = metrics.get("auroc") if isinstance(metrics, dict) else None
        return float(value) if isinstance(value, (int, float)) else None


# ---------------------------------------------------------------------------
# Reading


def _settings(settings: Settings | None) -> Settings:
    return settings or get_settings()


def _check_name(name: object) -> str:
    return check_name(name, "model")


def _sanitise(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-_")[:100]
    return cleaned or "model"


def _validate(directory: Path) -> tuple[bool, str | None, ModelCard]:
    """(valid, error, card) for a model folder; never raises."""
    try:
        _, card = read_config(directory)
        return True, None, card
    except ModelLoadError as error:
        return False, str(error), ModelFolder(directory).read_card()
    except (OSError, ValueError, TypeError) as error:
        # A truncated model_card.json or config.json is "corrupt", not a crash.
        return (
            False,
            f"Model {directory} is unreadable: {error}",
            ModelFolder(directory).read_card(),
        )


def _is_valid(directory: Path) -> bool:
    return _validate(directory)[0]


def active_name(settings: Settings | None = None) -> str:
    """The name written in ``ACTIVE`` (``settings.model_name`` when there is none).

    This is what an admin asked for; :func:`active_model_dir` says what is
    actually served, which differs when that folder is damaged.
    """
    settings = _settings(settings)
    try:
        text = (settings.models_dir / ACTIVE_FILE).read_text().strip()
    except FileNotFoundError:
        return settings.model_name
    try:
        return _check_name(text)
    except ValueError:
        log.warning(
            "Ignoring %s: it does not hold a plain model name", settings.models_dir / ACTIVE_FILE
        )
        return settings.model_name


def _history(settings: Settings) -> list[str]:
    """The activation stack, oldest first; a missing file means only the current model."""
    try:
        data = read_json(settings.models_dir / HISTORY_FILE, default=None)
    except ValueError:
        log.warning("Ignoring unreadable %s", settings.models_dir / HISTORY_FILE)
        data = None
    if not isinstance(data, list):
        return [active_name(settings)]
    names = []
    for item in data:
        try:
            names.append(_check_name(item))
        except ValueError:
            continue
    return names or [active_name(settings)]


def _previous_valid(settings: Settings, current: str) -> tuple[int, str] | None:
    """Index and name of the newest valid history entry activated before ``current``."""
    history = _history(settings)
    # The current model is the last occurrence of its name; if it is absent
    # (a kill between writing HISTORY and ACTIVE), every entry is older.
    top = max((i for i, n in enumerate(history) if n == current), default=len(history))
    for index in range(top - 1, -1, -1):
        name = history[index]
        if name != current and _is_valid(settings.models_dir / name):
            return index, name
    return None


def _resolve_active(settings: Settings) -> tuple[str, Path]:
    requested = active_name(settings)
    valid, error, _ = _validate(settings.models_dir / requested)
    if valid:
        return requested, settings.models_dir / requested
    previous = _previous_valid(settings, requested)
    fallback = previous[1] if previous else None
    default_ok = requested != DEFAULT_NAME and _is_valid(settings.models_dir / DEFAULT_NAME)
    if fallback is None and default_ok:
        fallback = DEFAULT_NAME
    if fallback is None:
        raise ModelLoadError(
            f"No valid model in {settings.models_dir}: the active model {requested!r} is "
            f"unusable ({error}) and neither an earlier version nor {DEFAULT_NAME!r} can be "
            f"loaded. Restore models/{DEFAULT_NAME} (git checkout models/{DEFAULT_NAME}) or "
            f"promote a trained model."
        )
    log.warning(
        "Active model %r is unusable (%s); serving %r instead. Promote or roll back to fix.",
        requested,
        error,
        fallback,
    )
    return fallback, settings.models_dir / fallback


def active_model_dir(settings: Settings | None = None) -> Path:
    """The folder of the model to serve: the active one if valid, else the newest valid earlier one.

    Never writes: a damaged active model is reported (warning) and skipped, and
    an admin decides what to do about it. Raises :class:`ModelLoadError` when
    no model at all can be served.
    """
    return _resolve_active(_settings(settings))[1]


def _sort_key(version: ModelVersion) -> float:
    created = version.created
    if isinstance(created, str):
        try:
            return datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    try:
        return version.path.stat().st_mtime
    except OSError:
        return 0.0


def list_versions(settings: Settings | None = None) -> list[ModelVersion]:
    """Every model folder, newest first (by card ``created``), invalid ones with their error.

    Hidden folders (staging copies of interrupted promotions) are skipped.
    """
    settings = _settings(settings)
    if not settings.models_dir.is_dir():
        return []
    try:
        served = _resolve_active(settings)[0]
    except ModelLoadError:
        served = None
    versions = []
    for path in settings.models_dir.iterdir():
        if path.name.startswith(".") or not path.is_dir():
            continue
        valid, error, card = _validate(path)
        versions.append(ModelVersion(path.name, path, path.name == served, valid, error, card))
    versions.sort(key=lambda v: (_sort_key(v), v.name), reverse=True)
    return versions


def version_of(
    model_dir: str | os.PathLike[str], settings: Settings | None = None
) -> ModelVersion | None:
    """The stored version holding the model in ``model_dir`` (e.g. a run's candidate), or None.

    A version holds it when its card's checksums, which cover every file that
    defines the model's behaviour, equal those of ``model_dir``'s card: promoting
    copies the folder, so the copy has the same checksums under another name.
    """
    checksums = ModelFolder(model_dir).read_card().get("checksums")
    if not checksums:
        return None
    return next((v for v in list_versions(settings) if v.card.get("checksums") == checksums), None)


def _version(settings: Settings, name: str) -> ModelVersion:
    path = settings.models_dir / name
    valid, error, card = _validate(path)
    return ModelVersion(name, path, active_name(settings) == name and valid, valid, error, card)


# ---------------------------------------------------------------------------
# Writing


def _registry_lock(settings: Settings) -> contextlib.AbstractContextManager[None]:
    """Serialise promote/rollback/cleanup between processes (dashboard sessions, CLI)."""
    return exclusive_lock(settings.models_dir / LOCK_FILE)


def _pause(step: str) -> None:
    if os.environ.get(PAUSE_ENV) != step:
        return
    marker = os.environ.get(PAUSE_FILE_ENV)
    if marker:
        Path(marker).touch()
    time.sleep(60)


def _copy_synced(source: Path, dest: Path) -> None:
    """Copy a model folder file by file, fsyncing each, so a rename publishes durable data."""
    dest.mkdir()
    for item in sorted(source.rglob("*")):
        relative = item.relative_to(source)
        # Temporary files of an atomic write in progress are not part of the model.
        if any(part.startswith(".") for part in relative.parts) or item.is_symlink():
            continue
        target = dest / relative
        if item.is_dir():
            target.mkdir(exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item, target)
        fsync_path(target)
        _pause("during_copy")
    for directory in [dest, *(p for p in dest.rglob("*") if p.is_dir())]:
        fsync_path(directory)


def _unique_name(settings: Settings, base: str) -> str:
    name, counter = base, 2
    while (settings.models_dir / name).exists():
        suffix = f"-{counter}"
        name = base[: 100 - len(suffix)] + suffix
        counter += 1
    return name


def _activate(settings: Settings, name: str, history: list[str]) -> None:
    # HISTORY first: a kill between the two writes leaves ACTIVE on the old
    # model, and _previous_valid copes with a HISTORY that is one step ahead.
    atomic_write_json(settings.models_dir / HISTORY_FILE, history)
    _pause("before_active_write")
    atomic_write_text(settings.models_dir / ACTIVE_FILE, name + "\n")


def promote(
    candidate_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    settings: Settings | None = None,
) -> ModelVersion:
    """Copy a verified candidate model into ``models_dir`` and make it active.

    ``name`` defaults to ``"<card name>-<card version>"``, sanitised and made
    unique; an explicit ``name`` that already exists is refused. The old
    active model stays on disk and in HISTORY, so :func:`rollback` restores it.
    Raises :class:`ModelLoadError` for a corrupt or incomplete candidate.
    """
    settings = _settings(settings)
    candidate = Path(candidate_dir)
    valid, error, card = _validate(candidate)
    if not valid:
        raise ModelLoadError(f"Refusing to promote {candidate}: {error}")
    with _registry_lock(settings):
        if name is None:
            base = str(card.get("name") or candidate.name)
            if card.get("version"):
                base = f"{base}-{card['version']}"
            base = _sanitise(base)
            name = _unique_name(settings, base)
        else:
            _check_name(name)
            if (settings.models_dir / name).exists():
                raise FileExistsError(
                    f"A model named {name!r} already exists in {settings.models_dir}; "
                    f"choose another name"
                )
        staging = settings.models_dir / f"{STAGING_PREFIX}{name}-{secrets.token_hex(4)}"
        try:
            _copy_synced(candidate, staging)
            # The copy, not the source, is what goes live: check it too, which
            # also catches a candidate rewritten while we copied it.
            copied_ok, copied_error, _ = _validate(staging)
            if not copied_ok:
                raise ModelLoadError(
                    f"Refusing to promote {candidate}: the copy failed its check ({copied_error})"
                )
            _pause("after_copy")
            os.rename(staging, settings.models_dir / name)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_path(settings.models_dir)
        _pause("after_rename")
        previous = active_name(settings)
        history = _history(settings)
        if not history or history[-1] != previous:
            history.append(previous)
        _activate(settings, name, [*history, name])
    log.info("Promoted %s as model %r", candidate, name)
    return _version(settings, name)


def set_active(name: str, settings: Settings | None = None) -> ModelVersion:
    """Make the named, valid version active (an explicit rollback or roll-forward target)."""
    settings = _settings(settings)
    _check_name(name)
    with _registry_lock(settings):
        valid, error, _ = _validate(settings.models_dir / name)
        if not valid:
            raise ModelLoadError(f"Cannot activate {name!r}: {error}")
        history = _history(settings)
        current = active_name(settings)
        if not history or history[-1] != current:
            history.append(current)
        if history[-1] != name:
            history.append(name)
        _activate(settings, name, history)
    log.info("Activated model %r", name)
    return _version(settings, name)


def rollback_target(settings: Settings | None = None) -> str | None:
    """The version :func:`rollback` would re-activate, or None when there is nothing to roll back."""
    settings = _settings(settings)
    previous = _previous_valid(settings, active_name(settings))
    return previous[1] if previous else None


def rollback(settings: Settings | None = None) -> ModelVersion:
    """Re-activate the version that was active before the current one.

    The newer version stays on disk (set_active brings it back) but leaves the
    history, so rolling back twice goes two versions back.
    """
    settings = _settings(settings)
    with _registry_lock(settings):
        current = active_name(settings)
        previous = _previous_valid(settings, current)
        if previous is None:
            raise ModelLoadError(
                f"Nothing to roll back to: no valid model was active before {current!r}"
            )
        index, name = previous
        _activate(settings, name, _history(settings)[: index + 1])
    log.info("Rolled back from %r to %r", current, name)
    return _version(settings, name)


def cleanup_staging(settings: Settings | None = None) -> list[Path]:
    """Remove leftovers of interrupted promotions and atomic writes; returns what was removed.

    Holds the registry lock, so a promotion in progress is never disturbed.
    """
    settings = _settings(settings)
    if not settings.models_dir.is_dir():
        return []
    removed = []
    with _registry_lock(settings):
        for path in settings.models_dir.iterdir():
            if path.name.startswith(STAGING_PREFIX) and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
            elif (
                path.is_file()
                and path.name.endswith(".tmp")
                and path.name.startswith((f".{ACTIVE_FILE}.", f".{HISTORY_FILE}."))
            ):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
