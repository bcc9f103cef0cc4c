"""What every command shares: one way to turn an expected error into a message and an exit status."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from fracture.errors import FractureError

__all__ = ["guarded", "configure_logging"]


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
