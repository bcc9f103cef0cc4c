"""Training runs in a background process that outlives the dashboard page.

The dashboard calls :func:`start_training`, which launches
``python -m fracture train DATA --out runs/NAME ...`` in a new session
(``start_new_session=True``): closing the tab, reloading the page or
restarting the Streamlit script does not stop it, and Ctrl-C in the terminal
that runs Streamlit is not delivered to it. Progress lives in the run's
``status.json`` (written by :mod:`fracture.training.trainer`), so any page, in any
process, can show it.

One run at a time, because a 2-core CPU cannot afford two: the lock file
``runs/ACTIVE_RUN.json`` is created with ``O_CREAT | O_EXCL``; a lock whose
process is gone is stale and cleared automatically. Runs started from the
command line hold no lock but are still detected from their status files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from fracture.config import PROJECT_ROOT, Settings, get_settings
from fracture.errors import JobBusyError
from fracture.io.files import atomic_write_json, check_name, exclusive_lock, read_json
from fracture.io.processes import pid_alive, process_start_ticks
from fracture.model.folder import ModelFolder
from fracture.training.runs import (
    STATE_FILE,
    STATUS_FILE,
    TRAIN_CONFIG_FILE,
    candidate_dir,
    read_status,
    write_train_config,
)

if TYPE_CHECKING:
    from fracture.data.records import Dataset
    from fracture.training.config import TrainConfig

__all__ = [
    "TrainingJob",
    "JobBusyError",
    "start_training",
    "current_job",
    "job_status",
    "cancel",
    "list_runs",
    "log_tail",
    "check_training_data",
    "delete_run",
    "LOCK_FILE",
    "LOG_FILE",
]

log = logging.getLogger(__name__)

LOCK_FILE = "ACTIVE_RUN.json"
LOG_FILE = "train.log"
JOB_FILE = "job.json"
_GUARD_FILE = ".ACTIVE_RUN.guard"
ACTIVE_STATES = frozenset({"starting", "caching", "running", "finishing"})
_FINAL_STATES = frozenset({"completed", "cancelled"})
# A lock mid-launch names the launcher, not the trainer; Popen takes
# milliseconds, so one older than this was left by a launcher that hung.
_LAUNCH_GRACE_S = 120.0
# Popen objects of children this process launched, kept so they are reaped
# (a finished child that nobody waits for lingers as a zombie).
_CHILDREN: dict[int, subprocess.Popen] = {}


@dataclass
class TrainingJob:
    """A training process running in the background."""

    run_dir: Path
    pid: int
    started: float

    @property
    def name(self) -> str:
        return self.run_dir.name

    def status(self) -> dict[str, Any]:
        return job_status(self)


# ---------------------------------------------------------------------------
# Processes


def _settings(settings: Settings | None) -> Settings:
    return settings or get_settings()


def _reap() -> None:
    for pid, process in list(_CHILDREN.items()):
        if process.poll() is not None:
            _CHILDREN.pop(pid, None)  # pop: Streamlit sessions are threads


def _alive(pid: Any, start_ticks: Any = None) -> bool:
    """Alive, not a zombie, and (when known) the same process, not a reused pid."""
    _reap()
    if not pid_alive(pid):
        return False
    if not isinstance(start_ticks, int):
        return True
    current = process_start_ticks(pid)
    return current is None or current == start_ticks


def _looks_like_training(pid: int) -> bool:
    # A last check before signalling a pid found in a file: never kill an
    # unrelated process, or the dashboard itself, because of a stale file.
    if pid in (0, os.getpid()) or pid == os.getppid():
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (macOS): rely on the pid checks alone
    return b"fracture" in b" ".join(command) and b"train" in command


# ---------------------------------------------------------------------------
# The lock


def _guard(settings: Settings) -> contextlib.AbstractContextManager[None]:
    """Serialise check-then-act on the lock between processes (several Streamlit servers)."""
    return exclusive_lock(settings.runs_dir / _GUARD_FILE)


def _lock_path(settings: Settings) -> Path:
    return settings.runs_dir / LOCK_FILE


def _read_lock(settings: Settings) -> dict[str, Any] | None:
    path = _lock_path(settings)
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        pass
    try:
        return {"unreadable": True, "mtime": path.stat().st_mtime}
    except FileNotFoundError:
        return None


def _lock_is_live(lock: dict[str, Any]) -> bool:
    if lock.get("unreadable"):
        # Only a creator killed between O_EXCL and its write leaves this.
        return time.time() - float(lock.get("mtime", 0)) < _LAUNCH_GRACE_S
    if lock.get("launching"):
        return (
            _alive(lock.get("launcher_pid"), lock.get("launcher_start"))
            and time.time() - float(lock.get("started", 0)) < _LAUNCH_GRACE_S
        )
    return _alive(lock.get("pid"), lock.get("pid_start"))


def _clear_stale_lock(settings: Settings, lock: dict[str, Any]) -> None:
    log.info(
        "Clearing stale training lock for %s (its process %s is gone)",
        lock.get("run_dir"),
        lock.get("pid") or lock.get("launcher_pid"),
    )
    _lock_path(settings).unlink(missing_ok=True)


def _create_lock(settings: Settings, payload: dict[str, Any]) -> None:
    fd = os.open(_lock_path(settings), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _release_lock(settings: Settings, run_dir: Path) -> None:
    with _guard(settings):
        lock = _read_lock(settings)
        if lock and not lock.get("unreadable") and _same_dir(lock.get("run_dir"), run_dir):
            _lock_path(settings).unlink(missing_ok=True)


def _same_dir(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return False
    return Path(a).resolve() == Path(b).resolve()


# ---------------------------------------------------------------------------
# Status


def _read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return read_status(run_dir)
    except ValueError:  # status.json is written atomically; this is hand-editing
        return {"state": "unknown", "message": f"{run_dir / STATUS_FILE} is unreadable"}


def job_status(job: TrainingJob) -> dict[str, Any]:
    """The run's status, covering the seconds before the new process writes its own.

    Until then ``status.json`` is missing, or is a previous attempt's (resume).
    """
    status = _read_status(job.run_dir)
    if status.get("pid") == job.pid:
        return status
    if _alive(job.pid):
        return {
            "state": "starting",
            "pid": job.pid,
            "started": job.started,
            "message": "Starting the training process (loading TensorFlow)",
        }
    if status.get("state") in _FINAL_STATES:
        return status
    return {
        **status,
        "state": "interrupted",
        "pid": job.pid,
        "message": f"The training process exited before reporting; see {LOG_FILE}.",
    }


def _live_unlocked_runs(settings: Settings) -> list[tuple[Path, dict[str, Any]]]:
    """Runs started outside the dashboard (CLI) whose process is still working."""
    live: list[tuple[Path, dict[str, Any]]] = []
    if not settings.runs_dir.is_dir():
        return live
    for status_file in settings.runs_dir.glob("*/status.json"):
        status = _read_status(status_file.parent)
        if status.get("state") in ACTIVE_STATES:  # read_status already checked the pid
            live.append((status_file.parent, status))
    return live


def current_job(settings: Settings | None = None) -> TrainingJob | None:
    """The active training run, or None; clears a stale lock on the way."""
    settings = _settings(settings)
    with _guard(settings):
        lock = _read_lock(settings)
        if lock is not None:
            if not _lock_is_live(lock):
                _clear_stale_lock(settings, lock)
            elif not lock.get("launching") and not lock.get("unreadable"):
                return TrainingJob(Path(lock["run_dir"]), int(lock["pid"]), float(lock["started"]))
            else:
                return None  # being launched right now; the next call sees the pid
    for run_dir, status in _live_unlocked_runs(settings):
        return TrainingJob(run_dir, int(status["pid"]), float(status.get("started") or 0.0))
    return None


# ---------------------------------------------------------------------------
# Start


def _command(data_root: Path, run_dir: Path, pretrained: bool, resume: bool) -> list[str]:
    """The ``python -m fracture train`` command line of a run whose config is in its folder.

    The settings travel as the run's ``train_config.json`` (:func:`start_training`
    writes it first), so the child trains with exactly the :class:`TrainConfig`
    the caller made; on resume the run's own file wins in the trainer.
    """
    command = [sys.executable, "-m", "fracture", "train", str(data_root), "--out", str(run_dir)]
    if not pretrained:
        command.append("--no-pretrained")
    if resume:
        return [*command, "--resume"]
    return [*command, "--config", str(run_dir / TRAIN_CONFIG_FILE)]


def _child_env(settings: Settings, extra_env: Mapping[str, str | None] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # train.log shows progress as it happens
    # The child reads get_settings(); hand it this process's folders explicitly,
    # since the caller's Settings object may not come from the environment.
    for name in ("models_dir", "data_dir", "runs_dir", "cache_dir", "imagenet_weights"):
        value = getattr(settings, name)
        if value is not None:
            env[f"FRACTURE_{name.upper()}"] = str(value)
    env.pop("FRACTURE_ADMIN_PASSWORD", None)  # the trainer never needs it
    for key, value in (extra_env or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def start_training(
    data_root: str | os.PathLike[str],
    run_name: str | None = None,
    *,
    config: "TrainConfig | None" = None,
    settings: Settings | None = None,
    extra_env: Mapping[str, str | None] | None = None,
    pretrained: bool | None = None,
    resume: bool = False,
) -> TrainingJob:
    """Launch a training run in the background and return at once.

    ``run_name`` defaults to ``run-YYYYmmdd-HHMMSS``; a new run refuses an
    existing non-empty folder, ``resume=True`` continues one (its saved
    config wins over ``config``). ``pretrained`` defaults to True, or on
    resume to what the run was started with. ``extra_env`` adds (or, with
    None, removes) environment variables for the child. Raises
    :class:`JobBusyError` when another run is active.
    """
    from fracture.training.config import TrainConfig

    settings = _settings(settings)
    data = Path(data_root).expanduser().resolve()
    if not data.is_dir():
        raise FileNotFoundError(f"Dataset folder {data} does not exist")
    if run_name is None:
        if resume:
            raise ValueError("resume=True needs the name of the run to resume")
        run_name = time.strftime("run-%Y%m%d-%H%M%S")
    check_name(run_name, "run")
    run_dir = (settings.runs_dir / run_name).resolve()
    if resume:
        if not (run_dir / STATE_FILE).is_file():
            raise ValueError(f"{run_dir} has no completed epoch to resume from")
        if pretrained is None:
            previous = read_json(run_dir / JOB_FILE, default={}) or {}
            pretrained = bool(previous.get("pretrained", True))
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"Run folder {run_dir} already exists; choose another run name")
    else:
        # Fail here, in words, rather than in a child process after TensorFlow has loaded.
        checked = config or TrainConfig()
        check_training_data(
            data, val_fraction=checked.val_fraction, seed=checked.seed, task=checked.task
        )
    pretrained = True if pretrained is None else pretrained
    command = _command(data, run_dir, pretrained, resume)

    started = time.time()
    with _guard(settings):
        lock = _read_lock(settings)
        if lock is not None:
            if _lock_is_live(lock):
                raise JobBusyError(_busy_message(lock.get("run_dir"), lock.get("pid")))
            _clear_stale_lock(settings, lock)
        for other, status in _live_unlocked_runs(settings):
            raise JobBusyError(_busy_message(other, status.get("pid")))
        try:
            _create_lock(
                settings,
                {
                    "run_dir": str(run_dir),
                    "launching": True,
                    "launcher_pid": os.getpid(),
                    "launcher_start": process_start_ticks(os.getpid()),
                    "started": started,
                },
            )
        except FileExistsError:  # only without fcntl: another launcher won the race
            raise JobBusyError(_busy_message(None, None)) from None

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            write_train_config(
                run_dir / TRAIN_CONFIG_FILE, config or TrainConfig(), pretrained=pretrained
            )
        with open(run_dir / LOG_FILE, "ab") as log_file:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log_file.write(f"[{stamp}] {shlex.join(command)}\n".encode())
            log_file.flush()
            process = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                env=_child_env(settings, extra_env),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    except BaseException:
        _lock_path(settings).unlink(missing_ok=True)
        raise
    _CHILDREN[process.pid] = process
    with _guard(settings):
        atomic_write_json(
            _lock_path(settings),
            {
                "run_dir": str(run_dir),
                "pid": process.pid,
                "pid_start": process_start_ticks(process.pid),
                "started": started,
            },
        )
    atomic_write_json(
        run_dir / JOB_FILE,
        {
            "pid": process.pid,
            "started": started,
            "data_root": str(data),
            "pretrained": pretrained,
            "resume": resume,
            "command": command,
        },
    )
    log.info("Started training run %s (pid %d)", run_dir.name, process.pid)
    return TrainingJob(run_dir, process.pid, started)


def _busy_message(run_dir: Any, pid: Any) -> str:
    which = f"run {Path(run_dir).name!r}" if run_dir else "another run"
    where = f" (pid {pid})" if pid else ""
    return (
        f"Training {which}{where} is already in progress; wait for it to finish or "
        f"cancel it before starting another"
    )


# ---------------------------------------------------------------------------
# Cancel


def _signal_group(pid: int, signum: int) -> None:
    try:
        group = os.getpgid(pid)
        # The trainer leads its own session; signal its group (tf.data helpers
        # included) but never a group this process belongs to.
        if group == pid and group != os.getpgrp():
            os.killpg(group, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _wait_dead(pid: int, start_ticks: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid, start_ticks):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def cancel(
    job_or_run_dir: TrainingJob | str | os.PathLike[str],
    settings: Settings | None = None,
    *,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Stop a run: SIGTERM, then SIGKILL after ``timeout`` seconds; release its lock.

    train.py answers SIGTERM by writing a "cancelled" status; if it could not
    (killed before its handler was installed, or by SIGKILL) the status is
    written here once the process is gone. Returns the final status.
    """
    settings = _settings(settings)
    if isinstance(job_or_run_dir, TrainingJob):
        run_dir, pid = job_or_run_dir.run_dir, job_or_run_dir.pid
    else:
        run_dir, pid = Path(job_or_run_dir), None
    lock = _read_lock(settings)
    start_ticks = None
    if lock and _same_dir(lock.get("run_dir"), run_dir) and lock.get("pid"):
        pid = pid or int(lock["pid"])
        start_ticks = lock.get("pid_start") if int(lock["pid"]) == pid else None
    if pid is None:
        status = _read_status(run_dir)
        pid = status.get("pid") if status.get("state") in ACTIVE_STATES else None

    forced = signalled = False
    if isinstance(pid, int) and _alive(pid, start_ticks):
        if not _looks_like_training(pid):
            raise ValueError(f"Refusing to signal pid {pid}: it is not a fracture training process")
        log.info("Cancelling training run %s (pid %d)", run_dir.name, pid)
        _signal_group(pid, signal.SIGTERM)
        signalled = True
        if not _wait_dead(pid, start_ticks, timeout):
            log.warning("Run %s ignored SIGTERM for %.0f s; killing it", run_dir.name, timeout)
            _signal_group(pid, signal.SIGKILL)
            forced = True
            _wait_dead(pid, start_ticks, 10.0)
    _release_lock(settings, run_dir)

    status = _read_status(run_dir)
    if signalled and status.get("state") not in _FINAL_STATES and run_dir.is_dir():
        # The process is gone, so nothing else writes this file any more. An
        # interrupted run that nobody signalled keeps its resumable status.
        status = {
            **status,
            "state": "cancelled",
            "phase": "cancelled",
            "forced": forced,
            "updated": time.time(),
            "message": "Cancelled by the user (stopped before it could save its status)",
        }
        atomic_write_json(run_dir / STATUS_FILE, status)
    return status


