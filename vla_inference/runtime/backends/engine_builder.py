"""Engines built once: which ONNX a precision is built from, the plans a configuration needs, and
build-or-load through the plan cache, in plain Python.

TensorRT does not run on a machine without an NVIDIA GPU, so everything that decides *what* is
built and *whether* to build lives here and is tested everywhere:

* ``build_recipe``: the manifest files and the network mode for a precision. INT8 and FP8 come only
  from explicit Q/DQ graphs, built as a strongly typed network (each tensor has the graph's type), and
  are refused at configure time when the manifest has none (``MissingQdqEngineError``), as FP8 is on
  a GPU below compute capability 8.9. FP16/BF16 build the fp32 graph with TensorRT 10's weakly typed
  precision flags (deprecated in 10.12, removed in 11, where they are refused). So no plan is an FP16
  engine under another name.
* ``plan_requests``: one request per engine with the optimization profiles the served K samples and
  view rows need. The backend's configure and ``vla-build-engines`` ask through this one function, so
  they name the same plans.
* ``get_or_build``: looks the plan up under the cache lock, builds it on a miss, records the build's
  report (time, layers per precision, memory); a second call, or a second process, loads it.

``PlanBuilder`` is the small interface between that logic and a runtime: ``target`` (what plans are
built for) and ``build(request, cache)``. ``TensorRTPlanBuilder`` (``tensorrt_backend``) serves a
Jetson. ``OnnxRuntimePlanBuilder`` below is its documented second implementation: its plan is ONNX
Runtime's offline-optimized graph for this CPU (``ORT_ENABLE_ALL`` fusions, which, like a TensorRT
plan, hold only for that runtime version and CPU), and it reports which nodes run integer kernels.
``vla-build-engines --builder onnxruntime`` uses it to show a Q/DQ model's integer coverage without a
GPU, and the cache logic runs on real files with it where TensorRT does not install.
"""
from __future__ import annotations

import json
import logging
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Protocol, Tuple

from vla_inference.runtime.backends.plan_cache import CachedPlan, PlanCache, PlanKey, Profile
from vla_inference.spec.engine_spec import ACTION_EXPERT, ENGINES, VISION
from vla_inference.spec.manifest import QDQ_TYPES, Manifest

LOG = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int8")
QDQ_PRECISIONS = tuple(QDQ_TYPES)
WEAK_FLAGS = {"fp16": ("FP16",), "bf16": ("BF16",)}  # TensorRT 10.x BuilderFlag names
MIN_COMPUTE_CAPABILITY = {"bf16": (8, 0), "fp8": (8, 9)}
WEAK_TYPING_DEPRECATED = (10, 12)
WEAK_TYPING_REMOVED = (11, 0)
RECIPE_VERSION = "plan-recipe-2"  # bump when a change in how plans are built must invalidate cached ones
TENSORRT = "tensorrt"
ONNXRUNTIME = "onnxruntime"


class PrecisionUnavailableError(ValueError):
    """A precision this model directory, runtime or GPU cannot serve as what it claims to be."""


class MissingQdqEngineError(PrecisionUnavailableError):
    """INT8/FP8 asked for, but the manifest has no explicit Q/DQ engines of that type."""


def parse_version(text: str) -> Tuple[int, ...]:
    """``"10.3.0.30"`` -> (10, 3, 0, 30); stops at the first non-numeric part (``"11.0.0rc1"`` -> (11, 0))."""
    parts = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def _capability(text: str) -> Tuple[int, int]:
    major, minor = (int(p) for p in text.split("."))
    return major, minor


@dataclass(frozen=True)
class Target:
    """What plans are built for; every field is part of the plan key."""

    runtime: str  # TENSORRT or ONNXRUNTIME
    runtime_version: str
    device_name: str
    compute_capability: str  # "major.minor" of a GPU; the CPU's ISA level for ONNX Runtime


