"""Backends as runners: load / infer / release, input checks, the registry, torch-vs-ORT parity."""
from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest
from test_runtime_support import observations, runtime_model_dir

from vla_inference.runtime.backends import BackendUnavailableError, create_backend
from vla_inference.runtime.pipeline import InferencePipeline
from vla_inference.spec.engine_spec import ACTION_EXPERT, VISION
from vla_inference.spec.manifest import Manifest, ModelDirError, load_manifest
from vla_inference.spec.observation import vision_feeds


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return load_manifest(runtime_model_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def ort_backend(manifest: Manifest):
    backend = create_backend("onnxruntime", manifest, intra_op_threads=2)
    backend.load()
    yield backend
    backend.release()


def expert_feeds(manifest: Manifest, batch: int) -> dict:
    cfg = manifest.config
    vision = create_backend("onnxruntime", manifest)
    with vision:
        prefix = vision.infer(VISION, vision_feeds(observations(cfg, 1), cfg))
    rng = np.random.default_rng(0)
    return {
        "noisy_actions": rng.standard_normal((batch, cfg.action_horizon, cfg.action_dim), dtype=np.float32),
        "time": np.full((batch,), 0.5, dtype=np.float32),
        "prefix_kv": np.repeat(prefix["prefix_kv"], batch, axis=0),
        "prefix_mask": np.repeat(prefix["prefix_mask"], batch, axis=0),
    }


def test_onnxruntime_infer_returns_the_manifest_outputs(ort_backend, manifest: Manifest) -> None:
    cfg = manifest.config
    out = ort_backend.infer(VISION, vision_feeds(observations(cfg, 2), cfg))
    spec = ort_backend.specs[VISION]
    for tensor in spec.outputs:
        assert out[tensor.name].shape == tensor.concrete_shape(2)
        assert out[tensor.name].dtype == np.dtype(tensor.dtype)
    velocity = ort_backend.infer(ACTION_EXPERT, expert_feeds(manifest, 3))["velocity"]
    assert velocity.shape == (3, cfg.action_horizon, cfg.action_dim) and np.isfinite(velocity).all()


def test_release_then_infer_raises_and_reload_serves(manifest: Manifest) -> None:
    backend = create_backend("onnxruntime", manifest)
    feeds = vision_feeds(observations(manifest.config, 1), manifest.config)
    with pytest.raises(RuntimeError, match="before load"):
        backend.infer(VISION, feeds)
    backend.load()
    first = backend.infer(VISION, feeds)["prefix_kv"]
    backend.release()
    backend.release()  # idempotent
    with pytest.raises(RuntimeError, match="before load"):
        backend.infer(VISION, feeds)
    backend.load()
    np.testing.assert_array_equal(backend.infer(VISION, feeds)["prefix_kv"], first)
    backend.release()


@pytest.mark.parametrize(
    "tensor, corrupt, message",
    [
        ("images", lambda a: a[:, :1], r"images: expected shape"),
        ("state", lambda a: a.astype(np.float64), r"state: expected dtype float32"),
        ("lidar_range", lambda a: np.where(a == a, np.nan, a).astype(np.float32), r"lidar_range: contains NaN"),
        ("text_tokens", lambda a: a.astype(np.int32), r"text_tokens: expected dtype int64"),
        ("camera_mask", lambda a: np.stack([a, a], axis=1), r"camera_mask: expected shape"),
    ],
)
def test_infer_names_the_bad_tensor(ort_backend, manifest: Manifest, tensor, corrupt, message) -> None:
    feeds = vision_feeds(observations(manifest.config, 1), manifest.config)
    feeds[tensor] = corrupt(feeds[tensor])
    with pytest.raises(ValueError, match=message):
        ort_backend.infer(VISION, feeds)


def test_infer_rejects_missing_extra_inputs_and_unknown_engine(ort_backend, manifest: Manifest) -> None:
    feeds = vision_feeds(observations(manifest.config, 1), manifest.config)
    with pytest.raises(ValueError, match=r"missing inputs \['state'\]"):
        ort_backend.infer(VISION, {k: v for k, v in feeds.items() if k != "state"})
    with pytest.raises(ValueError, match=r"unexpected inputs \['bogus'\]"):
        ort_backend.infer(VISION, {**feeds, "bogus": feeds["state"]})
    with pytest.raises(ValueError, match="engine_name"):
        ort_backend.infer("decoder", feeds)


def test_registry_errors_name_backend_and_dependency(manifest: Manifest) -> None:
    with pytest.raises(ValueError, match="expected one of"):
        create_backend("openvino", manifest)
    with pytest.raises(TypeError, match="has no option 'fast'"):
        create_backend("onnxruntime", manifest, fast=True)
    # Options shared by every backend are ignored by those that have no use for them.
    backend = create_backend("onnxruntime", manifest, engine_cache_dir=None, num_samples=4)
    assert backend.name == "onnxruntime"
    with pytest.raises(ModelDirError, match=r"manifest.json: no precision 'fp64'"):
        create_backend("onnxruntime", manifest, precision="fp64")
    with pytest.raises(BackendUnavailableError, match="backend 'onnxruntime' is unavailable: it needs"):
        create_backend("onnxruntime", manifest, device="cuda")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_tensorrt_without_tensorrt_names_the_dependency(manifest: Manifest) -> None:
    with pytest.raises(BackendUnavailableError, match=r"backend 'tensorrt' is unavailable: it needs TensorRT"):
        create_backend("tensorrt", manifest)


def test_int8_engines_end_where_fp32_ends(manifest: Manifest) -> None:
    """INT8 chunks of held-out scenes end within a centimetre of the fp32 ones (median of 8). With
    8-bit weights on an AVX2-only CPU (int16 saturation) the shipped engines were 2.8 cm off."""
    if "int8" not in manifest.precisions:
        pytest.skip(f"{manifest.model_dir} has no int8 engines")
    from vla_inference.synthetic import eval_scenes, make_observation
    from vla_inference.synthetic.scene import simulate

    scenes = list(eval_scenes(8, seed_base=2_000_000))
    ends = {}
    for precision in ("fp32", "int8"):
        with InferencePipeline(create_backend("onnxruntime", manifest, precision=precision), pipelining=False,
                               warmup_runs=0, owns_backend=True) as pipeline:
            chunks = [pipeline.infer(make_observation(scene, 3, True), steps=10, seed=3).actions for scene in scenes]
        ends[precision] = np.stack([simulate(scene.ee_start, chunk)[-1] for scene, chunk in zip(scenes, chunks)])
    distance_cm = np.linalg.norm(ends["int8"] - ends["fp32"], axis=1) * 100
    assert np.median(distance_cm) < 1.0, distance_cm


def test_torch_cpu_matches_onnxruntime_within_1e_4(manifest: Manifest) -> None:
    """Same observation, seed and 10-step Euler loop: the exported engines equal the PyTorch policy."""
    pytest.importorskip("torch", reason="the torch backend needs PyTorch")
    cfg = manifest.config
    obs = observations(cfg, 2, seed=7)
    chunks = {}
    for name in ("onnxruntime", "torch"):
        backend = create_backend(name, manifest)
        with InferencePipeline(backend, num_samples=4, pipelining=False, warmup_runs=0) as pipeline:
            chunks[name] = [pipeline.infer(o, steps=10, seed=11 + i).samples for i, o in enumerate(obs)]
        backend.release()
    error = max(float(np.abs(a - b).max()) for a, b in zip(chunks["onnxruntime"], chunks["torch"]))
    assert error <= 1e-4, f"max abs diff {error:.3g}"


def test_torch_backend_checks_its_weights_file(manifest: Manifest, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the torch backend needs PyTorch")
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(manifest.model_dir, copy)
    weights = load_manifest(copy).weights_path
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match=rf"{weights.name}: SHA-256 differs"):
        create_backend("torch", load_manifest(copy))


def test_expert_workers_split_the_samples_and_agree_with_one_run(manifest: Manifest) -> None:
    cfg = manifest.config
    obs = observations(cfg, 1, seed=4)[0]
    samples = {}
    for workers in (1, 2, 3):
        backend = create_backend("onnxruntime", manifest, expert_workers=workers)
        with InferencePipeline(backend, num_samples=5, pipelining=False, warmup_runs=0, owns_backend=True) as pipeline:
            samples[workers] = pipeline.infer(obs, steps=4, seed=2).samples
            # ThreadPoolExecutor starts a worker per submission only while none is idle: 1..workers of them.
            pool = len([t for t in threading.enumerate() if t.name.startswith("vla-expert")])
            assert (1 <= pool <= workers) if workers > 1 else pool == 0, pool
        assert not [t for t in threading.enumerate() if t.name.startswith("vla-expert") and t.is_alive()]
    for workers in (2, 3):
        np.testing.assert_allclose(samples[workers], samples[1], atol=1e-5)
    with pytest.raises(ValueError, match="expert_workers"):
        create_backend("onnxruntime", manifest, expert_workers=0)
