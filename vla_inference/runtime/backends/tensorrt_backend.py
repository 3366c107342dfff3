"""TensorRT backend (Jetson, or an x86 GPU host with TensorRT from NVIDIA's index).

Engines are built from the manifest's ONNX files with the TensorRT Python API (``Builder``,
``OnnxParser``, ``IBuilderConfig`` with the precision flags the GPU supports, a persistent timing
cache, one optimization profile per batch size used) and serialized as ``.plan`` files in
``engine_cache_dir``. ``plan_cache.PlanCache`` records TensorRT version, GPU name, compute
capability, source ONNX SHA-256, precision and batch sizes per plan, so a stale plan is rebuilt
and a valid one is loaded without rebuilding.

Plans are always built from the fp32 ONNX files: the manifest's "int8" files are ONNX Runtime
dynamic quantisation (MatMulInteger), which TensorRT does not parse. INT8 and FP8 kernels engage
only where the ONNX carries explicit Q/DQ nodes (TensorRT's explicit quantisation); elsewhere
those builds run the FP16 fallback that ``precision_flags`` enables with them.

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
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from vla_inference.runtime.backends import cuda_runtime as cu
from vla_inference.runtime.backends.base import Backend, BackendUnavailableError
from vla_inference.runtime.backends.plan_cache import PlanCache, PlanKey
from vla_inference.spec.engine_spec import ACTION_EXPERT, VISION, EngineSpec, check_inputs
from vla_inference.spec.flow import flow_schedule
from vla_inference.spec.manifest import Manifest, ModelDirError

try:
    import tensorrt as trt
except ImportError as exc:
    trt = None
    _IMPORT_ERROR: Optional[ImportError] = exc
else:
    _IMPORT_ERROR = None

LOG = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int8")
EULER = "euler_step"
EULER_VERSION = "euler-v1"
ADDRESS_ALIGNMENT = 256  # bytes; offsets handed to set_tensor_address keep cudaMalloc's alignment


def precision_flags(
    precision: str, compute_capability: str, fast_fp16: bool, fast_int8: bool
) -> Tuple[List[str], List[str]]:
    """BuilderFlag names to set for ``precision`` on this GPU, and warnings for what it lacks.

    FP16 is the fallback that keeps FP8/INT8 builds fast on layers without quantized kernels.
    BF16 needs compute capability 8.0 (Ampere), FP8 needs 8.9 (Ada/Hopper).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, received {precision!r}")
    major, minor = (int(part) for part in compute_capability.split("."))
    cc = (major, minor)
    flags: List[str] = []
    warnings: List[str] = []

    def want(flag: str, supported: bool, why: str) -> None:
        if supported:
            flags.append(flag)
        else:
            warnings.append(f"{flag} not enabled: {why}")

    fp16_why = f"no fast FP16 on compute capability {compute_capability}"
    if precision == "fp16":
        want("FP16", fast_fp16, fp16_why)
    elif precision == "bf16":
        want("BF16", cc >= (8, 0), f"BF16 needs compute capability >= 8.0, GPU has {compute_capability}")
    elif precision == "fp8":
        want("FP8", cc >= (8, 9), f"FP8 needs compute capability >= 8.9, GPU has {compute_capability}")
        want("FP16", fast_fp16, fp16_why)
    elif precision == "int8":
        want("INT8", fast_int8, f"no fast INT8 on compute capability {compute_capability}")
        want("FP16", fast_fp16, fp16_why)
    return flags, warnings


def _align(nbytes: int) -> int:
    return -(-nbytes // ADDRESS_ALIGNMENT) * ADDRESS_ALIGNMENT


@dataclass
class _Binding:
    name: str
    is_input: bool
    host: cu.PinnedArray
    device: cu.DeviceBuffer


class _ProfileContext:
    """One execution context bound to one optimization profile, with its buffers."""

    def __init__(self, engine: Any, profile: int, shapes: Mapping[str, Tuple[int, ...]], stream: cu.Stream) -> None:
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of device memory?)")
        self.lock = threading.Lock()
        self.bindings: Dict[str, _Binding] = {}
        if engine.num_optimization_profiles > 1:
            self.context.set_optimization_profile_async(profile, stream.address)
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            shape = shapes[name]
            host = cu.PinnedArray(shape, dtype)
            device = cu.DeviceBuffer(host.nbytes)
            if is_input:
                self.context.set_input_shape(name, shape)
            self.context.set_tensor_address(name, device.ptr)
            self.bindings[name] = _Binding(name, is_input, host, device)

    def execute(self, stream: cu.Stream) -> None:
        if not self.context.execute_async_v3(stream.address):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def free(self) -> None:
        for binding in self.bindings.values():
            binding.host.free()
            binding.device.free()
        self.bindings.clear()
        self.context = None


