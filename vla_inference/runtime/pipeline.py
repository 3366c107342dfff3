"""Two-stage inference pipeline: observation -> prefix (stage 1) -> denoised action chunk (stage 2).

``InferencePipeline.infer`` serves one request; ``submit`` queues requests back to back and
returns futures. With ``pipelining=True`` two worker threads run the stages, so request n+1's
preprocessing and vision pass run while request n is being denoised:

* ONNX Runtime releases the GIL inside ``session.run``, so on a CPU the two stages really run at
  the same time on two threads;
* GPU backends put the stages on two CUDA streams (the action expert on the higher-priority one)
  behind the same two threads; see ``TorchBackend`` / ``TensorRTBackend``.

Stage-1 outputs are double-buffered: a request takes one of two prefix slots before its vision
pass and gives it back once denoised, so a backend with static device buffers never overwrites a
prefix that is still being read, and at most one request waits between the stages.

Confidence: the K samples of a request differ in their noise and, with ``confidence_views=
"cameras"`` (the default), in the camera view they see (``runtime.sample_views``): stage 1 encodes
one prefix per distinct view, stage 2 denoises all K samples in one batch, each on its view's
prefix. The response is their mean and a confidence from their spread (``runtime.confidence``).

Determinism: the K noise draws of a request come from ``numpy.random.default_rng(seed)`` (standard
normal, float32, shape [K, H, D]; sample k starts from draw ``views.noise_draws[k]``) and each
request's arithmetic is independent of its neighbours, so pipelined results equal sequential ones
bit for bit on a CPU.

Failures stay with their request: an exception in either stage is set on that request's future
(and raised by ``infer``), its slot is returned, and the workers go on with the next request.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from vla_inference.runtime.backends import Backend, InferenceError, create_backend
from vla_inference.runtime.confidence import DEFAULT_SCALE, summarize_samples
from vla_inference.runtime.sample_views import CONFIDENCE_VIEWS, SampleViews, max_view_rows, plan_views, view_feeds
from vla_inference.spec.config import VlaConfig
from vla_inference.spec.flow import flow_schedule
from vla_inference.spec.model_dir import open_model_dir, policy_io
from vla_inference.spec.observation import Observation
from vla_inference.spec.policy_io import FeedEncoder

LOG = logging.getLogger(__name__)

PREFIX_SLOTS = 2
_STOP = object()


@dataclass(frozen=True)
class StageTimings:
    """Milliseconds spent per stage; ``queue_ms`` is time spent waiting for a worker or a slot."""

    preprocess_ms: float
    vision_ms: float
    denoise_ms: float
    postprocess_ms: float
    queue_ms: float
    total_ms: float


@dataclass(frozen=True)
class ActionChunk:
    """The answer to one request: the mean of K sampled chunks and how much they agree."""

    actions: np.ndarray  # float32 [H, D]: mean over the K samples, robot units (D = the robot's action size)
    confidence: float  # in [0, 1] (NaN when K == 1), see vla_inference.runtime.confidence
    dispersion: float
    samples: np.ndarray  # float32 [K, H, D], robot units
    views: SampleViews  # the camera view each sample saw
    steps: int
    seed: int
    timings: StageTimings


@dataclass
class _Request:
    observation: Observation
    steps: int
    seed: int
    future: "Future[ActionChunk]"
    submitted: float
    marks: dict = field(default_factory=dict)
    noise: Optional[np.ndarray] = None
    prefix: Any = None
    slot: Optional[int] = None
    views: Optional[SampleViews] = None


def sample_noise(seed: int, num_samples: int, horizon: int, action_dim: int) -> np.ndarray:
    """The K initial noise chunks of a request: standard normal float32 [K, H, D] from ``seed``."""
    return np.random.default_rng(seed).standard_normal((num_samples, horizon, action_dim), dtype=np.float32)


def warmup_observation(cfg: VlaConfig, state_dim: Optional[int] = None) -> Observation:
    """A valid observation with every input present (all cameras, LiDAR), for warm-up runs;
    ``state_dim`` is the robot's (default: the engine's)."""
    size = cfg.vision.image_size
    images = [np.full((size, size, 3), 127, dtype=np.uint8) for _ in range(cfg.max_cameras)]
    lidar = np.full((cfg.lidar.rows, cfg.lidar.cols), 5.0, dtype=np.float32)
    state = np.zeros(cfg.state_dim if state_dim is None else state_dim, np.float32)
    return Observation(images=images, text="warm up", state=state, lidar_range=lidar)


class InferencePipeline:
    """Serves action chunks from one loaded backend; see the module docstring."""

    def __init__(
        self,
        backend: Backend,
        cfg: Optional[VlaConfig] = None,
        num_samples: int = 4,
        pipelining: bool = True,
        warmup_runs: int = 2,
        confidence_scale: Optional[float] = None,
        confidence_views: str = "cameras",
        owns_backend: bool = False,
    ) -> None:
        if cfg is not None and cfg != backend.config:
            raise ValueError(
                f"cfg: preset {cfg.preset!r} does not match the model directory's config ({backend.config.preset!r})"
            )
        if num_samples < 1:
            raise ValueError(f"num_samples: expected >= 1, received {num_samples}")
        if confidence_views not in CONFIDENCE_VIEWS:
            raise ValueError(f"confidence_views: expected one of {CONFIDENCE_VIEWS}, received {confidence_views!r}")
        self.backend = backend
        self.cfg = backend.config
        self.num_samples = num_samples
        self.pipelining = pipelining
        self.confidence_views = confidence_views
        recorded_scale = backend.manifest.raw.get("confidence_scale", DEFAULT_SCALE)
        self.confidence_scale = float(confidence_scale if confidence_scale is not None else recorded_scale)
        self.action_scale = backend.manifest.raw.get("action_scale")
        self.path_dims = backend.manifest.raw.get("path_dims")
        self.encoder = FeedEncoder(self.cfg, policy_io(backend.manifest), backend.manifest.model_dir)
        self._owns_backend = owns_backend
        self._closed = False
        self._lock = threading.Lock()
        self._inline_lock = threading.Lock()
        slots = PREFIX_SLOTS if pipelining else 1
        self._free_slots: "queue.Queue[int]" = queue.Queue()
        for slot in range(slots):
            self._free_slots.put(slot)
        self._threads: list = []
        try:
            backend.load()
            backend.prepare(num_samples, slots, max_view_rows(confidence_views, self.cfg.max_cameras))
            if pipelining:
                self._inbox: "queue.Queue[Any]" = queue.Queue()
                self._handoff: "queue.Queue[Any]" = queue.Queue()
                self._threads = [
                    threading.Thread(target=self._stage1_worker, name="vla-stage1-vision", daemon=True),
                    threading.Thread(target=self._stage2_worker, name="vla-stage2-denoise", daemon=True),
                ]
                for thread in self._threads:
                    thread.start()
            self.warm_up(warmup_runs)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_model_dir(
        cls, model_dir: Union[str, Path], backend: str = "onnxruntime", precision: str = "fp32", **kwargs: Any
    ) -> "InferencePipeline":
        """Load ``model_dir`` (checksums verified) into ``backend``; the pipeline owns and releases it.

        Keyword arguments go to the pipeline when they name one of its parameters, to ``open_model_dir``
        for ``vision_num_heads`` and ``tokenizer_path`` (LeRobot checkpoints), else to the backend.
        """
        pipeline_keys = {"cfg", "num_samples", "pipelining", "warmup_runs", "confidence_scale", "confidence_views"}
        dir_keys = {"vision_num_heads", "tokenizer_path"}
        pipeline_kwargs = {k: v for k, v in kwargs.items() if k in pipeline_keys}
        dir_kwargs = {k: v for k, v in kwargs.items() if k in dir_keys}
        backend_kwargs = {k: v for k, v in kwargs.items() if k not in pipeline_keys | dir_keys}
        manifest = open_model_dir(Path(model_dir), **dir_kwargs)
        views = pipeline_kwargs.get("confidence_views", "cameras")
        backend_kwargs.setdefault("num_samples", pipeline_kwargs.get("num_samples", 4))  # TensorRT builds for them
        backend_kwargs.setdefault("view_rows", max_view_rows(views, manifest.config.max_cameras))
        runner = create_backend(backend, manifest, precision=precision, **backend_kwargs)
        return cls(runner, owns_backend=True, **pipeline_kwargs)

    # -- public API -----------------------------------------------------------------------------
    def infer(self, observation: Observation, steps: int = 10, seed: int = 0) -> ActionChunk:
        """Serve one request and wait for it. Raises ``ValueError`` naming a bad observation field."""
        return self.submit(observation, steps, seed).result()

    def submit(self, observation: Observation, steps: int = 10, seed: int = 0) -> "Future[ActionChunk]":
        """Queue one request; with pipelining, back-to-back requests overlap stage 1 and stage 2."""
        flow_schedule(steps)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: expected an integer >= 0, received {seed!r}")
        request = _Request(observation, int(steps), int(seed), Future(), time.perf_counter())
        with self._lock:
            if self._closed:
                raise RuntimeError("InferencePipeline is closed")
            if self.pipelining:
                self._inbox.put(request)
                return request.future
        with self._inline_lock:
            if request.future.set_running_or_notify_cancel():
                try:
                    self._run_stage1(request)
                    request.future.set_result(self._run_stage2(request))
                except Exception as exc:
                    request.future.set_exception(exc)
        return request.future

    def warm_up(self, runs: int = 2) -> None:
        """Run a full-size dummy request through both stages so the first real one is not an outlier."""
        observation = warmup_observation(self.cfg, self.encoder.state_dim)
        for run in range(runs):
            self.infer(observation, steps=2, seed=run)

    def close(self) -> None:
        """Finish queued requests, stop the worker threads and (if owned) release the backend."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._threads:
            self._inbox.put(_STOP)
            for thread in self._threads:
                thread.join()
            self._threads = []
        if self._owns_backend:
            self.backend.release()

    def __enter__(self) -> "InferencePipeline":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- stages ---------------------------------------------------------------------------------
    def _run_stage1(self, request: _Request) -> None:
        """Preprocess (validate, normalise, tokenise, draw noise) and run the vision engine."""
        marks = request.marks
        marks["stage1_start"] = time.perf_counter()
        feeds = self.encoder.feeds([request.observation])  # validates the observation, naming the field
        request.views = plan_views(self.confidence_views, len(request.observation.images), self.num_samples)
        feeds = view_feeds(feeds, request.views)
        draws = sample_noise(request.seed, self.num_samples, self.cfg.action_horizon, self.cfg.action_dim)
        request.noise = draws[list(request.views.noise_draws)]
        marks["preprocessed"] = time.perf_counter()
        request.slot = self._free_slots.get()
        marks["vision_start"] = time.perf_counter()
        try:
            request.prefix = self.backend.encode_prefix(feeds, request.slot, request.views.sample_rows)
        except BaseException:
            self._release_slot(request)
            raise
        marks["vision_end"] = time.perf_counter()

    def _run_stage2(self, request: _Request) -> ActionChunk:
        """Denoise the K samples on the request's prefix, then average them and score their spread."""
        marks = request.marks
        marks["denoise_start"] = time.perf_counter()
        try:
            samples = self.backend.denoise(request.prefix, request.noise, request.steps)
        finally:
            self._release_slot(request)
        marks["denoise_end"] = time.perf_counter()
        if not np.isfinite(samples).all():
            raise InferenceError(f"backend {self.backend.name!r} produced NaN/Inf actions")
        samples = self.encoder.actions(samples)  # robot units (a pi0.5 policy's are normalised and padded)
        actions, confidence, dispersion = summarize_samples(samples, self.confidence_scale, self.action_scale,
                                                            self.path_dims)
        done = time.perf_counter()
        timings = _timings(request.submitted, marks, done)
        return ActionChunk(actions, confidence, dispersion, samples, request.views, request.steps, request.seed,
                           timings)

    def _release_slot(self, request: _Request) -> None:
        request.prefix = None
        if request.slot is not None:
            self._free_slots.put(request.slot)
            request.slot = None

    def _stage1_worker(self) -> None:
        while True:
            request = self._inbox.get()
            if request is _STOP:
                self._handoff.put(_STOP)
                return
            if not request.future.set_running_or_notify_cancel():
                continue
            try:
                self._run_stage1(request)
            except Exception as exc:
                LOG.debug("stage 1 failed: %s", exc)
                request.future.set_exception(exc)
                continue
            self._handoff.put(request)

    def _stage2_worker(self) -> None:
        while True:
            request = self._handoff.get()
            if request is _STOP:
                return
            try:
                request.future.set_result(self._run_stage2(request))
            except Exception as exc:
                LOG.debug("stage 2 failed: %s", exc)
                request.future.set_exception(exc)


def _timings(submitted: float, marks: dict, done: float) -> StageTimings:
    ms = 1000.0
    preprocess = (marks["preprocessed"] - marks["stage1_start"]) * ms
    vision = (marks["vision_end"] - marks["vision_start"]) * ms
    denoise = (marks["denoise_end"] - marks["denoise_start"]) * ms
    postprocess = (done - marks["denoise_end"]) * ms
    total = (done - submitted) * ms
    queue_ms = max(0.0, total - preprocess - vision - denoise - postprocess)
    return StageTimings(preprocess, vision, denoise, postprocess, queue_ms, total)
