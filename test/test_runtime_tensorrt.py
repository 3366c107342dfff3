"""TensorRT backend: what gets built and whether (precision recipes and their refusals, plan keys, the
cache, build-once) everywhere, through ``engine_builder`` and its ONNX Runtime ``PlanBuilder``; engines
where TensorRT imports.

The TensorRT tests at the end need a GPU with TensorRT >= 10.1 and cuda-python; on a Jetson, inside
the container of ``docs/jetson.md``: ``python3 -m pytest -q test/test_runtime_tensorrt.py``.
"""
from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from test_runtime_support import copy_fp32_engines, observations, runtime_model_dir

from vla_inference.runtime.backends import create_backend
from vla_inference.runtime.backends.engine_builder import (
    ONNXRUNTIME,
    TENSORRT,
    BuildRecipe,
    BuiltPlan,
    MissingQdqEngineError,
    OnnxRuntimePlanBuilder,
    PrecisionUnavailableError,
    Target,
    build_recipe,
    get_or_build,
    layer_precisions,
    parse_version,
    plan_for,
    plan_requests,
)
from vla_inference.runtime.backends.plan_cache import PlanCache, PlanKey, default_cache_dir
from vla_inference.spec.engine_spec import ACTION_EXPERT, VISION
from vla_inference.spec.manifest import Manifest, load_manifest, write_manifest
from vla_inference.spec.observation import vision_feeds

ORIN = Target(TENSORRT, "10.3.0.30", "Orin", "8.7")
THOR = Target(TENSORRT, "10.13.3", "NVIDIA Thor", "11.0")
TRT11_HOPPER = Target(TENSORRT, "11.0.0", "NVIDIA H100 80GB HBM3", "9.0")

