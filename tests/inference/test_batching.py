"""The shared inference queue (fracture.inference.batching).

* Requests from many threads each get exactly their own result, and batches bigger than one form.
* A bad request fails alone; its batch neighbours still get their results.
* Shutdown drains the queued requests, or fails them cleanly; later submissions are refused.
* The SharedPredictor gives the same probabilities and heat maps as a Predictor alone.
* Each batch is one line of the server log, and the log reads back as the batch sizes.
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from fracture.inference.batching import (
    BatcherClosedError,
    MicroBatcher,
    SharedPredictor,
    batch_sizes_in_log,
)
from fracture.inference.predictor import Predictor

from conftest import radiograph_like

THREADS = 8


class Gate:
    """A batch function that blocks its first call until released, so requests pile up behind it."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[int]] = []
        self.delay_s = delay_s

    def __call__(self, items: list[int]) -> list[int]:
        self.entered.set()
        self.release.wait(10)
        time.sleep(self.delay_s)
        self.batches.append(list(items))
        if any(item < 0 for item in items):
            raise ValueError(f"negative item in {items}")
        return [item * 10 for item in items]


def _blocked(batcher: MicroBatcher, gate: Gate):
    """Submit one request and wait until the worker is stuck inside the batch function with it."""
    first = batcher.submit(0)
    assert gate.entered.wait(10)
    return first


def test_each_thread_gets_its_own_results_and_batches_form():
    gate = Gate(delay_s=0.01)
    gate.release.set()
    batcher = MicroBatcher(gate, max_batch_size=4, max_wait_s=0.005)

    def client(thread: int) -> list[tuple[int, int]]:
        items = [thread * 100 + call for call in range(6)]
        return [(item, batcher(item, timeout=30)) for item in items]

    with ThreadPoolExecutor(THREADS) as pool:
        answers = [pair for result in pool.map(client, range(THREADS)) for pair in result]
    batcher.close()
    assert len(answers) == THREADS * 6
    assert all(result == item * 10 for item, result in answers)
    sizes = batcher.batch_sizes
    assert sum(size * count for size, count in sizes.items()) == THREADS * 6
    assert max(sizes) > 1, sizes
    assert max(sizes) <= 4


def test_each_batch_is_a_log_line_that_reads_back_as_its_size(capsys):
    """What hospital IT sees in the server log, and what ``fracture load --server-log`` counts."""
    from fracture.logs import configure_logging

    configure_logging("INFO", timestamps=True)  # as the dashboard does
    try:
        gate = Gate()
        batcher = MicroBatcher(gate, max_batch_size=8, max_wait_s=0.0, name="fracture-inference")
        first = _blocked(batcher, gate)
        rest = [batcher.submit(item) for item in (1, 2, 3)]
        gate.release.set()
        assert [future.result(10) for future in (first, *rest)] == [0, 10, 20, 30]
        batcher.close()
        log = capsys.readouterr().err
    finally:
        configure_logging("INFO")
    assert batcher.batch_sizes == Counter({1: 1, 3: 1})
    assert batch_sizes_in_log(log.splitlines()) == batcher.batch_sizes
    line = next(line for line in log.splitlines() if "batch of 3" in line)
    assert re.match(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO fracture\.inference\.batching: "
        r"fracture-inference ran a batch of 3 request\(s\) in \d+ ms$",
        line,
    ), line


def test_the_log_level_comes_from_the_settings(capsys):
    import logging

    from fracture.config import Settings
    from fracture.logs import configure_logging

    settings = Settings.load(environ={"FRACTURE_LOG_LEVEL": "warning"})
    try:
        configure_logging(settings.log_level)
        assert logging.getLogger("fracture").level == logging.WARNING
        batcher = MicroBatcher(lambda items: items, max_batch_size=2)
        assert batcher(5, timeout=10) == 5
        batcher.close()
        assert "ran a batch" not in capsys.readouterr().err  # INFO lines are off
        with pytest.raises(ValueError, match="not one of DEBUG, INFO"):
            configure_logging("chatty")
    finally:
        configure_logging("INFO")


def test_a_bad_request_fails_alone():
    gate = Gate()
    batcher = MicroBatcher(gate, max_batch_size=8, max_wait_s=0.0)
    first = _blocked(batcher, gate)
    good, bad, other = batcher.submit(1), batcher.submit(-1), batcher.submit(2)
    gate.release.set()
    assert first.result(10) == 0
    assert good.result(10) == 10 and other.result(10) == 20
    with pytest.raises(ValueError, match="negative"):
        bad.result(10)
    # They were tried together first, then one by one.
    assert [1, -1, 2] in gate.batches
    batcher.close()


