"""The benchmark's child processes: how they are started, how they report, how much memory they held.

Every measurement whose memory or start-up time matters runs in a fresh
``python`` process that prints one JSON line after :data:`RESULT_MARKER`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from fracture.errors import BenchError
from fracture.perf.config import CHILD_TIMEOUT_S, PROJECT_ROOT, RESULT_MARKER

__all__ = ["child_env", "run_child", "peak_rss_mib"]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment, with the checkout importable and TensorFlow's C++ chatter off."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def run_child(
    args: list[str], description: str, extra_env: dict[str, str] | None = None
) -> tuple[dict[str, Any], float]:
    """Run ``python ARGS``; return the JSON it printed after RESULT_MARKER and its spawn time."""
    spawned = time.time()
    process = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=child_env(extra_env),
        cwd=PROJECT_ROOT,
        timeout=CHILD_TIMEOUT_S,
    )
    lines = [ln for ln in process.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if process.returncode != 0 or not lines:
        tail = "\n".join((process.stderr or process.stdout).strip().splitlines()[-15:])
        raise BenchError(f"the {description} step failed (exit {process.returncode}):\n{tail}")
    return json.loads(lines[-1][len(RESULT_MARKER) :]), spawned


def peak_rss_mib() -> float:
    """This process's peak resident set size so far.

    On Linux the high-water mark of this process's own memory (``VmHWM``):
    ``getrusage``'s ``ru_maxrss`` survives ``fork`` and ``exec``, so a child
    started by a big process (the serving measurements start the ONNX Runtime
    cold starts) would report its parent's peak.
    """
    import resource

    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