@dataclass(frozen=True)
class BuildRecipe:
    """How ``precision`` is built: from which manifest entry's ONNX files, in which network mode."""

    precision: str
    source_precision: str
    strongly_typed: bool
    builder_flags: Tuple[str, ...] = ()

    @property
    def tag(self) -> str:
        mode = "strong" if self.strongly_typed else "weak+" + "+".join(self.builder_flags)
        return f"{RECIPE_VERSION}:{mode}"


def require_qdq(manifest: Manifest, precision: str) -> None:
    """Refuse INT8/FP8 unless the manifest lists explicit Q/DQ engines of that type for it."""
    if precision in QDQ_PRECISIONS and not manifest.qdq_precision(precision):
        raise MissingQdqEngineError(
            f"precision {precision!r}: {manifest.model_dir / 'manifest.json'} has no {precision.upper()} Q/DQ engine "
            f"(a 'quantization': {{'format': 'qdq', 'type': '{QDQ_TYPES[precision]}'}} record for both engines; it "
            f"lists {list(manifest.precisions)}). TensorRT runs {precision.upper()} only where the ONNX graph carries "
            f"Q/DQ nodes; write them with `python -m vla_inference.lab.quant_gate --model-dir DIR --write` or "
            f"serve fp16")


def build_recipe(manifest: Manifest, precision: str, target: Target) -> BuildRecipe:
    """The honest way to build ``precision`` for ``target``, or ``PrecisionUnavailableError`` saying why not."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, received {precision!r}")
    require_qdq(manifest, precision)
    if target.runtime == ONNXRUNTIME:
        if precision not in manifest.precisions:
            raise PrecisionUnavailableError(
                f"precision {precision!r}: the onnxruntime builder optimizes the manifest's own graphs "
                f"({list(manifest.precisions)}); fp16/bf16 are TensorRT build modes")
        return BuildRecipe(precision, precision, strongly_typed=True)
    minimum = MIN_COMPUTE_CAPABILITY.get(precision)
    if minimum is not None and _capability(target.compute_capability) < minimum:
        raise PrecisionUnavailableError(
            f"precision {precision!r} needs compute capability >= {minimum[0]}.{minimum[1]}; "
            f"{target.device_name} has {target.compute_capability}")
    if precision in QDQ_PRECISIONS:
        return BuildRecipe(precision, precision, strongly_typed=True)
    if precision == "fp32":
        return BuildRecipe("fp32", "fp32", strongly_typed=True)
    version = parse_version(target.runtime_version)
    if version >= WEAK_TYPING_REMOVED:
        raise PrecisionUnavailableError(
            f"precision {precision!r}: TensorRT {target.runtime_version} builds strongly typed networks only, and "
            f"the manifest has no {precision} ONNX graph (export one with ModelOpt AutoCast) ; serve fp32 or int8")
    if version >= WEAK_TYPING_DEPRECATED:
        LOG.warning("precision %s: TensorRT %s deprecates the weakly typed %s flag used to build it from fp32",
                    precision, target.runtime_version, WEAK_FLAGS[precision][0])
    return BuildRecipe(precision, "fp32", strongly_typed=False, builder_flags=WEAK_FLAGS[precision])


@dataclass(frozen=True)
class BuildRequest:
    """One plan to build: an engine's ONNX file (None: a network built in code) and its profiles."""

    engine: str
    onnx_path: Optional[Path]
    source_sha256: str
    engine_version: str
    recipe: BuildRecipe
    profiles: Tuple[Profile, ...]
    workspace_bytes: int

    def key(self, target: Target) -> PlanKey:
        return PlanKey(engine=self.engine, precision=self.recipe.precision, source_sha256=self.source_sha256,
                       engine_version=self.engine_version, runtime=target.runtime,
                       runtime_version=target.runtime_version, device_name=target.device_name,
                       compute_capability=target.compute_capability, profiles=self.profiles,
                       workspace_bytes=self.workspace_bytes, recipe=self.recipe.tag)


