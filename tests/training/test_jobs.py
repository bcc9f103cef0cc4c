"""Background training jobs: launch, one-at-a-time lock, status, cancel.

Fast tests replace the trainer with a tiny stand-in script (same argv shape,
same status file and SIGTERM behaviour) so the lock and signal handling are
checked in seconds; the ``slow`` tests run the real ``python -m fracture train``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fracture.config import Settings
from fracture.model.folder import read_config
from fracture.training import jobs
from fracture.training.config import TrainConfig
from fracture.training.runs import TRAIN_CONFIG_FILE, read_status, write_train_config

# Writes status.json like train.py, and answers SIGTERM with "cancelled" unless told to ignore it.
FAKE_TRAINER = r"""
import json, os, signal, sys, time
run_dir, seconds, on_term = sys.argv[3], float(sys.argv[4]), sys.argv[5]
def status(state):
    tmp = os.path.join(run_dir, ".status.tmp")
    with open(tmp, "w") as handle:
        json.dump({"state": state, "pid": os.getpid(), "started": time.time()}, handle)
    os.replace(tmp, os.path.join(run_dir, "status.json"))
def cancel(signum, frame):
    status("cancelled")
    sys.exit(130)
signal.signal(signal.SIGTERM, cancel if on_term == "cancel" else signal.SIG_IGN)
status("running")
time.sleep(seconds)
status("completed")
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        runs_dir=tmp_path / "runs",
        models_dir=tmp_path / "models",
        cache_dir=tmp_path / "cache",
        data_dir=tmp_path / "data",
    )


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """The smallest folder a run accepts: both classes in train and in val."""
    from conftest import write_png

    root = tmp_path / "dataset"
    for index, rel in enumerate(
        ("train/fractured/a.png", "train/normal/b.png", "val/fractured/c.png", "val/normal/d.png")
    ):
        write_png(root / rel, index)
    return root


@pytest.fixture
def fake_trainer(monkeypatch):
    """Make start_training launch FAKE_TRAINER; returns a setter for its behaviour."""
    behaviour = {"seconds": 30.0, "on_term": "cancel"}

    def command(data_root, run_dir, pretrained, resume):
        return [
            sys.executable,
            "-c",
            FAKE_TRAINER,
            "fracture",
            "train",
            str(run_dir),
            str(behaviour["seconds"]),
            behaviour["on_term"],
        ]

    monkeypatch.setattr(jobs, "_command", command)
    yield behaviour


@pytest.fixture(autouse=True)
def no_orphans(settings):
    """Whatever a test starts is stopped, even when it fails half-way."""
    yield
    job = jobs.current_job(settings)
    if job is not None:
        jobs.cancel(job, settings, timeout=2)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_command_flags_exist_in_the_cli_and_round_trip(monkeypatch, tmp_path):
    """Parse the generated command with the real CLI: the child trains with exactly ``config``."""
    from fracture.cli import main as cli

    config = TrainConfig(
        image_size=96,
        fine_tune_from="conv4_block6_out",
        head_epochs=0,
        epochs=3,
        batch_size=8,
        lr=3e-5,
        views=1,
        seed=7,
        augment=False,
        strategy="mirrored",
        head_lr=3e-4,
        weight_decay=1e-3,
        dropout=0.5,
        patience=5,
        val_fraction=0.2,
    )
    write_train_config(tmp_path / "run" / TRAIN_CONFIG_FILE, config, pretrained=False)
    command = jobs._command(tmp_path / "data", tmp_path / "run", False, False)
    assert command[:4] == [sys.executable, "-m", "fracture", "train"]
    seen = {}
    monkeypatch.setattr(
        "fracture.training.trainer.train",
        lambda data, out, cfg, pretrained, resume: (
            seen.update(data=data, out=out, config=cfg, pretrained=pretrained, resume=resume) or out
        ),
    )
    assert cli.main(command[3:]) == 0
    assert seen == {
        "data": str(tmp_path / "data"),
        "out": str(tmp_path / "run"),
        "config": config,
        "pretrained": False,
        "resume": False,
    }
    resume = jobs._command(tmp_path / "data", tmp_path / "run", True, True)
    assert resume[-1] == "--resume" and "--no-pretrained" not in resume


