"""TensorRT backend (Jetson, or an x86 GPU host with TensorRT from NVIDIA's index); TensorRT >= 10.1.

Plans: ``engine_builder`` decides what is built and refuses what would not be what it claims: INT8
and FP8 only from the manifest's explicit Q/DQ engines, as strongly typed networks (refused at
configure when the manifest has none, FP8 also below compute capability 8.9); fp32 strongly typed;
FP16/BF16 from the fp32 graph with TensorRT 10's weakly typed flags (refused on TensorRT 11, which
removed them). ``TensorRTPlanBuilder`` here is the TensorRT side of its ``PlanBuilder`` interface:
it parses the ONNX file, checks that a Q/DQ build really has Q/DQ layers and really ran INT8/FP8
kernels (the engine inspector's layer types), and reports layers per precision and activation
memory. Plans live in a writable cache (``plan_cache.default_cache_dir``) under a key of TensorRT
version, GPU, compute capability, ONNX hash, engine version, precision, profile shapes and workspace;
``vla-build-engines`` fills it ahead of time with the same requests configure makes, so configure
builds only on a miss, once, and logs which plan it loaded.

Every TensorRT call that reports failure by returning False or None is checked and raises a
``TensorRTError`` (an ``InferenceError``) naming the engine and tensor. No deprecated call is made:
no ``platform_has_fast_*`` (the compute capability decides), no weakly typed flag outside FP16/BF16
on TensorRT 10, device memory sizes through the ``_v2`` calls.

Threads: CUDA's current device belongs to the host thread, so every method that enqueues work first
binds the calling thread to ``device_index`` (the pipeline's stage threads included). Events use
blocking sync, so waiting for a result sleeps instead of spinning a core.

Memory: execution contexts are created with user-managed activation memory, and all contexts that
enqueue on one stream share one block sized for the largest of them: the vision profiles on one,
the expert profiles and the Euler step on the other. A stream runs them one after another and its
lock keeps their enqueues from interleaving, so two blocks do what one block per profile did.

At run time every engine/profile pair has its own execution context with device buffers and
pinned host buffers allocated once, input shapes and tensor addresses set once. Stage 1 runs on a
normal-priority stream, one batch row per camera view of the request, and copies each sample's
view row into one of two device slots of K rows (device to device copies); stage 2 runs on the
highest-priority stream: the action expert and a small TensorRT network for the Euler update
``x + dt * v`` alternate on device, reading the flow times from a device schedule, so the loop
enqueues work without host synchronisation and only the final chunk is copied back.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from vla_inference.runtime.backends import cuda_runtime as cu
from vla_inference.runtime.backends.base import Backend, BackendUnavailableError, InferenceError
from vla_inference.runtime.backends.engine_builder import (
    PRECISIONS,
    QDQ_PRECISIONS,
    TENSORRT,
    WEAK_TYPING_REMOVED,
    BuildRecipe,
    BuildRequest,
    BuiltPlan,
    Target,
    build_recipe,
    get_or_build,
    layer_precisions,
    parse_version,
    plan_for,
    plan_requests,
    require_qdq,
)
from vla_inference.runtime.backends.plan_cache import CachedPlan, PlanCache
from vla_inference.spec.engine_spec import ACTION_EXPERT, VISION, EngineSpec, check_inputs
from vla_inference.spec.flow import flow_schedule
from vla_inference.spec.manifest import Manifest

try:
    import tensorrt as trt
except ImportError as exc:
    trt = None
    _IMPORT_ERROR: Optional[ImportError] = exc
else:
    _IMPORT_ERROR = None

LOG = logging.getLogger(__name__)

MIN_TENSORRT = (10, 1)  # set_device_memory(ptr, size) and the _v2 device memory sizes
EULER = "euler_step"
EULER_VERSION = "euler-v1"
ADDRESS_ALIGNMENT = 256  # bytes; offsets handed to set_tensor_address keep cudaMalloc's alignment


class TensorRTError(InferenceError):
    """A TensorRT call reported failure (False or None); the message names the engine and tensor."""


def _require(value: Any, what: str) -> Any:
    """``value`` unless TensorRT signalled failure with None or False."""
    if value is None or value is False:
        raise TensorRTError(f"{what} failed (see the TensorRT log above)")
    return value


def _align(nbytes: int) -> int:
    return -(-nbytes // ADDRESS_ALIGNMENT) * ADDRESS_ALIGNMENT


class TensorRTPlanBuilder:
    """``engine_builder.PlanBuilder`` for TensorRT: an ONNX file (or the Euler step) to a checked plan."""

    def __init__(self, logger: Any, target: Target) -> None:
        self._logger = logger
        self._target = target

    @property
    def target(self) -> Target:
        return self._target

    def _network(self, builder: Any, recipe: BuildRecipe) -> Any:
        flags = 0
        if recipe.strongly_typed and parse_version(trt.__version__) < WEAK_TYPING_REMOVED:  # always strong from 11
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        return _require(builder.create_network(flags), "Builder.create_network")

    def build(self, request: BuildRequest, cache: PlanCache) -> BuiltPlan:
        if request.onnx_path is None:
            raise ValueError(f"{request.engine}: no ONNX file to build from")
        what = f"{request.engine} ({request.engine_version}, {request.recipe.precision})"
        builder = _require(trt.Builder(self._logger), "trt.Builder")
        network = self._network(builder, request.recipe)
        parser = _require(trt.OnnxParser(network, self._logger), "trt.OnnxParser")
        if not parser.parse_from_file(str(request.onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise TensorRTError(f"{request.onnx_path}: TensorRT's ONNX parser failed: {errors}")
        if request.recipe.precision in QDQ_PRECISIONS:
            self._check_qdq(network, request)
        config = self._config(builder, request, cache)
        for profile_shapes in request.profiles:
            profile = _require(builder.create_optimization_profile(), f"{what}: create_optimization_profile")
            for name, shape in profile_shapes:
                try:
                    profile.set_shape(name, shape, shape, shape)
                except RuntimeError as exc:  # the binding raises rather than returning False
                    raise TensorRTError(f"{what}: profile shape {shape} for input {name!r} refused: {exc}") from exc
            if config.add_optimization_profile(profile) < 0:
                raise TensorRTError(f"{what}: add_optimization_profile refused the profile {profile_shapes}")
        return self._serialize(builder, network, config, request, what, cache)

    def build_euler(self, request: BuildRequest, shape: Tuple[int, int, int], cache: PlanCache) -> BuiltPlan:
        """x_next = x + dt * velocity, fp32, static shape [K, H, D]: keeps the Euler update on device."""
        builder = _require(trt.Builder(self._logger), "trt.Builder")
        network = self._network(builder, request.recipe)
        x = _require(network.add_input("x", trt.float32, shape), f"{EULER}: add_input x")
        velocity = _require(network.add_input("velocity", trt.float32, shape), f"{EULER}: add_input velocity")
        dt = _require(network.add_input("dt", trt.float32, (1, 1, 1)), f"{EULER}: add_input dt")
        product = _require(network.add_elementwise(velocity, dt, trt.ElementWiseOperation.PROD), f"{EULER}: PROD")
        update = _require(network.add_elementwise(x, product.get_output(0), trt.ElementWiseOperation.SUM),
                          f"{EULER}: SUM")
        x_next = update.get_output(0)
        x_next.name = "x_next"
        network.mark_output(x_next)
        config = self._config(builder, request, cache)
        return self._serialize(builder, network, config, request, EULER, cache)

    @staticmethod
    def _check_qdq(network: Any, request: BuildRequest) -> None:
        """The parsed network must dequantize tensors of the precision's type, or nothing runs in it."""
        wanted = trt.DataType.INT8 if request.recipe.precision == "int8" else trt.DataType.FP8
        count = 0
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type == trt.LayerType.DEQUANTIZE and layer.get_input(0).dtype == wanted:
                count += 1
        if count == 0:
            raise TensorRTError(f"{request.onnx_path}: no {request.recipe.precision} DequantizeLinear in the parsed "
                                f"network: refusing to build it as {request.recipe.precision}")

    def _config(self, builder: Any, request: BuildRequest, cache: PlanCache) -> Any:
        config = _require(builder.create_builder_config(), "Builder.create_builder_config")
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request.workspace_bytes)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # per-layer types for the precision check
        for flag in request.recipe.builder_flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        timing_cache = config.create_timing_cache(cache.read_timing_cache())
        if timing_cache is None or not config.set_timing_cache(timing_cache, False):
            LOG.warning("%s: timing cache rejected (other TensorRT version or GPU), starting a fresh one",
                        cache.timing_cache_path)
            fresh = _require(config.create_timing_cache(b""), "IBuilderConfig.create_timing_cache")
            _require(config.set_timing_cache(fresh, False), "IBuilderConfig.set_timing_cache")
        return config

    def _serialize(self, builder: Any, network: Any, config: Any, request: BuildRequest, what: str,
                   cache: PlanCache) -> BuiltPlan:
        plan = bytes(_require(builder.build_serialized_network(network, config), f"building {what}"))
        timing_cache = config.get_timing_cache()
        if timing_cache is not None:
            cache.write_timing_cache(bytes(timing_cache.serialize()))
        runtime = _require(trt.Runtime(self._logger), "trt.Runtime")
        engine = _require(runtime.deserialize_cuda_engine(plan), f"{what}: deserializing the plan just built")
        inspector = _require(engine.create_engine_inspector(), f"{what}: create_engine_inspector")
        layers = layer_precisions(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        precision = request.recipe.precision
        if precision in QDQ_PRECISIONS and not layers.get(precision):
            raise TensorRTError(f"{what}: TensorRT built no {precision} layer (layers per precision: {layers}); "
                                f"not caching it as {precision}")
        memory = max(engine.get_device_memory_size_for_profile_v2(i) for i in range(engine.num_optimization_profiles))
        return BuiltPlan(plan, layers, int(memory))


@dataclass
class _Binding:
    name: str
    is_input: bool
    host: cu.PinnedArray
    device: cu.DeviceBuffer


class _ProfileContext:
    """One execution context bound to one optimization profile, with its buffers; its activation
    memory is the stream's shared block."""

    def __init__(self, engine: Any, label: str, profile: int, shapes: Mapping[str, Tuple[int, ...]],
                 stream: cu.Stream, activation: cu.DeviceBuffer) -> None:
        self.label = label
        self.context = _require(engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED),
                                f"{label}: create_execution_context")
        self.context.set_device_memory(activation.ptr, activation.nbytes)
        self.bindings: Dict[str, _Binding] = {}
        if engine.num_optimization_profiles > 1:
            _require(self.context.set_optimization_profile_async(profile, stream.address),
                     f"{label}: set_optimization_profile_async({profile})")
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            shape = shapes[name]
            host = cu.PinnedArray(shape, dtype)
            device = cu.DeviceBuffer(host.nbytes)
            self.bindings[name] = _Binding(name, is_input, host, device)
            if is_input:
                _require(self.context.set_input_shape(name, shape), f"{label}: set_input_shape({name!r}, {shape})")
            self.address(name, device.ptr)

    def address(self, name: str, ptr: int) -> None:
        _require(self.context.set_tensor_address(name, ptr), f"{self.label}: set_tensor_address({name!r})")

    def execute(self, stream: cu.Stream) -> None:
        _require(self.context.execute_async_v3(stream.address), f"{self.label}: execute_async_v3")

    def free(self) -> None:
        self.context = None  # before the shared activation block it points at is freed
        for binding in self.bindings.values():
            binding.host.free()
            binding.device.free()
        self.bindings.clear()