def profile_batches(engine: str, num_samples: int, view_rows: int) -> Tuple[int, ...]:
    """Batch sizes with a profile: the vision engine runs one row per camera view of a request
    (``runtime.sample_views``: 1..view_rows), the expert K samples, or 1 for a direct call."""
    if num_samples < 1 or view_rows < 1:
        raise ValueError(f"num_samples and view_rows must be >= 1, received {num_samples}, {view_rows}")
    if engine == VISION:
        return tuple(range(1, view_rows + 1))
    return tuple(sorted({1, num_samples}))


def plan_requests(manifest: Manifest, recipe: BuildRecipe, num_samples: int, view_rows: int,
                  workspace_bytes: int) -> List[BuildRequest]:
    """The two engines' plans for serving K = ``num_samples`` with ``view_rows`` view rows."""
    specs = {name: manifest.engine(recipe.source_precision, name) for name in ENGINES}
    requests = []
    for name in (VISION, ACTION_EXPERT):
        source = specs[name]
        profiles = tuple(tuple((t.name, tuple(t.concrete_shape(batch))) for t in source.spec.inputs)
                         for batch in profile_batches(name, num_samples, view_rows))
        requests.append(BuildRequest(name, source.path, source.sha256, source.version, recipe, profiles,
                                     workspace_bytes))
    return requests


@dataclass(frozen=True)
class BuiltPlan:
    """A serialized plan and what its build reports."""

    plan: bytes
    layers: Mapping[str, int]  # layers (TensorRT) or nodes (ONNX Runtime) per precision
    device_memory_bytes: int  # activation memory of the largest profile; 0 where the runtime has no such figure


class PlanBuilder(Protocol):
    """The runtime side of plan building: ``TensorRTPlanBuilder`` or ``OnnxRuntimePlanBuilder``."""

    @property
    def target(self) -> Target: ...

    def build(self, request: BuildRequest, cache: PlanCache) -> BuiltPlan: ...


def get_or_build(cache: PlanCache, target: Target, request: BuildRequest, build: Callable[[], BuiltPlan]) -> CachedPlan:
    """The cached plan for ``request`` on ``target``, built (once, under the cache lock) when missing or stale."""
    key = request.key(target)
    with cache.locked():
        path, reason = cache.lookup(key)
        if path is not None:
            LOG.info("plan %s: cached, for engine %s", path.name, request.engine_version)
            return CachedPlan(key, path, cache.record(key), built_now=False)
        LOG.info("building %s %s plan for %s on %s: %s", request.engine, key.precision, request.engine_version,
                 target.device_name, reason)
        started = time.perf_counter()
        built = build()
        report = {"engine_version": request.engine_version, "build_seconds": round(time.perf_counter() - started, 3),
                  "layers": dict(built.layers), "device_memory_bytes": built.device_memory_bytes,
                  "workspace_bytes": request.workspace_bytes}
        path = cache.store(key, built.plan, report)
    LOG.info("plan %s: built in %.1f s", path.name, report["build_seconds"])
    return CachedPlan(key, path, cache.record(key), built_now=True)


def plan_for(cache: PlanCache, builder: PlanBuilder, request: BuildRequest) -> CachedPlan:
    return get_or_build(cache, builder.target, request, lambda: builder.build(request, cache))


# -- TensorRT's engine inspector, read without TensorRT ------------------------------------------
_PRECISION_ORDER = ("int8", "fp8", "fp16", "bf16", "fp32")
_DATATYPE_WORDS = (("int8", "int8"), ("fp8", "fp8"), ("e4m3", "fp8"), ("bf16", "bf16"), ("bfloat", "bf16"),
                   ("fp16", "fp16"), ("half", "fp16"), ("fp32", "fp32"), ("float", "fp32"))


