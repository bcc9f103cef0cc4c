"""One Predictor shared by many threads (as the dashboard shares it between sessions).

* Results under concurrency equal the single-threaded ones, Grad-CAM included.
* Decoding under concurrency leaves the process's warning filters alone.
* (slow) Memory stays flat over 1,000 predictions.
"""

from __future__ import annotations

import gc
import io
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from fracture.inference.prediction import Prediction
from fracture.inference.predictor import Predictor

from conftest import radiograph_like

THREADS = 8
CALLS = 200
IMAGES = 10


@pytest.fixture(autouse=True)
def restore_warning_filters():
    # Restores (does not silence) the filter list, so that a leak found here
    # cannot change how later test modules see warnings.
    with warnings.catch_warnings():
        yield


@pytest.fixture(scope="module")
def predictor(tiny_loaded) -> Predictor:
    # batch_size 2: single-image calls and two-image batches both occur below.
    return Predictor(tiny_loaded, batch_size=2)


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(radiograph_like(seed, height=60 + 4 * seed, width=72)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def sources() -> list[bytes | np.ndarray]:
    """Distinct images of distinct sizes; half encoded (decoded by load_image), half arrays."""
    return [
        _png(seed) if seed % 2 else radiograph_like(seed, 64 + 3 * seed, 70)
        for seed in range(IMAGES)
    ]


def _same(result: Prediction, expected: Prediction) -> None:
    assert result.ok and expected.ok
    np.testing.assert_allclose(result.probability, expected.probability, rtol=0, atol=1e-5)
    assert result.heatmap.shape == expected.heatmap.shape
    np.testing.assert_allclose(result.heatmap, expected.heatmap, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(result.image, expected.image)


def test_shared_predictor_gives_single_threaded_results_with_grad_cam(
    predictor: Predictor, sources: list[bytes | np.ndarray]
) -> None:
    reference = [
        predictor.predict([s], names=[f"img{i}"], with_cam=True)[0] for i, s in enumerate(sources)
    ]
    # Call c asks for 1, 2 or 3 images (3 = a full batch plus a padded one,
    # and the tf.data decoding path), starting at a different image each time.
    plans = [[(c + k) % IMAGES for k in range(1 + c % 3)] for c in range(CALLS)]
    start = threading.Barrier(THREADS)

    def call(plan: list[int]) -> tuple[list[int], list[Prediction]]:
        return plan, predictor.predict(
            [sources[i] for i in plan], names=[f"img{i}" for i in plan], with_cam=True
        )

    def worker(chunk: list[list[int]]) -> list[tuple[list[int], list[Prediction]]]:
        start.wait()  # all threads begin together, so the calls really overlap
        return [call(plan) for plan in chunk]

    chunks = [plans[t::THREADS] for t in range(THREADS)]
    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = [item for chunk in pool.map(worker, chunks) for item in chunk]

    assert len(outcomes) == CALLS
    checked = 0
    for plan, results in outcomes:
        assert [r.source for r in results] == [f"img{i}" for i in plan]
        for index, result in zip(plan, results):
            _same(result, reference[index])
            checked += 1
    assert checked == sum(len(plan) for plan in plans)


def test_concurrent_decoding_leaves_warning_filters_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Force the interleaving A enters, B enters, A leaves, B leaves of the bomb guard."""
    from fracture.io import images

    data = _png(3)
    b_inside, a_done = threading.Event(), threading.Event()
    real_open = Image.open

    def open_in_order(*args, **kwargs):
        if threading.current_thread().name == "A":
            b_inside.wait(timeout=2)  # with a lock around the guard B cannot enter: time out
        else:
            b_inside.set()
            a_done.wait(timeout=2)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(images.Image, "open", open_in_order)
    before = list(warnings.filters)

    def run_a() -> None:
        images.load_image(data)
        a_done.set()

    a = threading.Thread(target=run_a, name="A")
    b = threading.Thread(target=images.load_image, args=(data,), name="B")
    a.start()
    b.start()
    a.join(10)
    b.join(10)
    assert warnings.filters == before


@pytest.mark.slow
def test_memory_stays_flat_over_1000_predictions(
    predictor: Predictor, sources: list[bytes | np.ndarray]
) -> None:
    psutil = pytest.importorskip("psutil")
    process = psutil.Process()
    batch = sources  # 10 per call, decoded through tf.data: the path a CLI batch takes

    def run(calls: int) -> None:
        for call in range(calls):
            results = predictor.predict(batch, with_cam=call % 2 == 0)
            assert all(r.ok for r in results)

    run(10)  # warm-up: 100 predictions, every code path traced and allocated once
    gc.collect()
    warm = process.memory_info().rss
    run(90)  # 900 more
    gc.collect()
    end = process.memory_info().rss
    growth = (end - warm) / warm
    print(
        f"RSS after warm-up {warm / 2**20:.0f} MiB, after 1000 predictions "
        f"{end / 2**20:.0f} MiB ({growth:+.1%})"
    )
    assert growth < 0.05