@dataclass
class _PrefixSlot:
    prefix_kv: cu.DeviceBuffer
    prefix_mask: cu.DeviceBuffer
    ready: cu.Event


@dataclass
class DevicePrefix:
    """Stage-1 output left on the GPU, in prefix slot ``slot``."""

    slot: int


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
        ``runtime.sample_views``) are what the engines are built and loaded for; a ``prepare`` with
        other values reloads."""
        if trt is None:
            raise BackendUnavailableError(self.name, "TensorRT's Python bindings (`tensorrt`)", str(_IMPORT_ERROR))
        if cu.CUDART is None:
            raise BackendUnavailableError(self.name, "`cuda-python` (cuda.bindings.runtime)", str(cu.IMPORT_ERROR))
        if device != "cuda":
            raise ValueError(f"device: the tensorrt backend runs on 'cuda', received {device!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, received {precision!r}")
        super().__init__(manifest, precision, source_precision="fp32")
        self.onnx_files = self.engine_files()
        self.cache = PlanCache(Path(engine_cache_dir) if engine_cache_dir else manifest.model_dir / "trt_cache")
        self.device_index = device_index
        self.workspace_bytes = workspace_bytes
        self.num_samples = num_samples
        self.view_rows = view_rows
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._engines: Dict[str, Any] = {}
        self._contexts: Dict[str, Dict[int, _ProfileContext]] = {}
        self._slots: List[_PrefixSlot] = []
        self._streams: Dict[str, cu.Stream] = {}
        self._done: Optional[cu.Event] = None
        self._schedule: Optional[Tuple[cu.PinnedArray, cu.DeviceBuffer]] = None
        self._dt: Optional[Tuple[cu.PinnedArray, cu.DeviceBuffer]] = None
        self._result: Optional[cu.PinnedArray] = None
        self.gpu_name = ""
        self.compute_capability = ""

    @property
    def device(self) -> str:
        return "cuda"

    # -- build / load ---------------------------------------------------------------------------
    def _batch_sizes(self, engine_name: str) -> Tuple[int, ...]:
        if engine_name == VISION:  # one row per camera view of a request (runtime.sample_views)
            return tuple(range(1, self.view_rows + 1))
        return tuple(sorted({1, self.num_samples}))

    def _plan_key(self, engine_name: str, source: str, precision: str, batch_sizes: Tuple[int, ...]) -> PlanKey:
        return PlanKey(
            engine=engine_name,
            precision=precision,
            source_sha256=source,
            tensorrt_version=trt.__version__,
            gpu_name=self.gpu_name,
            compute_capability=self.compute_capability,
            batch_sizes=batch_sizes,
        )

    def _load(self) -> None:
        cu.set_device(self.device_index)
        self.gpu_name, self.compute_capability = cu.device_properties(self.device_index)
        self._streams = {VISION: cu.Stream(high_priority=False), ACTION_EXPERT: cu.Stream(high_priority=True)}
        self._done = cu.Event()
        try:
            runtime = trt.Runtime(self._logger)
            for name, engine_file in self.onnx_files.items():
                key = self._plan_key(name, engine_file.sha256, self.precision, self._batch_sizes(name))
                self._engines[name] = self._load_or_build(runtime, key, lambda: self._build_from_onnx(name, key))
            self._create_contexts(VISION)
            self._create_contexts(ACTION_EXPERT)
            self._setup_denoise(runtime)
        except BaseException:
            self._release()
            raise
        LOG.info("tensorrt %s on %s (sm %s): %s ready", trt.__version__, self.gpu_name, self.compute_capability,
                 self.precision)

    def _load_or_build(self, runtime: Any, key: PlanKey, build: Callable[[], bytes]) -> Any:
        path, reason = self.cache.lookup(key)
        if path is None:
            LOG.info("building TensorRT plan %s: %s", key.entry_name, reason)
            path = self.cache.store(key, build())
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ModelDirError(f"{path}: TensorRT could not deserialize the plan")
        return engine

    def _new_config(self, builder: Any, precision: str) -> Any:
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        flags, warnings = precision_flags(
            precision,
            self.compute_capability,
            bool(getattr(builder, "platform_has_fast_fp16", True)),
            bool(getattr(builder, "platform_has_fast_int8", True)),
        )
        for warning in warnings:
            LOG.warning("%s on %s", warning, self.gpu_name)
        for flag in flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        timing_cache = config.create_timing_cache(self.cache.read_timing_cache())
        if not config.set_timing_cache(timing_cache, False):
            LOG.warning("%s: timing cache rejected (other TensorRT version or GPU), starting a fresh one",
                        self.cache.timing_cache_path)
            config.set_timing_cache(config.create_timing_cache(b""), False)
        return config

    def _serialize(self, builder: Any, network: Any, config: Any, what: str) -> bytes:
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"TensorRT failed to build {what} (see the TensorRT log above)")
        self.cache.write_timing_cache(bytes(config.get_timing_cache().serialize()))
        return bytes(plan)

    @staticmethod
    def _network_flags() -> int:
        if int(trt.__version__.split(".")[0]) >= 10:
            return 0  # explicit batch is the only mode
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)

    def _build_from_onnx(self, engine_name: str, key: PlanKey) -> bytes:
        onnx_path = self.onnx_files[engine_name].path
        spec = self.specs[engine_name]
        builder = trt.Builder(self._logger)
        network = builder.create_network(self._network_flags())
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise ModelDirError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
        config = self._new_config(builder, key.precision)
        for batch in key.batch_sizes:
            profile = builder.create_optimization_profile()
            for i in range(network.num_inputs):
                name = network.get_input(i).name
                shape = spec.input(name).concrete_shape(batch)
                profile.set_shape(name, shape, shape, shape)
            config.add_optimization_profile(profile)
        return self._serialize(builder, network, config, f"{engine_name} from {onnx_path}")

    def _build_euler(self, key: PlanKey) -> bytes:
        """x_next = x + dt * velocity, fp32, static shape [K, H, D]: keeps the Euler update on device."""
        k, h, d = self.num_samples, self.config.action_horizon, self.config.action_dim
        builder = trt.Builder(self._logger)
        network = builder.create_network(self._network_flags())
        x = network.add_input("x", trt.float32, (k, h, d))
        velocity = network.add_input("velocity", trt.float32, (k, h, d))
        dt = network.add_input("dt", trt.float32, (1, 1, 1))
        step = network.add_elementwise(velocity, dt, trt.ElementWiseOperation.PROD).get_output(0)
        x_next = network.add_elementwise(x, step, trt.ElementWiseOperation.SUM).get_output(0)
        x_next.name = "x_next"
        network.mark_output(x_next)
        config = self._new_config(builder, "fp32")
        return self._serialize(builder, network, config, EULER)

    def _create_contexts(self, engine_name: str) -> None:
        spec: EngineSpec = self.specs[engine_name]
        engine = self._engines[engine_name]
        self._contexts[engine_name] = {}
        for profile, batch in enumerate(self._batch_sizes(engine_name)):
            shapes = {t.name: t.concrete_shape(batch) for t in spec.inputs + spec.outputs}
            self._contexts[engine_name][batch] = _ProfileContext(engine, profile, shapes, self._streams[engine_name])

    def _setup_denoise(self, runtime: Any) -> None:
        """Euler engine, prefix slots and the device flow schedule for the current sample batch K."""
        k, h, d = self.num_samples, self.config.action_horizon, self.config.action_dim
        key = self._plan_key(EULER, f"{EULER_VERSION}:{k}x{h}x{d}", "fp32", (k,))
        self._engines[EULER] = self._load_or_build(runtime, key, lambda: self._build_euler(key))
        shapes = {"x": (k, h, d), "velocity": (k, h, d), "dt": (1, 1, 1), "x_next": (k, h, d)}
        self._contexts[EULER] = {k: _ProfileContext(self._engines[EULER], 0, shapes, self._streams[ACTION_EXPERT])}
        self._result = cu.PinnedArray((k, h, d), np.float32)
        dt_host = cu.PinnedArray((1, 1, 1), np.float32)
        self._dt = (dt_host, cu.DeviceBuffer(dt_host.nbytes))

    def prepare(self, num_samples: int, slots: int, view_rows: int = 1) -> None:
        """Allocate ``slots`` prefix buffers of K samples; reloads (building what the plan cache lacks)
        when K or the view rows differ from the profiles the engines were loaded with."""
        if (num_samples, view_rows) != (self.num_samples, self.view_rows) and self.is_loaded:
            LOG.warning("num_samples %d / view rows %d differ from the %d / %d the engines were loaded for: "
                        "reloading", num_samples, view_rows, self.num_samples, self.view_rows)
            self.release()
            self.num_samples, self.view_rows = num_samples, view_rows
            self.load()
        super().prepare(num_samples, slots, view_rows)
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
        ctx = profiles[batch]
        stream = self._streams[engine_name]
        with ctx.lock:
            for name, value in feeds.items():
                binding = ctx.bindings[name]
                np.copyto(binding.host.array, value, casting="same_kind")
                cu.copy_htod(binding.device.ptr, binding.host, stream)
            ctx.execute(stream)
            outputs = [b for b in ctx.bindings.values() if not b.is_input]
            for binding in outputs:
                cu.copy_dtoh(binding.host, binding.device.ptr, stream)
            stream.synchronize()
            return {b.name: b.host.array.copy() for b in outputs}

    # -- pipeline stages ------------------------------------------------------------------------
    def encode_prefix(self, feeds: Mapping[str, np.ndarray], slot: int,
                      sample_rows: Optional[Sequence[int]] = None) -> DevicePrefix:
        views = check_inputs(self.specs[VISION], feeds)
        rows = self.check_sample_rows(feeds, sample_rows)  # at most view_rows: one profile per row count
        ctx = self._contexts[VISION][views]
        stream = self._streams[VISION]
        target = self._slots[slot]
        with ctx.lock:
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
        expert = self._contexts[ACTION_EXPERT][k]
        euler = self._contexts[EULER][k]
        stream = self._streams[ACTION_EXPERT]
        slot = self._slots[prefix.slot]
        schedule_host, schedule_dev, row_bytes = self._schedule_buffers(steps)
        dt_host, dt_dev = self._dt
        with expert.lock:
            stream.wait(slot.ready)
            expert.context.set_tensor_address("prefix_kv", slot.prefix_kv.ptr)
            expert.context.set_tensor_address("prefix_mask", slot.prefix_mask.ptr)
            schedule_host.array[:steps, :k] = times[:, None]
            cu.copy_htod(schedule_dev.ptr, schedule_host, stream, nbytes=steps * row_bytes)
            dt_host.array[...] = dt
            cu.copy_htod(dt_dev.ptr, dt_host, stream)
            x_a = expert.bindings["noisy_actions"]
            np.copyto(x_a.host.array, noise)
            cu.copy_htod(x_a.device.ptr, x_a.host, stream)
            buffers = (x_a.device.ptr, euler.bindings["x_next"].device.ptr)
            velocity = expert.bindings["velocity"].device.ptr
            euler.context.set_tensor_address("velocity", velocity)
            euler.context.set_tensor_address("dt", dt_dev.ptr)
            for i in range(steps):
                current, following = buffers[i % 2], buffers[(i + 1) % 2]
                expert.context.set_tensor_address("noisy_actions", current)
                expert.context.set_tensor_address("time", schedule_dev.ptr + i * row_bytes)
                expert.execute(stream)
                euler.context.set_tensor_address("x", current)
                euler.context.set_tensor_address("x_next", following)
                euler.execute(stream)
            cu.copy_dtoh(self._result, buffers[steps % 2], stream)
            self._done.record(stream)
            self._done.synchronize()
            self._restore_expert_addresses(expert)
            return self._result.array.copy()

    @staticmethod
    def _restore_expert_addresses(expert: _ProfileContext) -> None:
        """Point the batch-K context back at its own buffers, for direct ``infer`` calls."""
        for name, binding in expert.bindings.items():
            expert.context.set_tensor_address(name, binding.device.ptr)

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
        for pair in (self._schedule, self._dt):
            if pair is not None:
                pair[0].free()
                pair[1].free()
        self._schedule = self._dt = None
        if self._result is not None:
            self._result.free()
            self._result = None
        if self._done is not None:
            self._done.destroy()
            self._done = None
        for stream in self._streams.values():
            stream.destroy()
        self._streams = {}

    def describe(self) -> Dict[str, Any]:
        info = super().describe()
        info.update(tensorrt=trt.__version__, gpu=self.gpu_name, compute_capability=self.compute_capability,
                    engine_cache_dir=str(self.cache.cache_dir))
        return info