@dataclass
class _PrefixSlot:
    prefix_kv: cu.DeviceBuffer
    prefix_mask: cu.DeviceBuffer
    ready: cu.Event


@dataclass
class DevicePrefix:
    """Stage-1 output left on the GPU, in prefix slot ``slot``."""

    slot: int


# Which stream (and shared activation block and lock) each engine enqueues on.
_STREAM_OF = {VISION: VISION, ACTION_EXPERT: ACTION_EXPERT, EULER: ACTION_EXPERT}


class TensorRTBackend(Backend):
    """Builds/loads TensorRT plans for the manifest's ONNX files and runs them on two streams."""

    name = "tensorrt"

    def __init__(
        self,
        manifest: Manifest,
        precision: str = "fp16",
        device: str = "cuda",
        engine_cache_dir: Optional[Path] = None,
        num_samples: int = 4,
        device_index: int = 0,
        workspace_bytes: int = 4 << 30,
        view_rows: int = 2,
    ) -> None:
        """``num_samples`` and ``view_rows`` (the vision profiles' batch sizes 1..view_rows, see
        ``runtime.sample_views``) are what the plans are built and loaded for: pass the served values
        here so that ``prepare`` does not reload. ``engine_cache_dir`` None: ``default_cache_dir()``."""
        if device != "cuda":
            raise ValueError(f"device: the tensorrt backend runs on 'cuda', received {device!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, received {precision!r}")
        require_qdq(manifest, precision)  # a configuration error, named even where TensorRT is absent
        if trt is None:
            raise BackendUnavailableError(self.name, "TensorRT's Python bindings (`tensorrt`)", str(_IMPORT_ERROR))
        if parse_version(trt.__version__) < MIN_TENSORRT:
            raise BackendUnavailableError(self.name, "TensorRT >= 10.1 (JetPack 6.1 or newer)",
                                          f"found {trt.__version__}")
        if cu.CUDART is None:
            raise BackendUnavailableError(self.name, "`cuda-python` (cuda.bindings.runtime)", str(cu.IMPORT_ERROR))
        super().__init__(manifest, precision, source_precision=precision if precision in QDQ_PRECISIONS else "fp32")
        self.cache = PlanCache(engine_cache_dir)
        self.device_index = device_index
        self.workspace_bytes = workspace_bytes
        self.num_samples = num_samples
        self.view_rows = view_rows
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._thread = threading.local()
        self._builder: Optional[TensorRTPlanBuilder] = None
        self.plans: List[CachedPlan] = []
        self._engines: Dict[str, Any] = {}
        self._contexts: Dict[str, Dict[int, _ProfileContext]] = {}
        self._activation: Dict[str, cu.DeviceBuffer] = {}
        self._locks = {VISION: threading.Lock(), ACTION_EXPERT: threading.Lock()}
        self._slots: List[_PrefixSlot] = []
        self._streams: Dict[str, cu.Stream] = {}
        self._done: Dict[str, cu.Event] = {}  # per stream: a blocking-sync fence the host waits on
        self._schedule: Optional[Tuple[cu.PinnedArray, cu.DeviceBuffer]] = None
        self._dt: Optional[Tuple[cu.PinnedArray, cu.DeviceBuffer]] = None
        self._result: Optional[cu.PinnedArray] = None

    @property
    def device(self) -> str:
        return "cuda"

    def _bind_thread(self) -> None:
        """Make ``device_index`` current on the calling thread (CUDA keeps it per host thread)."""
        if getattr(self._thread, "device", None) != self.device_index:
            cu.set_device(self.device_index)
            self._thread.device = self.device_index

    # -- build / load ---------------------------------------------------------------------------
    def plan_builder(self) -> TensorRTPlanBuilder:
        if self._builder is None:
            self._bind_thread()
            gpu_name, capability = cu.device_properties(self.device_index)
            self._builder = TensorRTPlanBuilder(self._logger, Target(TENSORRT, trt.__version__, gpu_name, capability))
        return self._builder

    def build_plans(self) -> List[CachedPlan]:
        """Every plan this precision, K and view rows need, from the cache or built there once (what
        ``vla-build-engines`` runs ahead of time, and ``load`` on a miss)."""
        builder = self.plan_builder()
        recipe = build_recipe(self.manifest, self.precision, builder.target)
        plans = [plan_for(self.cache, builder, request)
                 for request in plan_requests(self.manifest, recipe, self.num_samples, self.view_rows,
                                              self.workspace_bytes)]
        shape = (self.num_samples, self.config.action_horizon, self.config.action_dim)
        euler = BuildRequest(EULER, None, f"{EULER_VERSION}:{'x'.join(map(str, shape))}", EULER_VERSION,
                             BuildRecipe("fp32", "fp32", strongly_typed=True),
                             ((("x", shape), ("velocity", shape), ("dt", (1, 1, 1))),), self.workspace_bytes)
        plans.append(get_or_build(self.cache, builder.target, euler, lambda: builder.build_euler(euler, shape, self.cache)))
        return plans

    def _load(self) -> None:
        self._bind_thread()
        self._streams = {VISION: cu.Stream(high_priority=False), ACTION_EXPERT: cu.Stream(high_priority=True)}
        self._done = {name: cu.Event() for name in self._streams}
        try:
            self.plans = self.build_plans()
            runtime = _require(trt.Runtime(self._logger), "trt.Runtime")
            for plan in self.plans:
                self._engines[plan.key.engine] = _require(
                    runtime.deserialize_cuda_engine(plan.path.read_bytes()),
                    f"{plan.path}: deserialize_cuda_engine (plan of {plan.key.engine_version})")
                LOG.info("loaded TensorRT plan %s (%s %s, %s)", plan.path, plan.key.engine, plan.key.precision,
                         "built now" if plan.built_now else "from the cache")
            self._allocate_activation_memory()
            self._create_contexts(VISION)
            self._create_contexts(ACTION_EXPERT)
            self._setup_denoise()
        except BaseException:
            self._release()
            raise
        target = self.plan_builder().target
        LOG.info("tensorrt %s on %s (sm %s): %s ready, activation memory %s MiB", trt.__version__, target.device_name,
                 target.compute_capability, self.precision,
                 {name: round(block.nbytes / 2**20, 1) for name, block in self._activation.items()})

    def _profile_batches(self, engine_name: str) -> Tuple[int, ...]:
        profiles = next(p.key.profiles for p in self.plans if p.key.engine == engine_name)
        return tuple(profile[0][1][0] for profile in profiles)  # the first input's batch dimension

    def _allocate_activation_memory(self) -> None:
        """One block per stream, as large as the largest profile of any engine enqueued on it."""
        sizes: Dict[str, int] = {}
        for name, engine in self._engines.items():
            need = max(engine.get_device_memory_size_for_profile_v2(i) for i in range(engine.num_optimization_profiles))
            stream = _STREAM_OF[name]
            sizes[stream] = max(sizes.get(stream, 0), int(need))
        self._activation = {stream: cu.DeviceBuffer(size) for stream, size in sizes.items()}

    def _create_contexts(self, engine_name: str) -> None:
        spec: EngineSpec = self.specs[engine_name]
        engine = self._engines[engine_name]
        stream = _STREAM_OF[engine_name]
        self._contexts[engine_name] = {}
        for profile, batch in enumerate(self._profile_batches(engine_name)):
            shapes = {t.name: t.concrete_shape(batch) for t in spec.inputs + spec.outputs}
            self._contexts[engine_name][batch] = _ProfileContext(
                engine, f"{engine_name} batch {batch}", profile, shapes, self._streams[stream], self._activation[stream])

    def _setup_denoise(self) -> None:
        """Euler context, result and dt buffers for the current sample batch K."""
        k, h, d = self.num_samples, self.config.action_horizon, self.config.action_dim
        shapes = {"x": (k, h, d), "velocity": (k, h, d), "dt": (1, 1, 1), "x_next": (k, h, d)}
        self._contexts[EULER] = {k: _ProfileContext(self._engines[EULER], f"{EULER} K={k}", 0, shapes,
                                                    self._streams[ACTION_EXPERT], self._activation[ACTION_EXPERT])}
        self._result = cu.PinnedArray((k, h, d), np.float32)
        dt_host = cu.PinnedArray((1, 1, 1), np.float32)
        self._dt = (dt_host, cu.DeviceBuffer(dt_host.nbytes))

    def prepare(self, num_samples: int, slots: int, view_rows: int = 1) -> None:
        """Allocate ``slots`` prefix buffers of K samples; reloads (from the plan cache, building what it
        lacks) when K or the view rows differ from the profiles the plans were loaded with."""
        if (num_samples, view_rows) != (self.num_samples, self.view_rows) and self.is_loaded:
            LOG.warning("num_samples %d / view rows %d differ from the %d / %d the plans were loaded for: reloading "
                        "(pass them to the backend at creation)", num_samples, view_rows, self.num_samples,
                        self.view_rows)
            self.release()
            self.num_samples, self.view_rows = num_samples, view_rows
            self.load()
        super().prepare(num_samples, slots, view_rows)
        self._bind_thread()
        self._free_slots()
        vision_out = self._contexts[VISION][1].bindings
        for _ in range(slots):
            self._slots.append(
                _PrefixSlot(
                    cu.DeviceBuffer(vision_out["prefix_kv"].device.nbytes * num_samples),
                    cu.DeviceBuffer(vision_out["prefix_mask"].device.nbytes * num_samples),
                    cu.Event(),
                )
            )

    # -- runner ---------------------------------------------------------------------------------
    def _infer(self, engine_name: str, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        batch = int(next(iter(feeds.values())).shape[0])
        profiles = self._contexts[engine_name]
        if batch not in profiles:
            raise ValueError(f"{engine_name}: batch {batch} has no optimization profile (built: {sorted(profiles)})")
        self._bind_thread()
        ctx = profiles[batch]
        stream_name = _STREAM_OF[engine_name]
        stream = self._streams[stream_name]
        with self._locks[stream_name]:
            for name, value in feeds.items():
                binding = ctx.bindings[name]
                np.copyto(binding.host.array, value, casting="same_kind")
                cu.copy_htod(binding.device.ptr, binding.host, stream)
            ctx.execute(stream)
            outputs = [b for b in ctx.bindings.values() if not b.is_input]
            for binding in outputs:
                cu.copy_dtoh(binding.host, binding.device.ptr, stream)
            self._done[stream_name].record(stream)
            self._done[stream_name].synchronize()
            return {b.name: b.host.array.copy() for b in outputs}

    # -- pipeline stages ------------------------------------------------------------------------
    def encode_prefix(self, feeds: Mapping[str, np.ndarray], slot: int,
                      sample_rows: Optional[Sequence[int]] = None) -> DevicePrefix:
        views = check_inputs(self.specs[VISION], feeds)
        rows = self.check_sample_rows(feeds, sample_rows)  # at most view_rows: one profile per row count
        self._bind_thread()
        ctx = self._contexts[VISION][views]
        stream = self._streams[VISION]
        target = self._slots[slot]
        with self._locks[VISION]:
            for name, value in feeds.items():
                binding = ctx.bindings[name]
                np.copyto(binding.host.array, value, casting="same_kind")
                cu.copy_htod(binding.device.ptr, binding.host, stream)
            ctx.execute(stream)
            for name, buffer in (("prefix_kv", target.prefix_kv), ("prefix_mask", target.prefix_mask)):
                source = ctx.bindings[name].device
                row_bytes = source.nbytes // views
                for k, row in enumerate(rows):
                    cu.copy_dtod(buffer.ptr + k * row_bytes, source.ptr + int(row) * row_bytes, row_bytes, stream)
            target.ready.record(stream)
            target.ready.synchronize()
        return DevicePrefix(slot)

    def _schedule_buffers(self, steps: int) -> Tuple[cu.PinnedArray, cu.DeviceBuffer, int]:
        """Pinned + device flow-time rows [steps, K], each row aligned for set_tensor_address."""
        row_bytes = _align(self.num_samples * 4)
        if self._schedule is None or self._schedule[0].shape[0] < steps:
            if self._schedule is not None:
                self._schedule[0].free()
                self._schedule[1].free()
            host = cu.PinnedArray((max(steps, 16), row_bytes // 4), np.float32)
            self._schedule = (host, cu.DeviceBuffer(host.nbytes))
        return self._schedule[0], self._schedule[1], row_bytes

    def denoise(self, prefix: DevicePrefix, noise: np.ndarray, steps: int) -> np.ndarray:
        k = self.num_samples
        if noise.shape != (k, self.config.action_horizon, self.config.action_dim):
            raise ValueError(f"noise: expected shape {(k, self.config.action_horizon, self.config.action_dim)}, "
                             f"received {noise.shape}")
        times, dt = flow_schedule(steps)
        self._bind_thread()
        expert = self._contexts[ACTION_EXPERT][k]
        euler = self._contexts[EULER][k]
        stream = self._streams[ACTION_EXPERT]
        slot = self._slots[prefix.slot]
        with self._locks[ACTION_EXPERT]:
            schedule_host, schedule_dev, row_bytes = self._schedule_buffers(steps)
            dt_host, dt_dev = self._dt
            stream.wait(slot.ready)
            expert.address("prefix_kv", slot.prefix_kv.ptr)
            expert.address("prefix_mask", slot.prefix_mask.ptr)
            schedule_host.array[:steps, :k] = times[:, None]
            cu.copy_htod(schedule_dev.ptr, schedule_host, stream, nbytes=steps * row_bytes)
            dt_host.array[...] = dt
            cu.copy_htod(dt_dev.ptr, dt_host, stream)
            x_a = expert.bindings["noisy_actions"]
            np.copyto(x_a.host.array, noise)
            cu.copy_htod(x_a.device.ptr, x_a.host, stream)
            buffers = (x_a.device.ptr, euler.bindings["x_next"].device.ptr)
            euler.address("velocity", expert.bindings["velocity"].device.ptr)
            euler.address("dt", dt_dev.ptr)
            for i in range(steps):
                current, following = buffers[i % 2], buffers[(i + 1) % 2]
                expert.address("noisy_actions", current)
                expert.address("time", schedule_dev.ptr + i * row_bytes)
                expert.execute(stream)
                euler.address("x", current)
                euler.address("x_next", following)
                euler.execute(stream)
            cu.copy_dtoh(self._result, buffers[steps % 2], stream)
            self._done[ACTION_EXPERT].record(stream)
            self._done[ACTION_EXPERT].synchronize()
            for name, binding in expert.bindings.items():  # back to its own buffers, for direct ``infer`` calls
                expert.address(name, binding.device.ptr)
            return self._result.array.copy()

    # -- teardown -------------------------------------------------------------------------------
    def _free_slots(self) -> None:
        for slot in self._slots:
            slot.prefix_kv.free()
            slot.prefix_mask.free()
            slot.ready.destroy()
        self._slots = []

    def _release(self) -> None:
        for stream in self._streams.values():
            stream.synchronize()
        self._free_slots()
        for profiles in self._contexts.values():
            for ctx in profiles.values():
                ctx.free()
        self._contexts.clear()
        self._engines.clear()
        for block in self._activation.values():
            block.free()
        self._activation = {}
        for pair in (self._schedule, self._dt):
            if pair is not None:
                pair[0].free()
                pair[1].free()
        self._schedule = self._dt = None
        if self._result is not None:
            self._result.free()
            self._result = None
        for event in self._done.values():
            event.destroy()
        self._done = {}
        for stream in self._streams.values():
            stream.destroy()
        self._streams = {}

    def describe(self) -> Dict[str, Any]:
        info = super().describe()
        target = self.plan_builder().target
        info.update(tensorrt=trt.__version__, gpu=target.device_name, compute_capability=target.compute_capability,
                    engine_cache_dir=str(self.cache.cache_dir), plans=[p.path.name for p in self.plans])
        return info