# ---------------------------------------------------------------------------
# Listing


def list_runs(settings: Settings | None = None) -> list[dict[str, Any]]:
    """Run folders under ``runs_dir``, newest first, with status and candidate model.

    Each entry: name, run_dir, status (as :func:`fracture.training.runs.read_status`,
    or :func:`job_status` for the active run), state, running, has_model,
    model_dir (``run_dir/model`` or None) and started.
    """
    settings = _settings(settings)
    if not settings.runs_dir.is_dir():
        return []
    job = current_job(settings)
    runs = []
    for run_dir in settings.runs_dir.iterdir():
        if run_dir.name.startswith(".") or not run_dir.is_dir():
            continue
        if not any((run_dir / f).is_file() for f in (STATUS_FILE, TRAIN_CONFIG_FILE, JOB_FILE)):
            continue  # not a training run (e.g. a stray folder)
        running = job is not None and _same_dir(job.run_dir, run_dir)
        status = job_status(job) if job is not None and running else _read_status(run_dir)
        model_dir = candidate_dir(run_dir)
        has_model = ModelFolder(model_dir).has_config()
        runs.append(
            {
                "name": run_dir.name,
                "run_dir": run_dir,
                "status": status,
                "state": status.get("state", "unknown"),
                "running": running,
                "has_model": has_model,
                "model_dir": model_dir if has_model else None,
                "started": float(status.get("started") or run_dir.stat().st_mtime),
            }
        )
    runs.sort(key=lambda r: (r["started"], r["name"]), reverse=True)
    return runs


