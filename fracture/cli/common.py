"""What every command shares: one way to turn an expected error into a message and an exit status."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable

from fracture.errors import FractureError

__all__ = ["guarded", "configure_logging", "stage_progress", "model_dir_or_active"]


def guarded(run: Callable[[], int]) -> int:
    """Run a command; an expected error becomes ``error: ...`` on stderr, not a traceback.

    Exit status 2 for errors fracture reports on purpose (a bad model folder,
    dataset layout, weights, ...), 1 for a bad value or a missing file.
    """
    try:
        return int(run())
    except FractureError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (tests and tqdm replace it)."""

    @property  # type: ignore[override]
    def stream(self):  # type: ignore[no-untyped-def]
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def configure_logging() -> None:
    """Show the library's progress (INFO) and warnings on stderr, once per process."""
    logger = logging.getLogger("fracture")
    if any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("fracture: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def stage_progress(
    prefix: str,
) -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
    """A progress bar per stage (``on_progress(stage, done, total)``) and a function closing them."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = tqdm(
                total=total, desc=f"{prefix} {stage}", unit="img", disable=not sys.stderr.isatty()
            )
        bars[stage].update(done - bars[stage].n)

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return update, close


def model_dir_or_active(arg: str | None) -> Path:
    """The folder named on the command line, else the model served now (the registry's ACTIVE)."""
    from fracture.config import get_settings
    from fracture.model.registry import active_model_dir

    return Path(arg) if arg else active_model_dir(get_settings())
