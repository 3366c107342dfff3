"""The two-stage pipeline on real ONNX Runtime sessions: results, determinism, faults, threads."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from test_runtime_support import observations, pipeline_threads, runtime_model_dir

from vla_inference.runtime.backends import InferenceError, create_backend
from vla_inference.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from vla_inference.runtime.pipeline import ActionChunk, InferencePipeline, sample_noise
from vla_inference.spec.manifest import Manifest, load_manifest
from vla_inference.spec.tokenizer import tokenize

K = 4


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return load_manifest(runtime_model_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def pipeline(manifest: Manifest):
    with InferencePipeline(create_backend("onnxruntime", manifest), num_samples=K, owns_backend=True) as served:
        yield served


def test_infer_returns_mean_chunk_confidence_and_timings(pipeline: InferencePipeline) -> None:
    cfg = pipeline.cfg
    chunk = pipeline.infer(observations(cfg, 1)[0], steps=5, seed=1)
    assert isinstance(chunk, ActionChunk)
    assert chunk.actions.shape == (cfg.action_horizon, cfg.action_dim) and chunk.actions.dtype == np.float32
    assert chunk.samples.shape == (K, cfg.action_horizon, cfg.action_dim)
    np.testing.assert_allclose(chunk.actions, chunk.samples.mean(axis=0), rtol=1e-6, atol=1e-7)
    assert 0.0 <= chunk.confidence <= 1.0 and chunk.dispersion >= 0.0
    assert chunk.steps == 5 and chunk.seed == 1
    t = chunk.timings
    assert min(t.preprocess_ms, t.vision_ms, t.denoise_ms, t.postprocess_ms) > 0.0
    assert t.total_ms >= t.preprocess_ms + t.vision_ms + t.denoise_ms + t.postprocess_ms - 1e-6


def test_noise_is_seeded_per_request(pipeline: InferencePipeline) -> None:
    cfg = pipeline.cfg
    noise = sample_noise(5, K, cfg.action_horizon, cfg.action_dim)
    np.testing.assert_array_equal(
        noise, np.random.default_rng(5).standard_normal((K, cfg.action_horizon, cfg.action_dim), dtype=np.float32)
    )
    obs = observations(cfg, 1)[0]
    a, b, c = (pipeline.infer(obs, steps=3, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, c.samples)


def test_pipelined_results_equal_sequential_bit_exactly(manifest: Manifest, pipeline: InferencePipeline) -> None:
    cfg = manifest.config
    obs = observations(cfg, 6, seed=3)
    steps = [10, 1, 3, 10, 5, 2]
    with InferencePipeline(create_backend("onnxruntime", manifest), num_samples=K, pipelining=False,
                           owns_backend=True) as sequential:
        expected = [sequential.infer(o, steps=s, seed=100 + i) for i, (o, s) in enumerate(zip(obs, steps))]
    futures = [pipeline.submit(o, steps=s, seed=100 + i) for i, (o, s) in enumerate(zip(obs, steps))]
    for future, reference in zip(futures, expected):
        chunk = future.result(timeout=60)
        np.testing.assert_array_equal(chunk.samples, reference.samples)
        np.testing.assert_array_equal(chunk.actions, reference.actions)
        assert chunk.confidence == reference.confidence or math.isnan(reference.confidence)


@pytest.mark.parametrize(
    "field, bad, message",
    [
        ("state", lambda o: np.full_like(o.state, np.nan), r"^state: contains NaN or Inf"),
        ("state", lambda o: o.state[:3], r"^state: expected shape"),
        ("lidar_range", lambda o: np.where(o.lidar_range >= 0, np.inf, 0).astype(np.float32), r"^lidar_range: contains"),
        ("images", lambda o: [o.images[0][:100]] + list(o.images[1:]), r"^images\[0\]: expected uint8"),
        ("images", lambda o: [], r"^images: expected 1\.\.3 cameras"),
        ("text", lambda o: "   ", r"^text: expected a non-empty string"),
    ],
)
def test_bad_observation_raises_value_error_naming_the_field(pipeline: InferencePipeline, field, bad, message) -> None:
    obs = observations(pipeline.cfg, 1)[0]
    with pytest.raises(ValueError, match=message):
        pipeline.infer(replace(obs, **{field: bad(obs)}), steps=2, seed=0)


def test_bad_request_parameters_raise_at_submit(pipeline: InferencePipeline) -> None:
    obs = observations(pipeline.cfg, 1)[0]
    with pytest.raises(ValueError, match="steps"):
        pipeline.submit(obs, steps=0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        pipeline.submit(obs, steps=1, seed=-1)


def test_failures_do_not_poison_the_pipeline(pipeline: InferencePipeline) -> None:
    """A stage-1 validation error and a numerical failure inside the backend, between good requests."""
    obs = observations(pipeline.cfg, 1)[0]
    reference = pipeline.infer(obs, steps=3, seed=9)
    invalid = replace(obs, state=np.full_like(obs.state, np.inf))
    overflow = replace(obs, state=np.full_like(obs.state, 3e38))  # finite, overflows inside the vision engine
    futures = [pipeline.submit(o, steps=3, seed=9) for o in (obs, invalid, obs, overflow, obs)]
    with pytest.raises(ValueError, match="state"):
        futures[1].result(timeout=60)
    with pytest.raises(InferenceError, match="NaN/Inf"):
        futures[3].result(timeout=60)
    for index in (0, 2, 4):
        np.testing.assert_array_equal(futures[index].result(timeout=60).samples, reference.samples)
    np.testing.assert_array_equal(pipeline.infer(obs, steps=3, seed=9).samples, reference.samples)


class PoisonedTokensBackend(OnnxRuntimeBackend):
    """Fault injection on a real session: the command "poison" reaches ONNX Runtime with token ids
    far outside the embedding table, so the runtime itself raises inside ``session.run``."""

    def encode_prefix(self, feeds, slot, sample_rows=None):
        poison, _ = tokenize("poison", self.config.text_max_len)
        if np.array_equal(feeds["text_tokens"][0], poison):
            feeds = {**feeds, "text_tokens": feeds["text_tokens"] + 10**9}
        return super().encode_prefix(feeds, slot, sample_rows)


def test_runtime_exception_in_one_request_leaves_the_next_served(manifest: Manifest) -> None:
    obs = observations(manifest.config, 1)[0]
    with InferencePipeline(PoisonedTokensBackend(manifest), num_samples=K, owns_backend=True) as served:
        good = served.submit(obs, steps=2, seed=1)
        bad = served.submit(replace(obs, text="poison"), steps=2, seed=1)
        after = served.submit(obs, steps=2, seed=1)
        with pytest.raises(Exception) as failure:
            bad.result(timeout=60)
        assert not isinstance(failure.value, ValueError)
        np.testing.assert_array_equal(after.result(timeout=60).samples, good.result(timeout=60).samples)


def test_close_joins_the_stage_threads(manifest: Manifest) -> None:
    before = set(pipeline_threads())
    served = InferencePipeline(create_backend("onnxruntime", manifest), num_samples=2, owns_backend=True,
                               warmup_runs=1)
    started = set(pipeline_threads()) - before
    assert {t.name for t in started} == {"vla-stage1-vision", "vla-stage2-denoise"}
    obs = observations(manifest.config, 1)[0]
    pending = [served.submit(obs, steps=2, seed=i) for i in range(3)]
    served.close()
    assert all(f.done() and f.exception() is None for f in pending), "queued requests finish before close returns"
    assert not any(t.is_alive() for t in started)
    assert not served.backend.is_loaded
    with pytest.raises(RuntimeError, match="closed"):
        served.submit(obs, steps=2, seed=0)
    served.close()  # idempotent


def test_failed_construction_leaves_no_thread(manifest: Manifest) -> None:
    before = set(pipeline_threads())
    with pytest.raises(ValueError, match="num_samples"):
        InferencePipeline(create_backend("onnxruntime", manifest), num_samples=0)
    with pytest.raises(ValueError, match="cfg"):
        InferencePipeline(create_backend("onnxruntime", manifest), cfg=replace(manifest.config, preset="other"))
    assert set(pipeline_threads()) == before


def test_single_sample_has_undefined_confidence(manifest: Manifest) -> None:
    with InferencePipeline(create_backend("onnxruntime", manifest), num_samples=1, pipelining=False,
                           warmup_runs=0, owns_backend=True) as served:
        chunk = served.infer(observations(manifest.config, 1)[0], steps=2, seed=0)
    assert math.isnan(chunk.confidence)
    np.testing.assert_array_equal(chunk.actions, chunk.samples[0])
