"""Images this server has already scored, found again by their content, within a memory bound.

Thirty students opening a demo link mostly upload the same handful of example
radiographs; a teacher re-uploads the one on the slide. Keyed by the SHA-256 of
the uploaded bytes (not the file name or the browser's upload id), a second
upload of the same image costs a hash instead of a network pass (issue 25).
Every stored result counts against a byte budget, its arrays measured with
``nbytes``; the least recently used go first. Thread-safe: Streamlit runs each
session's script on its own thread and they share one cache per process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fracture.inference.prediction import Prediction

__all__ = ["DEFAULT_MAX_BYTES", "ScoredImages", "content_key", "prediction_bytes"]

DEFAULT_MAX_BYTES = 128 * 1024 * 1024
# A result's fields other than its arrays (strings, boxes, floats): a rough, fixed cost.
_OVERHEAD_BYTES = 4096


def content_key(data: bytes | bytearray | memoryview) -> str:
    """The SHA-256 of an upload's bytes: the same image under any name finds the same result."""
    return hashlib.sha256(data).hexdigest()


def _array_bytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(_array_bytes(item) for item in value.values())
    return 0


def prediction_bytes(prediction: Prediction) -> int:
    """Roughly the memory a kept prediction holds: its arrays, plus a fixed overhead."""
    return _OVERHEAD_BYTES + sum(
        _array_bytes(getattr(prediction, item.name)) for item in dataclasses.fields(prediction)
    )


class ScoredImages:
    """A least-recently-used map from content key to prediction, bounded by bytes."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be 0 or more, not {max_bytes}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[Prediction, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        """What the kept results hold now (never more than ``max_bytes``)."""
        return self._bytes

    def get(self, key: str, name: str | None = None) -> Prediction | None:
        """The stored result for ``key``, named ``name`` when given (the new upload's name)."""
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            self._items.move_to_end(key)
        prediction = found[0]
        return prediction if name is None else dataclasses.replace(prediction, source=name)

    def put(self, key: str, prediction: Prediction) -> None:
        """Keep ``prediction``; a result larger than the whole budget is not kept."""
        size = prediction_bytes(prediction)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return
            self._items[key] = (prediction, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
