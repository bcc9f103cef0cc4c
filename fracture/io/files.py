"""Crash-safe file writes.

Every file that another process reads while it may be rewritten (run status,
metrics, model folders, caches) goes through these helpers: write a temporary
file beside the target, fsync it, then ``os.replace``. A reader therefore sees
the old file or the new one, never half of one, even after SIGKILL.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Collection, Iterator

import numpy as np

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "read_json",
    "atomic_write_npz",
    "read_npz",
    "fsync_path",
    "exclusive_lock",
    "check_name",
]

# A name that is only ever one plain path part: model versions, training runs.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")


def atomic_write_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` as a compressed ``.npz`` file, atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def read_npz(
    path: str | os.PathLike[str],
    *,
    what: str,
    required: Collection[str],
    formats: Collection[int],
    error: type[Exception],
) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file that :func:`atomic_write_npz` wrote, all in memory.

    ``what`` names the kind of file in errors ("OOD gate"); it must hold a ``format``
    array in ``formats`` and every name in ``required``, or ``error`` is raised
    with a message that says which. Pickles are never loaded: a model folder may
    come from anywhere.
    """
    try:
        stored = np.load(Path(path), allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as problem:
        raise error(f"{path} is not a readable {what} ({problem})") from None
    if not isinstance(stored, np.lib.npyio.NpzFile):
        raise error(f"{path} is not {_article(what)}: it holds a single array")
    with stored:
        missing = ({"format"} | set(required)) - set(stored.files)
        if missing:
            raise error(f"{path} is not {_article(what)}: it lacks {', '.join(sorted(missing))}")
        arrays = {name: stored[name] for name in stored.files}
    if int(arrays["format"]) not in formats:
        raise error(
            f"{path} has {what} format {int(arrays['format'])}; "
            f"this version reads {', '.join(map(str, sorted(formats)))}"
        )
    return arrays


def _article(what: str) -> str:
    return f"{'an' if what[:1] in 'aeiouAEIOU' else 'a'} {what}"


def read_json(path: str | os.PathLike[str], default: Any = None) -> Any:
    """Read JSON, returning ``default`` when the file is absent."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def fsync_path(path: Path) -> None:
    """Flush a file or a directory entry to disk, ignoring filesystems that cannot.

    For a directory this makes renames inside it durable: without it a power
    cut can forget an ``os.replace`` even though the data blocks were synced.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) between processes.

    Serialises check-then-act sequences (promotions, starting a training run)
    between dashboard sessions, servers and the CLI. Without ``fcntl``
    (Windows) it does not lock: single-user use there.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def check_name(name: object, what: str) -> str:
    """``name`` when it is one plain path part (letters, digits, '.', '_', '-'); else ValueError.

    Names come from files and forms, so a name is never allowed to climb out
    of the folder it names something in.
    """
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise ValueError(
            f"Invalid {what} name {name!r}: use letters, digits, '.', '_' or '-' "
            f"(at most 100 characters, not starting with '.' or '-')"
        )
    return name
