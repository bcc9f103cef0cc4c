"""What several commands share: the command line's logging, progress bars, the model to use.

Turning an expected error into ``error: ...`` and an exit status is
:func:`fracture.cli.main.main`'s job, once for every command.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable

__all__ = ["configure_logging", "stage_progress", "model_dir_or_active"]


def configure_logging() -> None:
    """Show the library's progress and warnings on stderr at the configured level.

    The level comes from the settings (``FRACTURE_LOG_LEVEL``, default INFO);
    a settings file that cannot be read is left to the command that needs it
    to report, so the log falls back to INFO.
    """
    from fracture.config import get_settings
    from fracture.logs import configure_logging as configure

    try:
        level = get_settings().log_level
    except (OSError, ValueError):
        level = "INFO"
    try:
        configure(level)
    except ValueError as error:
        configure("INFO")
        logging.getLogger("fracture").warning("%s; logging at INFO", error)


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