def check_training_data(
    data_root: str | os.PathLike[str],
    *,
    val_fraction: float = 0.15,
    seed: int = 0,
    task: str = "classes",
) -> "Dataset":
    """The dataset a run on ``data_root`` would train on, or why it cannot.

    Lists the folder (nothing is decoded) and checks that the train and the
    validation split each hold every class the ``task`` trains
    (:mod:`fracture.training.tasks`). Raises
    :class:`fracture.data.records.DatasetLayoutError` for an unrecognised
    folder and ValueError for a split that cannot train or validate.
    """
    from fracture.data.layouts import load_dataset
    from fracture.training.tasks import check_splits, resolve_task

    dataset = load_dataset(data_root, val_fraction=val_fraction, seed=seed)
    check_splits(dataset, resolve_task(dataset, task))
    return dataset


def delete_run(run_dir: str | os.PathLike[str], settings: Settings | None = None) -> None:
    """Delete a finished run folder (failed, cancelled, or one whose model is not wanted).

    Refuses a run that is still going, and anything that is not a run folder
    directly inside ``settings.runs_dir`` (deleting is irreversible).
    """
    import shutil

    settings = _settings(settings)
    path = Path(run_dir)
    runs = settings.runs_dir.resolve()
    if path.is_symlink() or path.resolve().parent != runs or not path.is_dir():
        raise ValueError(f"Refusing to delete {path}: it is not a run folder in {runs}")
    entry = next((r for r in list_runs(settings) if _same_dir(r["run_dir"], path)), None)
    if entry is None:
        raise ValueError(f"Refusing to delete {path}: it is not a training run")
    if entry["running"] or entry["state"] in ACTIVE_STATES:
        raise ValueError(
            f"Refusing to delete run {path.name}: it is still {entry['state']}; cancel it first"
        )
    shutil.rmtree(path.resolve())
    log.info("Deleted run folder %s", path)


def log_tail(run_dir: str | os.PathLike[str], lines: int = 40, max_bytes: int = 65536) -> str:
    """The last ``lines`` lines of a run's train.log (errors end up there)."""
    path = Path(run_dir) / LOG_FILE
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
