"""How a process shows the library's log: one handler on the ``fracture`` logger.

The library only logs (``logging.getLogger(__name__)``); the command line and
the dashboard call :func:`configure_logging` once, with the level from the
settings (``log_level``, environment ``FRACTURE_LOG_LEVEL``). The dashboard
asks for timestamps: its log is a server log that hospital IT reads (one line
per inference batch, see :mod:`fracture.inference.batching`).
"""

from __future__ import annotations

import logging
import sys

__all__ = ["LOGGER_NAME", "LEVELS", "configure_logging"]

LOGGER_NAME = "fracture"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_PLAIN_FORMAT = "fracture: %(message)s"
_SERVER_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (tests and tqdm replace it)."""

    @property  # type: ignore[override]
    def stream(self):  # type: ignore[no-untyped-def]
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def configure_logging(level: str = "INFO", *, timestamps: bool = False) -> None:
    """Show the ``fracture`` log at ``level`` on stderr; idempotent (one handler per process).

    ``timestamps`` prefixes each line with time, level and logger, as a server
    log should. A level that is not one of :data:`LEVELS` is a ``ValueError``.
    """
    name = str(level).strip().upper()
    if name not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    logger = logging.getLogger(LOGGER_NAME)
    handler = next((h for h in logger.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        logger.addHandler(handler)
    handler.setFormatter(logging.Formatter(_SERVER_FORMAT if timestamps else _PLAIN_FORMAT))
    logger.setLevel(name)