def _datatype(text: str) -> Optional[str]:
    lowered = text.lower()
    return next((precision for word, precision in _DATATYPE_WORDS if word in lowered), None)


def layer_precisions(engine_information: str) -> Dict[str, int]:
    """Layers per precision from ``IEngineInspector.get_engine_information(JSON)`` of a plan built with
    detailed profiling verbosity: each layer counts at the narrowest float/quantized type among its
    inputs (a fused INT8 GEMM reads int8), "other" when it reads only integer or boolean tensors.
    Empty when the plan carries no per-layer detail."""
    data = json.loads(engine_information)
    counts: Dict[str, int] = {}
    for layer in data.get("Layers", []) if isinstance(data, dict) else []:
        if not isinstance(layer, dict):
            return {}  # layer names only: the plan was built without detailed verbosity
        found = {_datatype(str(t.get("Format/Datatype", ""))) for t in layer.get("Inputs", []) if isinstance(t, dict)}
        precision = next((p for p in _PRECISION_ORDER if p in found), "other")
        counts[precision] = counts.get(precision, 0) + 1
    return counts


# -- ONNX Runtime: the second PlanBuilder ---------------------------------------------------------
INTEGER_OPS = frozenset({"MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "QLinearConv", "ConvInteger",
                         "DynamicQuantizeMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QAttention"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def _cpu_target_fields() -> Tuple[str, str]:
    """(CPU model name, ISA level): the optimized graph's NCHWc and GEMM choices depend on both."""
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and not name:
                name = value
            elif key in ("flags", "Features") and not flags:  # x86, Arm
                flags = set(value.split())
    except OSError:
        pass
    isa = next((f for f in ("avx512_vnni", "avx512f", "avx_vnni", "avx2", "asimddp", "asimd") if f in flags),
               platform.machine())
    return name or platform.processor() or platform.machine(), isa


class OnnxRuntimePlanBuilder:
    """``PlanBuilder`` over ONNX Runtime on the CPU: the plan is the session's offline-optimized graph."""

    def __init__(self) -> None:
        import onnxruntime as ort

        self._ort = ort
        name, isa = _cpu_target_fields()
        self._target = Target(ONNXRUNTIME, ort.__version__, name, isa)

    @property
    def target(self) -> Target:
        return self._target

    def build(self, request: BuildRequest, cache: PlanCache) -> BuiltPlan:
        """Optimize ``request.onnx_path`` as a CPU session would; count its nodes by kernel type."""
        import onnx

        if request.onnx_path is None:
            raise ValueError(f"{request.engine}: the onnxruntime builder optimizes ONNX files only")
        with tempfile.TemporaryDirectory(prefix="vla-ort-plan-") as tmp:
            out = Path(tmp) / "optimized.onnx"
            options = self._ort.SessionOptions()
            level = "ORT_ENABLE_BASIC" if request.recipe.precision == "fp8" else "ORT_ENABLE_ALL"  # as the backend
            options.graph_optimization_level = getattr(self._ort.GraphOptimizationLevel, level)
            options.optimized_model_filepath = str(out)
            options.log_severity_level = 3
            if request.recipe.precision in QDQ_PRECISIONS:  # as the onnxruntime backend loads Q/DQ graphs
                from vla_inference.runtime.backends.onnxruntime_backend import QDQ_SESSION_CONFIG

                options.add_session_config_entry(*QDQ_SESSION_CONFIG)
            self._ort.InferenceSession(str(request.onnx_path), options, providers=["CPUExecutionProvider"])
            plan = out.read_bytes()
        layers: Dict[str, int] = {}
        for node in onnx.load_from_string(plan).graph.node:
            kind = "int8" if node.op_type in INTEGER_OPS else "q/dq" if node.op_type in QDQ_OPS else "fp32/other"
            layers[kind] = layers.get(kind, 0) + 1
        return BuiltPlan(plan, layers, device_memory_bytes=0)
