"""The shipped models/tiny: manifest and checksums, ONNX contract, PyTorch <-> ONNX Runtime parity,
bad input at the NumPy boundary, and a random-weight export of a very small config."""
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from vla_inference.lab.evaluate import build_eval_set
from vla_inference.lab.sampler import EngineSampler
from vla_inference.model.export import export_model_dir, random_feeds
from vla_inference.model.policy import build_policy, load_policy
from vla_inference.runtime.backends import HostPrefix
from vla_inference.spec.config import BackboneConfig, ExpertConfig, LidarConfig, VisionConfig, VlaConfig
from vla_inference.spec.engine_spec import ACTION_EXPERT, VISION, engine_specs
from vla_inference.spec.manifest import ModelDirError, load_manifest

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "tiny"
PARITY_ATOL = 1e-4
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def manifest():
    return load_manifest(MODEL_DIR, verify_checksums=True)


@pytest.fixture(scope="module")
def torch_policy(manifest):
    torch.set_num_threads(2)
    return load_policy(manifest.weights_path, manifest.config)


@pytest.fixture(scope="module")
def ort_fp32(manifest):
    with EngineSampler(manifest, "fp32") as sampler:
        yield sampler


@pytest.fixture(scope="module")
def held_out(manifest):
    return build_eval_set(manifest.config, num_scenes=3)


def test_manifest_loads_with_matching_checksums(manifest):
    assert manifest.config.preset == "tiny"
    assert "fp32" in manifest.precisions
    assert manifest.weights_path is not None and manifest.weights_path.is_file()
    assert float(manifest.raw["confidence_scale"]) > 0


def test_shipped_directory_fits_30_mb():
    assert sum(p.stat().st_size for p in MODEL_DIR.iterdir() if p.is_file()) <= 30 * MiB


def test_a_modified_engine_file_is_caught(tmp_path, manifest):
    copy = tmp_path / "tiny"
    copy.mkdir()
    for path in MODEL_DIR.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    engine = copy / manifest.engine("fp32", VISION).path.name
    data = bytearray(engine.read_bytes())
    data[-1] ^= 0xFF
    engine.write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match="SHA-256"):
        load_manifest(copy)


def test_onnx_files_follow_the_engine_contract(manifest):
    specs = engine_specs(manifest.config)
    for precision in manifest.precisions:
        for name in (VISION, ACTION_EXPERT):
            model = onnx.load(str(manifest.engine(precision, name).path))
            onnx.checker.check_model(model)
            assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
            assert [i.name for i in model.graph.input] == [t.name for t in specs[name].inputs]
            assert [o.name for o in model.graph.output] == [t.name for t in specs[name].outputs]
            for value in list(model.graph.input) + list(model.graph.output):
                assert value.type.tensor_type.shape.dim[0].dim_param, f"{precision}/{name}/{value.name}: static batch"


def test_vision_engine_parity(torch_policy, ort_fp32, held_out):
    feeds = held_out.feeds
    prefix = ort_fp32.encode(feeds)
    kv, mask = prefix.prefix_kv, prefix.prefix_mask
    with torch.no_grad():
        ref_kv, ref_mask = torch_policy.vision_engine(*(torch.from_numpy(feeds[n]) for n in feeds))
    assert np.array_equal(mask, ref_mask.numpy())
    assert np.abs(kv - ref_kv.numpy()).max() <= PARITY_ATOL


def test_action_expert_parity(torch_policy, ort_fp32, held_out):
    with torch.no_grad():
        kv, mask = torch_policy.vision_engine(*(torch.from_numpy(v) for v in held_out.feeds.values()))
    for t in (1.0, 0.5, 0.1):
        time = np.full(len(held_out), t, np.float32)
        got = ort_fp32.velocity(held_out.noise, time, HostPrefix(kv.numpy(), mask.numpy()))
        with torch.no_grad():
            ref = torch_policy.action_expert(torch.from_numpy(held_out.noise), torch.from_numpy(time), kv, mask)
        assert np.abs(got - ref.numpy()).max() <= PARITY_ATOL


def test_full_ten_step_chunk_parity(torch_policy, ort_fp32, held_out):
    got = ort_fp32(held_out.feeds, held_out.noise, steps=10)
    ref = torch_policy.sample({k: torch.from_numpy(v) for k, v in held_out.feeds.items()}, 10,
                              torch.from_numpy(held_out.noise)).numpy()
    assert np.abs(got - ref).max() <= PARITY_ATOL


def test_dynamic_batch(ort_fp32, manifest):
    for batch in (1, 4):
        prefix = ort_fp32.encode(random_feeds(manifest.config, batch, seed=batch))
        assert prefix.prefix_kv.shape[0] == batch and prefix.prefix_mask.shape[0] == batch


@pytest.mark.parametrize(
    "name, transform, message",
    [
        ("images", lambda x: x[:, :2], r"images: expected shape \(1, 3, 3, 224, 224\), received \(1, 2, 3, 224, 224\)"),
        ("state", lambda x: x.astype(np.float64), "state: expected dtype float32, received float64"),
        ("lidar_range", lambda x: np.full_like(x, np.nan), "lidar_range: contains NaN or Inf"),
        ("text_tokens", lambda x: np.zeros((1, 49), np.int64), r"text_tokens: expected shape \(1, 48\), received \(1, 49\)"),
    ],
)
def test_bad_input_is_a_value_error_before_onnx_runtime(ort_fp32, manifest, name, transform, message):
    feeds = random_feeds(manifest.config, 1)
    feeds[name] = transform(feeds[name])
    with pytest.raises(ValueError, match=message):
        ort_fp32.encode(feeds)


def test_random_weight_model_dir_for_a_small_config(tmp_path):
    cfg = VlaConfig(
        preset="test-small", max_cameras=1, text_max_len=8, action_horizon=4, action_dim=3, state_dim=2,
        vision=VisionConfig(image_size=32, patch_size=16, width=16, depth=1, num_heads=2, mlp_dim=32),
        lidar=LidarConfig(rows=64, cols=1024, patch_rows=64, patch_cols=256),
        backbone=BackboneConfig(width=16, depth=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32),
        expert=ExpertConfig(width=16, mlp_dim=32),
    )
    torch.manual_seed(0)
    policy = build_policy(cfg).eval()
    export_model_dir(policy, cfg, tmp_path / "small")
    loaded = load_manifest(tmp_path / "small")
    assert loaded.config == cfg and loaded.precisions == ("fp32",)
    runtime = EngineSampler(loaded)
    feeds = random_feeds(cfg, 2)
    noise = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    ref = policy.sample({k: torch.from_numpy(v) for k, v in feeds.items()}, 3, torch.from_numpy(noise)).numpy()
    assert np.abs(runtime(feeds, noise, 3) - ref).max() <= PARITY_ATOL
