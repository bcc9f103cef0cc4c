"""The server's cache of scored images (fracture.views.scored): found by content, bounded by bytes."""

from __future__ import annotations

import numpy as np
import pytest

from fracture.inference.prediction import Prediction
from fracture.views.scored import ScoredImages, content_key, prediction_bytes


def _prediction(name: str, side: int) -> Prediction:
    return Prediction(
        source=name,
        status="ok",
        probability=0.3,
        heatmap=np.zeros((side, side), np.float32),
        image=np.zeros((side, side, 3), np.uint8),
        location_outputs=np.ones((4, 4, 5), np.float32),
    )


def test_the_key_is_the_content_not_the_name():
    assert content_key(b"same bytes") == content_key(bytearray(b"same bytes"))
    assert content_key(b"same bytes") != content_key(b"other bytes")


def test_a_result_is_found_again_under_the_new_name_with_its_arrays():
    cache = ScoredImages()
    stored = _prediction("a.png", 8)
    cache.put("k", stored)
    found = cache.get("k", name="b.png")
    assert found is not None and found.source == "b.png" and found.probability == 0.3
    assert found.location_outputs is stored.location_outputs  # the localiser's output is kept
    assert cache.get("missing") is None


def test_the_size_counts_every_array():
    small, large = _prediction("a", 8), _prediction("a", 64)
    assert prediction_bytes(large) - prediction_bytes(small) == (64 * 64 - 8 * 8) * (4 + 3)


def test_the_least_recently_used_go_first_and_the_bound_holds():
    one = prediction_bytes(_prediction("x", 32))
    cache = ScoredImages(max_bytes=3 * one)
    for key in "abc":
        cache.put(key, _prediction(key, 32))
    assert cache.get("a") is not None  # now the most recent
    cache.put("d", _prediction("d", 32))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("d") is not None
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes
    cache.put("huge", _prediction("huge", 256))  # larger than the whole budget: not kept
    assert cache.get("huge") is None and len(cache) == 3
    cache.put("a", _prediction("a", 32))  # replacing counts once
    assert cache.bytes == 3 * one


def test_a_negative_budget_is_refused():
    with pytest.raises(ValueError, match="0 or more"):
        ScoredImages(max_bytes=-1)