def test_start_runs_detached_and_a_second_start_is_refused(settings, data_root, fake_trainer):
    job = jobs.start_training(data_root, "first", settings=settings)
    assert job.run_dir == (settings.runs_dir / "first").resolve()
    # Its own session: a Ctrl-C or the end of the Streamlit script run does not reach it.
    assert os.getsid(job.pid) == job.pid != os.getsid(0)
    lock = json.loads((settings.runs_dir / jobs.LOCK_FILE).read_text())
    assert lock["pid"] == job.pid and lock["run_dir"] == str(job.run_dir)
    assert jobs.current_job(settings) == job
    with pytest.raises(jobs.JobBusyError, match="'first'.*already in progress"):
        jobs.start_training(data_root, "second", settings=settings)
    assert not (settings.runs_dir / "second").exists()
    wait_for(lambda: job.status()["state"] == "running", 20, "the run to report running")
    runs = jobs.list_runs(settings)
    assert [(r["name"], r["state"], r["running"], r["has_model"]) for r in runs] == [
        ("first", "running", True, False)
    ]


def test_cancel_stops_the_run_and_releases_the_lock(settings, data_root, fake_trainer):
    job = jobs.start_training(data_root, "to-cancel", settings=settings)
    wait_for(lambda: read_status(job.run_dir).get("pid") == job.pid, 20, "the first status")
    status = jobs.cancel(job, settings)
    assert status["state"] == "cancelled" and not status.get("forced")
    assert read_status(job.run_dir)["state"] == "cancelled"
    assert not (settings.runs_dir / jobs.LOCK_FILE).exists()
    assert jobs.current_job(settings) is None
    # The lock is free again.
    jobs.cancel(jobs.start_training(data_root, "next", settings=settings), settings)


def test_cancel_kills_a_run_that_ignores_sigterm(settings, data_root, fake_trainer):
    fake_trainer["on_term"] = "ignore"
    job = jobs.start_training(data_root, "stubborn", settings=settings)
    wait_for(lambda: read_status(job.run_dir).get("pid") == job.pid, 20, "the first status")
    status = jobs.cancel(job.run_dir, settings, timeout=0.5)
    assert status["state"] == "cancelled" and status["forced"] is True
    assert read_status(job.run_dir)["state"] == "cancelled"
    assert jobs.current_job(settings) is None


def test_a_finished_run_frees_the_lock_by_itself(settings, data_root, fake_trainer):
    fake_trainer["seconds"] = 0.0
    job = jobs.start_training(data_root, "quick", settings=settings)
    wait_for(lambda: jobs.current_job(settings) is None, 20, "the run to finish")
    assert job.status()["state"] == "completed"
    assert not (settings.runs_dir / jobs.LOCK_FILE).exists()


def test_a_stale_lock_is_cleared(settings, data_root, fake_trainer):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    settings.runs_dir.mkdir(parents=True)
    lock = settings.runs_dir / jobs.LOCK_FILE
    lock.write_text(
        json.dumps(
            {
                "run_dir": str(settings.runs_dir / "old"),
                "pid": dead.pid,
                "started": time.time() - 60,
            }
        )
    )
    assert jobs.current_job(settings) is None
    assert not lock.exists()
    lock.write_text(
        json.dumps(
            {
                "run_dir": str(settings.runs_dir / "old"),
                "pid": dead.pid,
                "started": time.time() - 60,
            }
        )
    )
    job = jobs.start_training(data_root, "after-stale", settings=settings)
    assert jobs.current_job(settings) == job


def test_a_run_started_from_the_cli_also_blocks(settings, data_root, tmp_path):
    run_dir = settings.runs_dir / "cli-run"
    run_dir.mkdir(parents=True)
    process = subprocess.Popen(
        [sys.executable, "-c", FAKE_TRAINER, "fracture", "train", str(run_dir), "30", "cancel"]
    )
    try:
        wait_for(lambda: read_status(run_dir).get("state") == "running", 20, "the CLI run")
        with pytest.raises(jobs.JobBusyError, match="'cli-run'"):
            jobs.start_training(data_root, "dashboard-run", settings=settings)
        job = jobs.current_job(settings)
        assert job is not None and job.pid == process.pid
        assert jobs.cancel(job, settings)["state"] == "cancelled"
    finally:
        process.kill()
        process.wait()


