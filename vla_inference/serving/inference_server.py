"""The serving core behind the lifecycle node: rate limiter -> validator -> one-slot queue -> worker.

Plain Python (no rclpy) so the whole request contract is testable alone:

* every submitted request is answered exactly once through its ``reply`` callback;
* at most ``max_request_rate_hz`` requests are accepted; a faster one is answered
  ``REJECTED_RATE_LIMIT`` with ``retry_after_ms``;
* one request runs, at most one waits; a newer accepted request replaces the waiting one, which is
  answered ``SUPERSEDED``. With pipelining the running request may be in either stage: the waiting
  one starts its vision stage as soon as the running one moves on to denoising, so up to two run
  (one per stage) and one waits;
* ``submit`` never waits for inference: it validates (O(size of the images)) and hands the job to
  the worker thread;
* a request without result ``deadline_ms`` after receipt is answered ``DEADLINE_EXCEEDED`` then, by a
  watchdog thread, whether it waits or runs: a hung backend costs a client its deadline, never more;
  the late result, if one ever comes, is dropped (the request was answered);
* a failure inside the backend is answered ``INTERNAL_ERROR`` and the worker keeps serving;
* ``stop`` answers the waiting request ``NOT_READY`` and lets the running one finish (or its deadline
  pass); a request the backend still holds when ``stop`` gives up is answered ``INTERNAL_ERROR``.
"""
from __future__ import annotations

import enum
import heapq
import itertools
import logging
import math
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

import numpy as np

from vla_inference.serving.latency_stats import LatencyStats
from vla_inference.serving.rate_limiter import RateLimiter
from vla_inference.serving.request_slot import RequestSlot, SlotClosedError
from vla_inference.serving.request_validator import (
    InvalidRequestError,
    RequestPayload,
    RequestValidator,
    ValidatedRequest,
)
from vla_inference.spec.observation import Observation

LOG = logging.getLogger(__name__)
MODEL_TIME_HISTORY = 1024


class Status(enum.IntEnum):
    """Mirror of ``vla_msgs/InferenceResponse`` status constants (a test keeps them equal)."""

    OK = 0
    REJECTED_RATE_LIMIT = 1
    SUPERSEDED = 2
    INVALID_REQUEST = 3
    NOT_READY = 4
    DEADLINE_EXCEEDED = 5
    INTERNAL_ERROR = 6


@dataclass
class Reply:
    request_id: int
    status: Status
    message: str = ""
    actions: Optional[np.ndarray] = None
    confidence: float = 0.0
    denoising_steps: int = 0
    latency_ms: float = 0.0
    retry_after_ms: int = 0
    model_ms: float = 0.0  # time inside the pipeline (both stages), 0 when it did not run


ReplyFn = Callable[[Reply], None]


class StageTimings(Protocol):
    """What the server reads of a chunk's timings."""

    total_ms: float
    queue_ms: float


class Chunk(Protocol):
    """What the server reads of a finished inference (``runtime.pipeline.ActionChunk``)."""

    actions: np.ndarray
    confidence: float
    timings: StageTimings


class Pipeline(Protocol):
    """The seam to the model (``runtime.pipeline.InferencePipeline``): ``submit`` returns at once with
    a future; ``pipelining`` says whether two requests may be in flight (one per stage)."""

    pipelining: bool

    def submit(self, observation: Observation, steps: int, seed: int) -> "Future[Chunk]": ...


@dataclass
class ServerSettings:
    """Values the node may change while active; read once per request."""

    denoising_steps: int = 10
    max_request_rate_hz: float = 5.0
    deadline_ms: float = 1000.0
    seed: int = 0


@dataclass
class _Job:
    request_id: int
    received_at: float
    reply: ReplyFn
    request: ValidatedRequest = field(repr=False)
    due_at: float = math.inf  # receipt + the deadline in force when it was accepted
    answered: bool = False  # set once, under the server's answer lock: the exactly-once guard
    serial: int = -1  # the watchdog's key (request_ids are the clients' and may repeat)


