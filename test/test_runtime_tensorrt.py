"""TensorRT backend: the plan-cache staleness logic and build flags everywhere; engines where TensorRT imports."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from vla_inference.runtime.backends.plan_cache import PlanCache, PlanKey
from vla_inference.runtime.backends.tensorrt_backend import precision_flags

KEY = PlanKey(
    engine="vision",
    precision="fp16",
    source_sha256="ab" * 32,
    tensorrt_version="10.3.0",
    gpu_name="Orin",
    compute_capability="8.7",
    batch_sizes=(1,),
)


def test_unknown_plan_is_built_and_a_stored_one_is_reused(tmp_path: Path) -> None:
    cache = PlanCache(tmp_path / "trt")
    path, reason = cache.lookup(KEY)
    assert path is None and "no plan recorded" in reason
    stored = cache.store(KEY, b"plan-bytes")
    assert stored.read_bytes() == b"plan-bytes"
    assert cache.lookup(KEY) == (stored, "valid")
    assert PlanCache(tmp_path / "trt").lookup(KEY) == (stored, "valid"), "the record survives a restart"


@pytest.mark.parametrize(
    "field, value",
    [
        ("tensorrt_version", "10.4.0"),
        ("gpu_name", "NVIDIA H100 80GB HBM3"),
        ("compute_capability", "9.0"),
        ("source_sha256", "cd" * 32),
        ("batch_sizes", (1, 8)),
    ],
)
def test_any_changed_field_makes_the_plan_stale(tmp_path: Path, field: str, value: object) -> None:
    cache = PlanCache(tmp_path)
    cache.store(KEY, b"plan-bytes")
    path, reason = cache.lookup(dataclasses.replace(KEY, **{field: value}))
    assert path is None and reason.startswith(f"{field} changed")


def test_precisions_are_cached_side_by_side(tmp_path: Path) -> None:
    cache = PlanCache(tmp_path)
    fp16 = cache.store(KEY, b"fp16-plan")
    int8_key = dataclasses.replace(KEY, precision="int8")
    assert cache.lookup(int8_key)[0] is None
    int8 = cache.store(int8_key, b"int8-plan")
    assert fp16 != int8
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


@pytest.mark.parametrize(
    "precision, cc, expected_flags, warns",
    [
        ("fp32", "8.7", [], False),
        ("fp16", "8.7", ["FP16"], False),
        ("bf16", "8.7", ["BF16"], False),
        ("bf16", "7.2", [], True),
        ("fp8", "9.0", ["FP8", "FP16"], False),
        ("fp8", "8.7", ["FP16"], True),
        ("int8", "8.7", ["INT8", "FP16"], False),
    ],
)
def test_precision_flags_follow_the_gpu(precision, cc, expected_flags, warns) -> None:
    flags, warnings = precision_flags(precision, cc, fast_fp16=True, fast_int8=True)
    assert flags == expected_flags
    assert bool(warnings) == warns


def test_unknown_precision_is_rejected() -> None:
    with pytest.raises(ValueError, match="precision"):
        precision_flags("fp4", "9.0", True, True)


# -- where TensorRT imports (Jetson / GPU hosts with NVIDIA's wheels) -------------------------------

def test_tensorrt_builds_once_then_loads_and_matches_onnxruntime(tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT's Python bindings do not install here (JetPack / NVIDIA index)")
    pytest.importorskip("cuda.bindings.runtime", reason="the TensorRT backend needs cuda-python")
    from test_runtime_support import observations, runtime_model_dir

    from vla_inference.runtime.backends import create_backend
    from vla_inference.runtime.pipeline import InferencePipeline
    from vla_inference.spec.manifest import load_manifest

    manifest = load_manifest(runtime_model_dir(tmp_path_factory))
    cache_dir = tmp_path_factory.mktemp("trt_cache")
    obs = observations(manifest.config, 1)[0]
    with InferencePipeline(create_backend("onnxruntime", manifest), pipelining=False, owns_backend=True) as ort:
        reference = ort.infer(obs, steps=10, seed=2).samples
    with InferencePipeline(create_backend("tensorrt", manifest, precision="fp32", engine_cache_dir=cache_dir),
                           owns_backend=True) as trt_pipeline:
        first = trt_pipeline.infer(obs, steps=10, seed=2).samples
    plans = {p.name: p.stat().st_mtime_ns for p in cache_dir.glob("*.plan")}
    assert len(plans) == 3  # vision, action_expert, euler_step
    with InferencePipeline(create_backend("tensorrt", manifest, precision="fp32", engine_cache_dir=cache_dir),
                           owns_backend=True) as trt_pipeline:
        second = trt_pipeline.infer(obs, steps=10, seed=2).samples
    assert {p.name: p.stat().st_mtime_ns for p in cache_dir.glob("*.plan")} == plans, "valid plans were rebuilt"
    np.testing.assert_array_equal(first, second)
    assert np.abs(first - reference).max() < 1e-2


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
    ready = cu.Event()
    cu.copy_htod(first.ptr, source, low)
    ready.record(low)
    high.wait(ready)
    cu.copy_dtod(second.ptr, first.ptr, source.nbytes, high)
    cu.copy_dtoh(result, second.ptr, high)
    high.synchronize()
    np.testing.assert_array_equal(result.array, source.array)
    for resource in (source, result, first, second, ready, low, high):
        (resource.destroy if hasattr(resource, "destroy") else resource.free)()