def test_bad_names_and_existing_runs_are_refused(settings, data_root, fake_trainer):
    with pytest.raises(ValueError, match="Invalid run name"):
        jobs.start_training(data_root, "../escape", settings=settings)
    (settings.runs_dir / "taken").mkdir(parents=True)
    (settings.runs_dir / "taken" / "status.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already exists"):
        jobs.start_training(data_root, "taken", settings=settings)
    with pytest.raises(ValueError, match="no completed epoch"):
        jobs.start_training(data_root, "taken", settings=settings, resume=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        jobs.start_training(data_root / "missing", "x", settings=settings)
    assert not (settings.runs_dir / jobs.LOCK_FILE).exists()


# ---------------------------------------------------------------------------
# The real trainer


@pytest.fixture
def phantoms(tmp_path: Path) -> Path:
    from fracture.data.phantoms import synthesize_phantoms

    synthesize_phantoms(tmp_path / "phantoms", 24, size=64)
    return tmp_path / "phantoms"


TINY = TrainConfig(image_size=64, head_epochs=1, epochs=1, batch_size=8, views=1)


@pytest.mark.slow
def test_real_training_run_completes_with_a_promotable_model(settings, phantoms):
    from fracture.model import registry

    job = jobs.start_training(phantoms, "tiny", config=TINY, settings=settings, pretrained=False)
    status = wait_for(
        lambda: (s := job.status())["state"] not in jobs.ACTIVE_STATES and s,
        240,
        "training to finish",
    )
    assert status["state"] == "completed", jobs.log_tail(job.run_dir)
    read_config(job.run_dir / "model")
    [run] = jobs.list_runs(settings)
    assert run["has_model"] and run["model_dir"] == job.run_dir / "model"
    # The process may still be tearing TensorFlow down; the lock goes when it exits.
    wait_for(lambda: jobs.current_job(settings) is None, 60, "the process to exit")
    assert not (settings.runs_dir / jobs.LOCK_FILE).exists()
    assert registry.promote(run["model_dir"], settings=settings).active


@pytest.mark.slow
def test_real_training_run_answers_cancel(settings, phantoms):
    job = jobs.start_training(phantoms, "tiny", config=TINY, settings=settings, pretrained=False)
    # By "caching", train.py has installed its SIGTERM handler, so it writes "cancelled" itself.
    wait_for(
        lambda: read_status(job.run_dir).get("state") in {"caching", "running"},
        120,
        "the trainer to start working",
    )
    status = jobs.cancel(job, settings)
    assert status["state"] == "cancelled", jobs.log_tail(job.run_dir)
    assert "forced" not in status, "the status should come from train.py's handler"
    assert jobs.current_job(settings) is None


def test_a_cancelled_run_can_be_deleted_but_a_running_one_cannot(settings, data_root, fake_trainer):
    job = jobs.start_training(data_root, "to-delete", settings=settings)
    with pytest.raises(ValueError, match="still"):
        jobs.delete_run(job.run_dir, settings)
    jobs.cancel(job, settings, timeout=5)
    jobs.delete_run(job.run_dir, settings)
    assert not job.run_dir.exists()
    # Only run folders directly inside runs_dir.
    with pytest.raises(ValueError, match="not a run folder"):
        jobs.delete_run(settings.runs_dir, settings)


def test_start_refuses_a_folder_that_cannot_train_before_launching(
    settings, tmp_path, fake_trainer
):
    only_normal = tmp_path / "only-normal" / "normal"
    only_normal.mkdir(parents=True)
    from conftest import write_png

    for index in range(4):
        write_png(only_normal / f"n{index}.png", index)
    with pytest.raises(ValueError, match="fractured and normal"):
        jobs.start_training(only_normal.parent, "never", settings=settings)
    assert jobs.current_job(settings) is None
    assert not (settings.runs_dir / "never").exists()