class InferenceServer:
    """Owns the worker thread that runs ``pipeline.infer`` for accepted requests."""

    def __init__(
        self,
        pipeline: Pipeline,
        validator: RequestValidator,
        settings: ServerSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pipeline = pipeline
        self._validator = validator
        self._settings = settings
        self._clock = clock
        self._limiter = RateLimiter(settings.max_request_rate_hz)
        self._slot = RequestSlot()
        self.stats = LatencyStats()
        self._worker: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self._concurrency = 2 if pipeline.pipelining else 1
        self._capacity = threading.Semaphore(self._concurrency)
        self._model_ms: "OrderedDict[int, float]" = OrderedDict()
        self._model_ms_lock = threading.Lock()
        self._answer_lock = threading.Lock()
        self._live: Dict[int, _Job] = {}  # accepted and not yet answered, by serial
        self._due: List[Tuple[float, int]] = []  # heap of (due_at, serial)
        self._serials = itertools.count()
        self._watch = threading.Condition()
        self._watchdog: Optional[threading.Thread] = None

    def model_time_ms(self, request_id: int) -> Optional[float]:
        """Pipeline time of a recent request (the last MODEL_TIME_HISTORY), for overhead measurements."""
        with self._model_ms_lock:
            return self._model_ms.get(request_id)

    @property
    def settings(self) -> ServerSettings:
        return self._settings

    def update_settings(self, **changes: Any) -> None:
        for name, value in changes.items():
            if not hasattr(self._settings, name):
                raise AttributeError(f"unknown server setting {name!r}")
            setattr(self._settings, name, value)
        if "max_request_rate_hz" in changes:
            self._limiter.set_rate(changes["max_request_rate_hz"])

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._worker is not None:
            return
        self._stopping.clear()
        self._slot = RequestSlot()
        self._capacity = threading.Semaphore(self._concurrency)
        self._worker = threading.Thread(target=self._run, name="vla-inference-worker", daemon=True)
        self._worker.start()
        self._watchdog = threading.Thread(target=self._watch_deadlines, name="vla-deadline-watchdog", daemon=True)
        self._watchdog.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop accepting; answer the waiting job NOT_READY; let the running one finish."""
        self._stopping.set()
        for job in self._slot.close():
            self._answer(job.reply, Reply(job.request_id, Status.NOT_READY, "server is shutting down"), job)
        if self._worker is not None:
            self._worker.join(timeout_s)
            drained = all(self._capacity.acquire(timeout=timeout_s) for _ in range(self._concurrency))
            if self._worker.is_alive() or not drained:
                LOG.error("inference worker did not stop within %.1f s", timeout_s)
            self._worker = None
        with self._watch:
            self._watch.notify_all()
        if self._watchdog is not None:
            self._watchdog.join(timeout_s)
            self._watchdog = None
        with self._answer_lock:
            leftover = list(self._live.values())
        for job in leftover:  # still inside a backend that did not return: nothing else will answer them
            self._answer(job.reply, Reply(job.request_id, Status.INTERNAL_ERROR,
                                          "server stopped while the backend still held this request"), job)

    @property
    def running(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    # -- requests --------------------------------------------------------------------------
    def submit(self, request_id: int, payload: RequestPayload, reply: ReplyFn) -> None:
        """Answer now (rate limit, invalid, superseded) or queue for the worker. Never blocks on inference."""
        received_at = self._clock()
        if not self.running:
            self._answer(reply, Reply(request_id, Status.NOT_READY, "server is not active"), None)
            return
        accepted, retry_after_s = self._limiter.try_acquire(received_at)
        if not accepted:
            retry_ms = max(1, math.ceil(round(retry_after_s * 1000.0, 3)))
            message = f"over {self._settings.max_request_rate_hz:g} Hz; retry in {retry_ms} ms"
            self._answer(reply, Reply(request_id, Status.REJECTED_RATE_LIMIT, message, retry_after_ms=retry_ms), None)
            return
        self.stats.record_accepted(received_at)
        try:
            request = self._validator.validate(payload)
        except InvalidRequestError as exc:
            self._answer(reply, Reply(request_id, Status.INVALID_REQUEST, str(exc)), None, received_at)
            return
        job = _Job(request_id, received_at, reply, request, due_at=received_at + self._settings.deadline_ms / 1000.0)
        self._watch_job(job)
        try:
            superseded = self._slot.offer(job)
        except SlotClosedError:
            self._answer(reply, Reply(request_id, Status.NOT_READY, "server is shutting down"), job)
            return
        if superseded is not None:
            message = f"superseded by request {request_id}"
            self._answer(superseded.reply, Reply(superseded.request_id, Status.SUPERSEDED, message), superseded)

    # -- worker ----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self._capacity.acquire(timeout=0.1):
                continue
            job = self._slot.take(timeout=0.1)
            if job is None:
                self._capacity.release()
                continue
            self._slot.finish()  # the job now belongs to the pipeline; the capacity bounds it
            if job.answered:  # its deadline passed while it waited: nobody wants its result
                self._capacity.release()
                continue
            self._start(job)

    def _watch_job(self, job: _Job) -> None:
        with self._answer_lock:
            job.serial = next(self._serials)
            self._live[job.serial] = job
        with self._watch:
            heapq.heappush(self._due, (job.due_at, job.serial))
            self._watch.notify()

    def _watch_deadlines(self) -> None:
        """Answer DEADLINE_EXCEEDED at the deadline; a job answered meanwhile is just dropped from the heap."""
        while True:
            with self._watch:
                if self._stopping.is_set() and self._worker is None:
                    return
                now = self._clock()
                expired = []
                while self._due and self._due[0][0] <= now:
                    expired.append(heapq.heappop(self._due)[1])
                if not expired:
                    wait_s = self._due[0][0] - now if self._due else 0.1
                    self._watch.wait(min(max(wait_s, 0.0), 0.1))
                    continue
            for serial in expired:
                with self._answer_lock:
                    job = self._live.get(serial)
                if job is not None:
                    deadline_ms = (job.due_at - job.received_at) * 1000.0
                    self._answer(job.reply, Reply(job.request_id, Status.DEADLINE_EXCEEDED,
                                                  f"no result within the deadline of {deadline_ms:g} ms"), job)

    def _start(self, job: _Job) -> None:
        settings = self._settings
        steps = job.request.denoising_steps or settings.denoising_steps
        observation = Observation(
            images=job.request.images,
            text=job.request.text,
            state=job.request.state,
            lidar_range=job.request.lidar_range,
        )
        seed = (settings.seed * 1_000_003 + job.request_id) % (2**32)
        try:
            future = self._pipeline.submit(observation, steps=steps, seed=seed)
        except Exception as exc:  # noqa: BLE001 - answered below like any inference failure
            self._complete(job, steps, None, exc)
            return
        future.add_done_callback(lambda done: self._complete(job, steps, done, None))

    def _complete(self, job: _Job, steps: int, future: "Optional[Future[Chunk]]", error: Optional[BaseException]) -> None:
        try:
            if error is None:
                error = future.exception()
            self._answer(job.reply, self._reply_for(job, steps, None if error else future.result(), error), job)
        finally:
            self._capacity.release()

    def _reply_for(self, job: _Job, steps: int, chunk: Optional[Chunk], error: Optional[BaseException]) -> Reply:
        """Validation already passed, so any error from here on is the server's: INTERNAL_ERROR, never
        INVALID_REQUEST (a ValueError inside a backend is a bug or a fault, not the client's doing)."""
        if error is None and chunk is None:
            error = RuntimeError("the pipeline finished without a chunk")
        if error is not None or chunk is None:
            LOG.error("inference failed for request %d: %s: %s", job.request_id, type(error).__name__, error)
            return Reply(job.request_id, Status.INTERNAL_ERROR, f"{type(error).__name__}: {error}",
                         denoising_steps=steps)
        return Reply(
            job.request_id,
            Status.OK,
            actions=chunk.actions,
            confidence=float(chunk.confidence),
            denoising_steps=steps,
            model_ms=chunk.timings.total_ms - chunk.timings.queue_ms,
        )

    def _answer(self, reply: ReplyFn, response: Reply, job: Optional[_Job], received_at: Optional[float] = None) -> None:
        """Send one response; for an accepted job only the first answer goes out (the watchdog and the
        pipeline may race for a request that finishes just at its deadline)."""
        if job is not None:
            with self._answer_lock:
                if job.answered:
                    if response.status == Status.OK:
                        LOG.warning("request %d finished %.0f ms after receipt, past its deadline: result dropped",
                                    job.request_id, (self._clock() - job.received_at) * 1000.0)
                    return
                job.answered = True
                self._live.pop(job.serial, None)
        start = job.received_at if job is not None else (received_at if received_at is not None else self._clock())
        response.latency_ms = (self._clock() - start) * 1000.0
        self.stats.record_response(response.status.name, response.latency_ms if response.actions is not None else None)
        if response.model_ms:
            with self._model_ms_lock:
                self._model_ms[response.request_id] = response.model_ms
                while len(self._model_ms) > MODEL_TIME_HISTORY:
                    self._model_ms.popitem(last=False)
        try:
            reply(response)
        except Exception:  # noqa: BLE001 - a failing transport must not stop the server
            LOG.exception("could not send the response to request %d", response.request_id)
