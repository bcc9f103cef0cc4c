"""Is a process still there? The one answer, for run status, job locks and the load test.

A pid alone is not an identity: the kernel reuses pids, so where a pid was
stored in a file its start time (:func:`process_start_ticks`) is stored beside it.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["pid_alive", "process_start_ticks"]


def pid_alive(pid: Any) -> bool:
    """Whether ``pid`` is a running process; a zombie (killed, not yet reaped) is not."""
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def process_start_ticks(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None where unknown.

    With the pid, it identifies one process for good.
    """
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
