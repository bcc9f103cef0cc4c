"""Shared micro-batching: requests from many threads, one inference worker, batched calls.

A Streamlit server runs every browser session on a thread of its own. When each
session calls the network itself, eight colleagues make eight batch-of-one
calls that fight over the same cores, one image at a time each. Here one
worker thread per process owns the network: sessions put their requests in a
queue, the worker takes whatever has gathered (up to ``max_batch_size``,
waiting at most ``max_wait_s`` for more after the first), runs it as one
batch and hands every request its own result. This is the dynamic batching of
inference servers (TF Serving's batching, Triton's dynamic batcher), kept
in-process because the dashboard is one Python process.

Why not a library: the maintained ones are asynchronous and tied to their
server (Ray Serve's ``@serve.batch`` needs asyncio and Ray; Modal's
``@batched`` runs on Modal); ``batched`` (PyPI, 0.1.x) is young and would
need adapting for per-request failure isolation and the statistics kept here.
The whole mechanism is a queue, a thread and futures.

* :class:`MicroBatcher` is the generic mechanism.
* :class:`SharedPredictor` puts a :class:`~fracture.inference.predictor.Predictor`
  behind it: decoding and letterboxing stay on the caller's thread (they run in
  parallel with the network), only the network calls are queued.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

from fracture.config import Settings
from fracture.errors import FractureError
from fracture.inference.prediction import Prediction, Source
from fracture.inference.predictor import Predictor, Prepared

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_WAIT_S",
    "BatcherClosedError",
    "MicroBatcher",
    "SharedPredictor",
    "batch_sizes_in_log",
]

logger = logging.getLogger(__name__)

# Largest batch the shared worker runs: the eight colleagues of the serving
# target, and the largest batch whose Grad-CAM activations (384 px, bfloat16)
# keep the server well under its memory budget.
DEFAULT_MAX_BATCH = 8
# How long the worker waits for company after a request arrives: the settings'
# default (Settings.batch_wait_ms, where the reason is given).
DEFAULT_MAX_WAIT_S = Settings.batch_wait_ms / 1000
# One INFO line per batch, so a server's log shows the batches that form
# (``fracture load --server-log`` reads them back with batch_sizes_in_log).
_BATCH_LOG = "%s ran a batch of %d request(s) in %.0f ms"
_BATCH_LOG_PATTERN = re.compile(r" ran a batch of (\d+) request\(s\) in ")

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosedError(FractureError, RuntimeError):
    """The batcher was shut down before this request ran."""


@dataclass
class _Request(Generic[T, R]):
    item: T
    future: Future[R]


_STOP = object()  # queued by close(): the worker stops after the requests before it


class MicroBatcher(Generic[T, R]):
    """Run ``process`` on batches of items submitted one at a time from any thread.

    ``process`` takes a list of items and returns one result per item, in
    order; it runs only on the worker thread, so it needs no locking. If it
    raises for a batch, each item of that batch is run again alone, so one bad
    request fails alone and its neighbours still get their results.

    :meth:`close` stops the worker: with ``drain=True`` (default) the requests
    already queued still run; with ``drain=False`` they fail with
    :class:`BatcherClosedError`. Submitting after close raises it at once.
    """

    def __init__(
        self,
        process: Callable[[list[T]], Sequence[R]],
        max_batch_size: int,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        name: str = "micro-batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._process = process
        self._queue: queue.SimpleQueue[_Request[T, R] | object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._abort = False
        self._batch_sizes: Counter[int] = Counter()
        self.name = name
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- callers' side

    def submit(self, item: T) -> Future[R]:
        """Queue ``item``; the future resolves to its result or raises its error."""
        future: Future[R] = Future()
        with self._lock:  # no request can slip in behind the stop marker
            if self._closed:
                raise BatcherClosedError("the inference queue is shut down")
            self._queue.put(_Request(item, future))
        return future

    def __call__(self, item: T, timeout: float | None = None) -> R:
        """Submit ``item`` and wait for its result."""
        return self.submit(item).result(timeout)

    @property
    def batch_sizes(self) -> Counter[int]:
        """How many batches of each size have run so far (a copy)."""
        with self._lock:
            return Counter(self._batch_sizes)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting requests; run (``drain``) or fail the queued ones; join the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._abort = not drain
            self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("the inference worker did not stop within %s s", timeout)

    # ---------------------------------------------------------------- worker's side

    def _work(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch: list[_Request[T, R]] = [first]  # type: ignore[list-item]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    item = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)  # type: ignore[arg-type]
            if self._abort:
                _fail(batch, BatcherClosedError("the inference queue was shut down first"))
            else:
                self._run(batch)

    def _run(self, batch: list[_Request[T, R]]) -> None:
        live = [request for request in batch if request.future.set_running_or_notify_cancel()]
        if not live:
            return
        with self._lock:
            self._batch_sizes[len(live)] += 1
        started = time.perf_counter()
        try:
            results = self._call(live)
            # Logged before any caller is answered: whoever saw a result can find its batch.
            logger.info(_BATCH_LOG, self.name, len(live), 1000 * (time.perf_counter() - started))
        except Exception as error:  # noqa: BLE001 - isolate the failing request below
            if len(live) == 1:
                live[0].future.set_exception(error)
                return
            logger.info(
                "a batch of %d failed (%s); running its requests one by one", len(live), error
            )
            for request in live:
                try:
                    request.future.set_result(self._call([request])[0])
                except Exception as single_error:  # noqa: BLE001
                    request.future.set_exception(single_error)
            return
        except BaseException as error:  # KeyboardInterrupt, SystemExit: no caller waits forever
            _fail(live, BatcherClosedError(f"the inference worker stopped ({error!r})"))
            raise
        for request, result in zip(live, results):
            request.future.set_result(result)

    def _call(self, requests: list[_Request[T, R]]) -> Sequence[R]:
        results = self._process([request.item for request in requests])
        if len(results) != len(requests):
            raise RuntimeError(
                f"batch function returned {len(results)} results for {len(requests)} items"
            )
        return results


def batch_sizes_in_log(lines: Iterable[str]) -> Counter[int]:
    """How many batches of each size a server log reports (its lines at INFO, one per batch)."""
    sizes: Counter[int] = Counter()
    for line in lines:
        match = _BATCH_LOG_PATTERN.search(line)
        if match:
            sizes[int(match.group(1))] += 1
    return sizes


def _fail(batch: Sequence[_Request], error: Exception) -> None:
    for request in batch:
        if request.future.set_running_or_notify_cancel():
            request.future.set_exception(error)


@dataclass
class _Job:
    prepared: Prepared
    with_cam: bool


class SharedPredictor:
    """A :class:`Predictor` shared by many threads: their ``predict`` calls share network batches.

    Decoding and letterboxing run on the calling thread; only the network call
    is queued. ``predictor`` should have an open-sized engine
    (``Predictor(..., fixed_batch=False)``), so a batch of one is not padded to
    the maximum; its ``batch_size`` is the largest batch run.
    """

    def __init__(self, predictor: Predictor, max_wait_s: float = DEFAULT_MAX_WAIT_S) -> None:
        self.predictor = predictor
        self._batcher: MicroBatcher[_Job, Prediction] = MicroBatcher(
            self._process, predictor.batch_size, max_wait_s, name="fracture-inference"
        )

    @property
    def config(self):
        return self.predictor.config

    @property
    def threshold(self) -> float:
        return self.predictor.threshold

    @property
    def batch_sizes(self) -> Counter[int]:
        """How many network batches of each size the shared worker has run."""
        return self._batcher.batch_sizes

    def predict(
        self,
        sources: Sequence[Source],
        *,
        names: Sequence[str] | None = None,
        with_cam: bool = False,
    ) -> list[Prediction]:
        """Like :meth:`Predictor.predict`; waits for this call's own results only."""
        names = list(names) if names is not None else [f"input-{i}" for i in range(len(sources))]
        if len(names) != len(sources):
            raise ValueError(f"{len(names)} names for {len(sources)} sources")
        prepared = [
            self.predictor.prepare(index, source, name, keep_image=with_cam)
            for index, (source, name) in enumerate(zip(sources, names))
        ]
        futures = [self._submit(item, with_cam) for item in prepared]
        return [_collect(item, future) for item, future in zip(prepared, futures)]

    def iter_predict(
        self,
        sources: Sequence[Source],
        *,
        names: Sequence[str] | None = None,
        with_cam: bool = False,
    ) -> Iterator[Prediction]:
        """Yield one prediction per source, in order, as the shared worker finishes each batch.

        For a batch view: the sources go to the queue in full batches (``batch_size``
        at a time, all decoded first), so the worker runs full network batches instead
        of one image per request; the next batch is decoded here while the worker runs
        the previous one. Other sessions' requests still join whatever batch forms. A
        bad source yields its error row and the rest go on.
        """
        names = list(names) if names is not None else [f"input-{i}" for i in range(len(sources))]
        if len(names) != len(sources):
            raise ValueError(f"{len(names)} names for {len(sources)} sources")
        size = self.predictor.batch_size
        pending: list[tuple[Prepared, Future[Prediction] | None]] = []
        for start in range(0, len(sources), size):
            chunk = [
                self.predictor.prepare(index, sources[index], names[index], keep_image=with_cam)
                for index in range(start, min(start + size, len(sources)))
            ]
            # Queued together: the worker finds a full batch waiting and runs it at once.
            submitted = [(item, self._submit(item, with_cam)) for item in chunk]
            # Answer the batch before this one (done, or running while this one decoded).
            for item, future in pending:
                yield _collect(item, future)
            pending = submitted
        for item, future in pending:
            yield _collect(item, future)

    def _submit(self, item: Prepared, with_cam: bool) -> Future[Prediction] | None:
        """Queue one prepared source; None for a bad one (its error is in ``item``)."""
        if item.error is not None:
            return None
        try:
            return self._batcher.submit(_Job(item, with_cam))
        except BatcherClosedError:
            item.error = f"{item.name}: the server is restarting its model; try again"
            return None

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop the worker (see :meth:`MicroBatcher.close`)."""
        self._batcher.close(drain=drain, timeout=timeout)

    def _process(self, jobs: list[_Job]) -> list[Prediction]:
        # One network call for the batch; with a heat map if any request wants one.
        with_cam = any(job.with_cam for job in jobs)
        batch = [dataclasses.replace(job.prepared, index=index) for index, job in enumerate(jobs)]
        predictions = list(self.predictor.score(batch, with_cam))
        # A request that asked for no heat map gets none, whoever it shared the batch with.
        return [
            prediction
            if job.with_cam
            else dataclasses.replace(prediction, heatmap=None, image=None, class_evidence=None)
            for job, prediction in zip(jobs, predictions)
        ]


def _collect(item: Prepared, future: Future[Prediction] | None) -> Prediction:
    if future is None:
        return Prediction(source=item.name, status="error", error=item.error)
    try:
        return future.result()
    except BatcherClosedError:
        return Prediction(
            source=item.name,
            status="error",
            error=f"{item.name}: the server is restarting its model; try again",
        )
    except Exception as error:
        logger.exception("scoring %s failed", item.name)
        return Prediction(
            source=item.name, status="error", error=f"{item.name}: could not be scored ({error})"
        )
