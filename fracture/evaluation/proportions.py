"""A proportion with an interval that small counts can bear."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["wilson_rate"]

_Z95 = 1.959963984540054


def wilson_rate(hits: int, n: int) -> dict[str, Any]:
    """``hits / n`` with its Wilson 95% interval (Wilson 1927), which stays inside [0, 1].

    Returns ``{"hits", "n", "rate", "ci"}``; ``rate`` and ``ci`` are None when ``n`` is 0.
    """
    if n == 0:
        return {"hits": 0, "n": 0, "rate": None, "ci": None}
    p = hits / n
    centre = (p + _Z95 * _Z95 / (2 * n)) / (1 + _Z95 * _Z95 / n)
    half = _Z95 * math.sqrt(p * (1 - p) / n + _Z95 * _Z95 / (4 * n * n)) / (1 + _Z95 * _Z95 / n)
    return {
        "hits": hits,
        "n": n,
        "rate": p,
        "ci": [max(0.0, centre - half), min(1.0, centre + half)],
    }