KEY = PlanKey(
    engine="vision",
    precision="fp16",
    source_sha256="ab" * 32,
    engine_version="tiny/vision/fp32@abababababab",
    runtime=TENSORRT,
    runtime_version="10.3.0",
    device_name="Orin",
    compute_capability="8.7",
    profiles=((("images", (1, 3, 3, 224, 224)),),),
    workspace_bytes=1 << 30,
    recipe="plan-recipe-2:weak+FP16",
)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return load_manifest(runtime_model_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def fp32_only(manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """The model directory with its fp32 engines only: no Q/DQ engine to build INT8/FP8 from."""
    out = tmp_path_factory.mktemp("fp32_only")
    write_manifest(out, manifest.config, {"fp32": copy_fp32_engines(manifest, out)})
    return load_manifest(out)


# -- the plan cache --------------------------------------------------------------------------------

def test_unknown_plan_is_built_and_a_stored_one_is_reused(tmp_path: Path) -> None:
    cache = PlanCache(tmp_path / "trt")
    path, reason = cache.lookup(KEY)
    assert path is None and "no plan recorded" in reason
    stored = cache.store(KEY, b"plan-bytes", {"build_seconds": 1.5})
    assert stored.read_bytes() == b"plan-bytes" and stored.name == f"vision.fp16.{KEY.digest[:16]}.plan"
    assert cache.lookup(KEY) == (stored, "valid")
    assert PlanCache(tmp_path / "trt").lookup(KEY) == (stored, "valid"), "the record survives a restart"
    assert cache.record(KEY)["build_seconds"] == 1.5 and cache.record(KEY)["plan_bytes"] == len(b"plan-bytes")


@pytest.mark.parametrize(
    "field, value",
    [
        ("runtime_version", "10.4.0"),
        ("device_name", "NVIDIA H100 80GB HBM3"),
        ("compute_capability", "9.0"),
        ("source_sha256", "cd" * 32),
        ("engine_version", "tiny/vision/fp32@cdcdcdcdcdcd"),
        ("profiles", ((("images", (1, 3, 3, 224, 224)),), (("images", (2, 3, 3, 224, 224)),))),
        ("workspace_bytes", 2 << 30),
        ("recipe", "plan-recipe-3:weak+FP16"),
    ],
)
def test_any_changed_field_names_a_new_plan_and_says_why(tmp_path: Path, field: str, value: object) -> None:
    cache = PlanCache(tmp_path)
    old = cache.store(KEY, b"plan-bytes")
    changed = dataclasses.replace(KEY, **{field: value})
    path, reason = cache.lookup(changed)
    assert path is None and reason.startswith(f"{field} changed")
    new = cache.store(changed, b"other-plan")
    assert new != old and cache.lookup(KEY) == (old, "valid"), "plans for other keys sit side by side"


def test_precisions_are_cached_side_by_side(tmp_path: Path) -> None:
    cache = PlanCache(tmp_path)
    fp16 = cache.store(KEY, b"fp16-plan")
    int8_key = dataclasses.replace(KEY, precision="int8", recipe="plan-recipe-2:strong")
    assert cache.lookup(int8_key) == (None, "no plan recorded for vision.int8")
    int8 = cache.store(int8_key, b"int8-plan")
    assert fp16 != int8 and int8.name.startswith("vision.int8.")
    assert cache.lookup(KEY) == (fp16, "valid") and cache.lookup(int8_key) == (int8, "valid")


def test_corrupt_missing_or_unreadable_records_force_a_rebuild(tmp_path: Path) -> None:
    cache = PlanCache(tmp_path)
    path = cache.store(KEY, b"plan-bytes")
    path.write_bytes(b"plan-bytez")
    assert "SHA-256" in cache.lookup(KEY)[1]
    path.unlink()
    assert "missing" in cache.lookup(KEY)[1]
    cache.store(KEY, b"plan-bytes")
    cache.manifest_path.write_text("{ truncated")
    assert cache.lookup(KEY)[0] is None
    cache.store(KEY, b"plan-bytes")
    record = json.loads(cache.manifest_path.read_text())
    record["format_version"] = 99
    cache.manifest_path.write_text(json.dumps(record))
    assert cache.lookup(KEY)[0] is None


def test_timing_cache_round_trip(tmp_path: Path) -> None:
    cache = PlanCache(tmp_path / "new")
    assert cache.read_timing_cache() == b""
    cache.write_timing_cache(b"\x01\x02")
    assert cache.read_timing_cache() == b"\x01\x02"


def test_the_default_cache_is_a_writable_user_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ROS_HOME", str(tmp_path / "ros"))
    assert default_cache_dir() == tmp_path / "ros" / "vla_inference" / "engines"
    monkeypatch.delenv("ROS_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "vla_inference" / "engines"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "vla_inference" / "engines"
    assert PlanCache().cache_dir == default_cache_dir()


# -- honest precisions -----------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_int8_and_fp8_are_refused_without_a_qdq_engine(fp32_only: Manifest, precision: str) -> None:
    with pytest.raises(MissingQdqEngineError, match=rf"no {precision.upper()} Q/DQ engine") as error:
        build_recipe(fp32_only, precision, THOR)
    assert isinstance(error.value, ValueError) and "manifest.json" in str(error.value)


def test_the_tensorrt_backend_refuses_int8_at_configure_without_tensorrt(fp32_only: Manifest) -> None:
    """The refusal comes before TensorRT is looked for: it is a configuration error wherever it is made."""
    with pytest.raises(MissingQdqEngineError, match="no INT8 Q/DQ engine"):
        create_backend("tensorrt", fp32_only, precision="int8", num_samples=4, view_rows=2)


def test_fp8_needs_compute_capability_8_9(manifest: Manifest) -> None:
    if not manifest.qdq_precision("fp8"):
        with pytest.raises(MissingQdqEngineError):
            build_recipe(manifest, "fp8", ORIN)
        return
    with pytest.raises(PrecisionUnavailableError, match="8.9; Orin has 8.7"):
        build_recipe(manifest, "fp8", ORIN)
    assert build_recipe(manifest, "fp8", THOR) == BuildRecipe("fp8", "fp8", strongly_typed=True)


def test_int8_builds_strongly_typed_from_the_qdq_engines(manifest: Manifest) -> None:
    if not manifest.qdq_precision("int8"):
        pytest.skip(f"{manifest.model_dir} has no INT8 Q/DQ engines")
    recipe = build_recipe(manifest, "int8", ORIN)
    assert recipe == BuildRecipe("int8", "int8", strongly_typed=True)
    requests = plan_requests(manifest, recipe, 4, 2, 1 << 30)
    assert [r.onnx_path for r in requests] == [manifest.engine("int8", n).path for n in (VISION, ACTION_EXPERT)]
    assert requests[0].key(ORIN).source_sha256 != plan_requests(
        manifest, build_recipe(manifest, "fp16", ORIN), 4, 2, 1 << 30)[0].key(ORIN).source_sha256


def test_fp16_and_bf16_are_weakly_typed_builds_of_fp32_on_tensorrt_10_only(manifest: Manifest) -> None:
    assert build_recipe(manifest, "fp16", ORIN) == BuildRecipe("fp16", "fp32", False, ("FP16",))
    assert build_recipe(manifest, "bf16", ORIN) == BuildRecipe("bf16", "fp32", False, ("BF16",))
    assert build_recipe(manifest, "fp32", TRT11_HOPPER) == BuildRecipe("fp32", "fp32", strongly_typed=True)
    with pytest.raises(PrecisionUnavailableError, match="strongly typed networks only"):
        build_recipe(manifest, "fp16", TRT11_HOPPER)
    with pytest.raises(PrecisionUnavailableError, match="needs compute capability >= 8.0"):
        build_recipe(manifest, "bf16", dataclasses.replace(ORIN, compute_capability="7.2"))
    with pytest.raises(ValueError, match="precision"):
        build_recipe(manifest, "fp4", ORIN)


def test_versions_parse_as_tensorrt_writes_them() -> None:
    assert parse_version("10.3.0.30") == (10, 3, 0, 30)
    assert parse_version("11.0.0rc1") == (11, 0)
    assert parse_version("10.12.0") >= (10, 12) > parse_version("10.3.0")


def test_plan_requests_follow_k_and_view_rows(manifest: Manifest) -> None:
    recipe = build_recipe(manifest, "fp16", ORIN)
    k4, k8, noise = (plan_requests(manifest, recipe, k, rows, 1 << 30) for k, rows in ((4, 2), (8, 2), (4, 1)))
    batches = [[profile[0][1][0] for profile in r.profiles] for r in k4]
    assert batches == [[1, 2], [1, 4]]  # vision: one profile per view-row count; expert: direct calls and K
    assert k4[0].key(ORIN) == k8[0].key(ORIN) and k4[1].key(ORIN) != k8[1].key(ORIN)
    assert noise[0].key(ORIN) != k4[0].key(ORIN) and noise[1].key(ORIN) == k4[1].key(ORIN)
    assert k4[0].engine_version == manifest.engine("fp32", VISION).version


def test_layers_per_precision_come_from_the_engine_inspector() -> None:
    """The JSON ``IEngineInspector.get_engine_information`` writes for a detailed-verbosity plan."""
    def layer(*datatypes: str) -> dict:
        return {"Name": "x", "LayerType": "CaskGemm", "Inputs": [{"Format/Datatype": d} for d in datatypes]}

    info = {"Layers": [layer("Int8", "Int8"), layer("Row major linear FP16 format"), layer("Half"),
                       layer("Row major linear FP32"), layer("Float", "Int8"), layer("Int32"),
                       layer("Row major linear FP8 format"), layer("BF16"), layer("BFloat16")]}
    assert layer_precisions(json.dumps(info)) == {"int8": 2, "fp16": 2, "fp32": 1, "other": 1, "fp8": 1, "bf16": 2}
    assert layer_precisions(json.dumps({"Layers": ["conv1", "gemm2"]})) == {}, "no detail: nothing to judge by"


# -- build once: the cache logic on real files, through the ONNX Runtime PlanBuilder -----------

def _session_outputs(model: bytes, feeds: dict) -> list:
    import onnxruntime as ort

    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_plans_are_built_once_then_loaded_and_run(manifest: Manifest, tmp_path: Path) -> None:
    builder = OnnxRuntimePlanBuilder()
    assert builder.target.runtime == ONNXRUNTIME and builder.target.device_name
    cache = PlanCache(tmp_path / "engines")
    recipe = build_recipe(manifest, "fp32", builder.target)
    requests = plan_requests(manifest, recipe, 4, 2, 0)
    first = [plan_for(cache, builder, r) for r in requests]
    assert [p.built_now for p in first] == [True, True]
    stamps = {p.path: p.path.stat().st_mtime_ns for p in first}
    again = [plan_for(PlanCache(tmp_path / "engines"), OnnxRuntimePlanBuilder(), r) for r in requests]
    assert [p.built_now for p in again] == [False, False] and [p.path for p in again] == list(stamps)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "a valid plan was rebuilt"
    k8 = [plan_for(cache, builder, r) for r in plan_requests(manifest, recipe, 8, 2, 0)]
    assert [p.built_now for p in k8] == [False, True], "only the expert's profiles depend on K"
    assert len(list(cache.cache_dir.glob("*.plan"))) == 3
    assert first[0].record["layers"]["fp32/other"] > 0 and first[0].record["engine_version"] == requests[0].engine_version
    cfg = manifest.config
    feeds = vision_feeds(observations(cfg, 1), cfg)
    planned = _session_outputs(first[0].path.read_bytes(), feeds)
    source = _session_outputs(manifest.engine("fp32", VISION).path.read_bytes(), feeds)
    np.testing.assert_allclose(planned[0], source[0], atol=1e-4)


def test_concurrent_configures_build_a_plan_once(manifest: Manifest, tmp_path: Path) -> None:
    builder = OnnxRuntimePlanBuilder()
    request = plan_requests(manifest, build_recipe(manifest, "fp32", builder.target), 4, 2, 0)[1]
    builds = []

    def build() -> BuiltPlan:
        builds.append(threading.get_ident())
        return builder.build(request, PlanCache(tmp_path))

    results = []
    threads = [threading.Thread(target=lambda: results.append(get_or_build(PlanCache(tmp_path), builder.target,
                                                                           request, build))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and sorted(r.built_now for r in results) == [False, False, True]


def test_a_cache_without_a_usable_lock_file_still_serves_its_plans(manifest: Manifest, tmp_path: Path) -> None:
    """Plans built into a read-only image: no lock can be taken there (here: the lock path is a directory)."""
    request = plan_requests(manifest, build_recipe(manifest, "fp16", ORIN), 4, 2, 1 << 30)[0]
    cache = PlanCache(tmp_path)
    stored = cache.store(request.key(ORIN), b"plan-bytes")
    (tmp_path / ".lock").mkdir()

    def no_build() -> BuiltPlan:
        raise AssertionError("a valid plan was rebuilt")

    found = get_or_build(cache, ORIN, request, no_build)
    assert found.path == stored and not found.built_now


def test_a_failed_build_caches_nothing(manifest: Manifest, tmp_path: Path) -> None:
    request = plan_requests(manifest, build_recipe(manifest, "fp16", ORIN), 4, 2, 1 << 30)[0]

    def refuse() -> BuiltPlan:
        raise RuntimeError("TensorRT built no int8 layer")

    cache = PlanCache(tmp_path)
    with pytest.raises(RuntimeError, match="no int8 layer"):
        get_or_build(cache, ORIN, request, refuse)
    assert cache.lookup(request.key(ORIN))[0] is None and not list(tmp_path.glob("*.plan"))


def test_the_onnxruntime_plan_of_a_qdq_engine_runs_integer_kernels(manifest: Manifest, tmp_path: Path) -> None:
    if not manifest.qdq_precision("int8"):
        pytest.skip(f"{manifest.model_dir} has no INT8 Q/DQ engines")
    builder = OnnxRuntimePlanBuilder()
    request = plan_requests(manifest, build_recipe(manifest, "int8", builder.target), 4, 2, 0)[1]
    layers = plan_for(PlanCache(tmp_path), builder, request).record["layers"]
    quantized = manifest.engine("int8", ACTION_EXPERT).quantization["quantized_nodes"][ACTION_EXPERT]
    assert layers["int8"] == quantized, f"every quantized expert product runs an integer kernel: {layers}"


def test_vla_build_engines_builds_then_finds_and_refuses_what_it_cannot_build(
        manifest: Manifest, fp32_only: Manifest, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vla_inference.lab.build_engines import main

    args = ["--builder", "onnxruntime", "--precision", "fp32", "--cache-dir", str(tmp_path),
            "--model-dir", str(manifest.model_dir), "--num-samples", "4", "--confidence-views", "noise"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "(K=4, view rows 1)" in first and first.count(" built ") == 2 and "fp32/other" in first
    assert main(args) == 0
    assert capsys.readouterr().out.count(" cached ") == 2
    assert main(["--builder", "onnxruntime", "--precision", "int8", "--model-dir", str(fp32_only.model_dir),
                 "--cache-dir", str(tmp_path)]) == 2
    assert "no INT8 Q/DQ engine" in capsys.readouterr().err


# -- where TensorRT imports (Jetson / GPU hosts with NVIDIA's wheels) -------------------------------

def _tensorrt_or_skip() -> None:
    pytest.importorskip("tensorrt", reason="TensorRT's Python bindings do not install here (JetPack / NVIDIA index)")
    pytest.importorskip("cuda.bindings.runtime", reason="the TensorRT backend needs cuda-python")


def test_tensorrt_builds_once_then_loads_and_matches_onnxruntime(manifest: Manifest, tmp_path: Path) -> None:
    _tensorrt_or_skip()
    from vla_inference.runtime.pipeline import InferencePipeline

    cache_dir = tmp_path / "engines"
    obs = observations(manifest.config, 1)[0]
    with InferencePipeline(create_backend("onnxruntime", manifest), pipelining=False, owns_backend=True) as ort:
        reference = ort.infer(obs, steps=10, seed=2).samples

    def serve() -> np.ndarray:
        backend = create_backend("tensorrt", manifest, precision="fp32", engine_cache_dir=cache_dir, num_samples=4,
                                 view_rows=2)
        with InferencePipeline(backend, num_samples=4, owns_backend=True) as pipeline:  # stage threads enqueue
            return pipeline.infer(obs, steps=10, seed=2).samples

    first = serve()
    plans = {p.name: p.stat().st_mtime_ns for p in cache_dir.glob("*.plan")}
    assert len(plans) == 3  # vision, action_expert, euler_step
    second = serve()
    assert {p.name: p.stat().st_mtime_ns for p in cache_dir.glob("*.plan")} == plans, "valid plans were rebuilt"
    np.testing.assert_array_equal(first, second)
    assert np.abs(first - reference).max() < 1e-2


def test_tensorrt_int8_runs_int8_layers(manifest: Manifest, tmp_path: Path) -> None:
    _tensorrt_or_skip()
    if not manifest.qdq_precision("int8"):
        pytest.skip(f"{manifest.model_dir} has no INT8 Q/DQ engines")
    backend = create_backend("tensorrt", manifest, precision="int8", engine_cache_dir=tmp_path, num_samples=4,
                             view_rows=2)
    plans = backend.build_plans()
    for plan in plans[:2]:
        assert plan.record["layers"].get("int8", 0) > 0, f"{plan.path.name}: {plan.record['layers']}"


def test_cuda_runtime_wrappers_round_trip() -> None:
    """Streams of two priorities, an event between them, pinned and device buffers, all three copy kinds."""
    runtime = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed here")
    from vla_inference.runtime.backends import cuda_runtime as cu

    error, count = runtime.cudaGetDeviceCount()
    if error != runtime.cudaError_t.cudaSuccess or count == 0:
        pytest.skip("no CUDA device visible")
    cu.set_device(0)
    name, capability = cu.device_properties(0)
    assert name and capability.count(".") == 1
    low, high = cu.Stream(), cu.Stream(high_priority=True)
    assert high.priority <= low.priority  # numerically lower = higher priority
    source, result = cu.PinnedArray((3, 5), np.float32), cu.PinnedArray((3, 5), np.float32)
    source.array[...] = np.arange(15, dtype=np.float32).reshape(3, 5)
    first, second = cu.DeviceBuffer(source.nbytes), cu.DeviceBuffer(source.nbytes)
    ready = cu.Event()  # blocking sync
    cu.copy_htod(first.ptr, source, low)
    ready.record(low)
    high.wait(ready)
    cu.copy_dtod(second.ptr, first.ptr, source.nbytes, high)
    cu.copy_dtoh(result, second.ptr, high)
    high.synchronize()
    np.testing.assert_array_equal(result.array, source.array)
    for resource in (source, result, first, second, ready, low, high):
        (resource.destroy if hasattr(resource, "destroy") else resource.free)()