def test_close_drains_queued_requests():
    gate = Gate()
    batcher = MicroBatcher(gate, max_batch_size=2, max_wait_s=0.0)
    first = _blocked(batcher, gate)
    queued = [batcher.submit(item) for item in (1, 2, 3)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    gate.release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert [future.result(0) for future in [first, *queued]] == [0, 10, 20, 30]
    with pytest.raises(BatcherClosedError):
        batcher.submit(4)


def test_close_without_drain_fails_queued_requests_cleanly():
    gate = Gate()
    batcher = MicroBatcher(gate, max_batch_size=2, max_wait_s=0.0)
    first = _blocked(batcher, gate)
    queued = [batcher.submit(item) for item in (1, 2, 3)]
    closer = threading.Thread(target=batcher.close, kwargs={"drain": False})
    closer.start()
    time.sleep(0.05)  # close has marked the queue before the running batch ends
    gate.release.set()
    closer.join(10)
    assert first.result(0) == 0  # the running batch finishes
    for future in queued:
        with pytest.raises(BatcherClosedError):
            future.result(0)
    assert batcher.closed


def test_batcher_rejects_bad_settings():
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, max_batch_size=0)


# ------------------------------------------------------------------ with the tiny model


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(radiograph_like(seed, height=60 + 5 * seed, width=70 + 2 * seed)).save(
        buffer, "PNG"
    )
    return buffer.getvalue()


def test_shared_predictor_matches_a_lone_predictor(tiny_loaded):
    alone = Predictor(tiny_loaded, batch_size=1)
    shared = SharedPredictor(
        Predictor(tiny_loaded, batch_size=4, fixed_batch=False), max_wait_s=0.02
    )
    sources = [_png(seed) for seed in range(THREADS)] + [b"not an image"]
    expected = [
        alone.predict([source], names=[f"img{i}"], with_cam=True)[0]
        for i, source in enumerate(sources)
    ]

    def client(index: int):
        with_cam = index % 2 == 0  # mixed requests share batches
        return index, shared.predict([sources[index]], names=[f"img{index}"], with_cam=with_cam)[0]

    with ThreadPoolExecutor(len(sources)) as pool:
        answers = list(pool.map(client, list(range(len(sources))) * 3))
    shared.close()
    for index, result in answers:
        assert result.source == f"img{index}"
        if index == len(sources) - 1:
            assert result.status == "error" and "img" in result.error
            continue
        assert result.ok, result.error
        np.testing.assert_allclose(result.probability, expected[index].probability, atol=1e-5)
        if index % 2 == 0:
            assert result.heatmap.shape == expected[index].heatmap.shape
            np.testing.assert_allclose(result.heatmap, expected[index].heatmap, atol=1e-3)
        else:
            assert result.heatmap is None
    assert max(shared.batch_sizes) > 1, shared.batch_sizes


def test_shared_predictor_after_close_says_so(tiny_loaded):
    shared = SharedPredictor(Predictor(tiny_loaded, batch_size=2, fixed_batch=False))
    shared.close()
    result = shared.predict([_png(1)], names=["late.png"])[0]
    assert result.status == "error" and "try again" in result.error


def test_shared_iter_predict_sends_full_batches_and_answers_in_order(tiny_loaded):
    # A page's batch: the sources go to the queue a full batch at a time (not one image
    # per request), the answers come back in input order, and a bad file is its own row.
    shared = SharedPredictor(
        Predictor(tiny_loaded, batch_size=4, fixed_batch=False), max_wait_s=0.05
    )
    alone = Predictor(tiny_loaded, batch_size=1)
    sources = [_png(seed) for seed in range(9)]
    sources[5] = b"not an image"
    names = [f"img{i}.png" for i in range(len(sources))]
    try:
        answers = list(shared.iter_predict(sources, names=names, with_cam=True))
    finally:
        shared.close()
    assert [a.source for a in answers] == names
    assert answers[5].status == "error" and "img5.png" in answers[5].error
    for index, answer in enumerate(answers):
        if index == 5:
            continue
        expected = alone.predict([sources[index]], names=[names[index]], with_cam=True)[0]
        np.testing.assert_allclose(answer.probability, expected.probability, atol=1e-5)
        assert answer.heatmap is not None and answer.image is not None
    # 8 good images in full batches of 4 (a loaded machine may join the last two chunks).
    sizes = shared.batch_sizes
    assert sum(size * count for size, count in sizes.items()) == 8
    assert max(sizes) == 4 and sum(sizes.values()) <= 3, sizes
