"""The PyTorch policy: preset sizes, masking, bad input, save/load."""
import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vla_inference.model.export import random_feeds
from vla_inference.model.policy import (
    AdaRMSNorm,
    PrefixTrim,
    build_policy,
    count_parameters,
    engine_unused_parameters,
    load_policy,
    save_policy,
)
from vla_inference.spec.config import BackboneConfig, ExpertConfig, LidarConfig, VisionConfig, VlaConfig, pi05, tiny
from vla_inference.spec.engine_spec import VISION, engine_specs

MiB = 1024 * 1024


def small_config() -> VlaConfig:
    """A very small config (different layout from tiny) to keep these tests fast."""
    return VlaConfig(
        preset="test-small",
        max_cameras=2,
        text_max_len=16,
        action_horizon=4,
        action_dim=5,
        state_dim=6,
        vision=VisionConfig(image_size=64, patch_size=32, width=32, depth=1, num_heads=2, mlp_dim=64),
        lidar=LidarConfig(rows=64, cols=1024, patch_rows=64, patch_cols=128, max_range_m=20.0),
        backbone=BackboneConfig(width=48, depth=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=96),
        expert=ExpertConfig(width=32, mlp_dim=64),
    )


@pytest.fixture(scope="module")
def small_policy():
    """Random weights; the adaRMS modulations (zero at initialisation, which would make every expert
    block the identity and the output blind to the prefix) are randomised too."""
    torch.manual_seed(0)
    policy = build_policy(small_config()).eval()
    for module in policy.modules():
        if isinstance(module, AdaRMSNorm):
            torch.nn.init.normal_(module.modulation.weight, std=0.2)
    return policy


def torch_feeds(cfg: VlaConfig, batch: int, seed: int = 0):
    return {k: torch.from_numpy(v) for k, v in random_feeds(cfg, batch, seed).items()}


def test_pi05_parameter_count_on_meta_device():
    with torch.device("meta"):
        policy = build_policy(pi05())
    assert all(p.device.type == "meta" for p in policy.parameters())
    total = count_parameters(policy)
    assert 3.3e9 <= total <= 3.6e9, total
    vit = count_parameters(policy.vision_engine.vit)
    assert 0.38e9 <= vit <= 0.45e9, vit  # SigLIP So400m/14
    assert 0.35e9 <= count_parameters(policy.action_expert) <= 0.5e9  # Gemma-300M-style expert


def test_tiny_weights_fit_20_mb():
    with torch.device("meta"):
        policy = build_policy(tiny())
    assert count_parameters(policy) * 4 <= 20 * MiB


def test_engine_outputs_follow_the_spec(small_policy):
    cfg = small_config()
    specs = engine_specs(cfg)
    feeds = torch_feeds(cfg, 3)
    with torch.no_grad():
        prefix_kv, prefix_mask = small_policy.vision_engine(*(feeds[t.name] for t in specs[VISION].inputs))
        velocity = small_policy.action_expert(torch.randn(3, 4, 5), torch.rand(3), prefix_kv, prefix_mask)
    assert tuple(prefix_kv.shape) == specs[VISION].output("prefix_kv").concrete_shape(3)
    assert prefix_mask.dtype == torch.bool and tuple(prefix_mask.shape) == (3, cfg.prefix_len)
    tokens = cfg.tokens_per_camera
    expected_mask = torch.cat([
        feeds["camera_mask"].repeat_interleave(tokens, dim=1),
        feeds["lidar_mask"][:, None].expand(3, cfg.lidar_tokens),
        feeds["text_mask"],
        torch.ones(3, 1, dtype=torch.bool),
    ], dim=1)
    assert torch.equal(prefix_mask, expected_mask)
    assert velocity.shape == (3, 4, 5) and torch.isfinite(velocity).all()


def test_masked_inputs_do_not_change_the_actions(small_policy):
    cfg = small_config()
    names = [t.name for t in engine_specs(cfg)[VISION].inputs]
    feeds = torch_feeds(cfg, 2, seed=3)
    feeds["camera_mask"][:] = torch.tensor([True, False])
    feeds["lidar_mask"][:] = False
    feeds["text_mask"][:, 8:] = False
    altered = {k: v.clone() for k, v in feeds.items()}
    altered["images"][:, 1] = torch.rand_like(altered["images"][:, 1])
    altered["lidar_range"] = torch.rand_like(altered["lidar_range"]) * 10.0
    altered["text_tokens"][:, 8:] = 77
    noise, time = torch.randn(2, 4, 5), torch.full((2,), 0.7)
    with torch.no_grad():
        outputs = [small_policy.action_expert(noise, time, *small_policy.vision_engine(*(f[n] for n in names)))
                   for f in (feeds, altered)]
        visible = dict(feeds, images=altered["images"].clone())
        visible["camera_mask"][:] = True
        unmasked = small_policy.action_expert(noise, time, *small_policy.vision_engine(*(visible[n] for n in names)))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-5)
    assert not torch.allclose(outputs[0], unmasked, atol=1e-4)


@pytest.mark.parametrize("cameras, lidar", [(1, False), (1, True), (2, False)])
def test_a_trimmed_prefix_gives_the_full_prefix_keys_values_and_actions(small_policy, cameras, lidar):
    """Training leaves out tokens the whole batch masks; the kept tokens and the expert's output must
    be those of the full prefix, or the shipped engines would serve a different function."""
    cfg = small_config()
    names = [t.name for t in engine_specs(cfg)[VISION].inputs]
    feeds = torch_feeds(cfg, 3, seed=5)
    feeds["camera_mask"][:] = torch.arange(cfg.max_cameras) < cameras
    feeds["lidar_mask"][:] = lidar
    feeds["text_mask"][:] = torch.arange(cfg.text_max_len) < torch.tensor([[5], [9], [3]])
    trim = PrefixTrim(cameras, lidar, 9)
    noise, time = torch.randn(3, 4, 5), torch.tensor([0.9, 0.5, 0.1])
    with torch.no_grad():
        full_kv, full_mask = small_policy.vision_engine(*(feeds[n] for n in names))
        kv, mask, extras = small_policy.vision_engine.encode(*(feeds[n] for n in names), trim=trim)
        full_clean = small_policy.action_expert.denoise(noise, time, full_kv, full_mask)
        clean = small_policy.action_expert.denoise(noise, time, kv, mask, trimmed=True)
    kept = trim.positions(cfg)
    assert kv.shape[4] == len(kept) < cfg.prefix_len and extras["vit_tokens"].shape[1] == cameras
    torch.testing.assert_close(kv, full_kv[:, :, :, :, kept], rtol=0, atol=1e-5)
    assert torch.equal(mask, full_mask[:, kept])
    torch.testing.assert_close(clean, full_clean, rtol=0, atol=1e-5)
    segments = trim.segments(cfg)
    assert segments["text"].stop == len(kept) - 1 and (segments["lidar"].stop > segments["lidar"].start) == lidar
    with pytest.raises(ValueError, match="prefix_kv: expected shape"):
        small_policy.action_expert.denoise(noise, time, kv, mask)


@pytest.mark.parametrize("trim, message", [
    (PrefixTrim(1, True, 16), "camera after slot 1 is on"),
    (PrefixTrim(2, False, 16), "LiDAR left out"),
    (PrefixTrim(2, True, 4), "longer than text_len 4"),
    (PrefixTrim(0, True, 16), "cameras must lie in"),
])
def test_a_trim_that_would_drop_an_attended_token_is_refused(small_policy, trim, message):
    cfg = small_config()
    feeds = torch_feeds(cfg, 2, seed=6)
    feeds["camera_mask"][:] = True
    feeds["lidar_mask"][:] = True
    feeds["text_mask"][:] = torch.arange(cfg.text_max_len) < 6
    with pytest.raises(ValueError, match=message):
        small_policy.vision_engine.encode(*(feeds[t.name] for t in engine_specs(cfg)[VISION].inputs), trim=trim)


def test_sample_runs_the_euler_loop(small_policy):
    cfg = small_config()
    feeds = torch_feeds(cfg, 2)
    noise = torch.randn(2, 4, 5)
    actions = small_policy.sample(feeds, 3, noise)
    names = [t.name for t in engine_specs(cfg)[VISION].inputs]
    with torch.no_grad():
        kv, mask = small_policy.vision_engine(*(feeds[n] for n in names))
        x = noise
        for t in (1.0, 2 / 3, 1 / 3):
            x = x - (1 / 3) * small_policy.action_expert(x, torch.full((2,), t), kv, mask)
    torch.testing.assert_close(actions, x, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("images", torch.zeros(2, 3, 3, 64, 64), r"images: expected shape \(2, 2, 3, 64, 64\), received \(2, 3, 3, 64, 64\)"),
        ("images", torch.zeros(2, 2, 3, 32, 32), r"images: expected shape"),
        ("state", torch.zeros(2, 5), r"state: expected shape \(2, 6\), received \(2, 5\)"),
        ("state", torch.full((2, 6), float("nan")), "state: contains NaN or Inf"),
        ("lidar_range", torch.full((2, 1, 64, 1024), float("inf")), "lidar_range: contains NaN or Inf"),
        ("text_tokens", torch.zeros(2, 17, dtype=torch.int64), r"text_tokens: expected shape \(2, 16\), received \(2, 17\)"),
        ("text_tokens", torch.zeros(2, 16, dtype=torch.int32), "text_tokens: expected dtype int64, received int32"),
        ("camera_mask", torch.ones(2, 2), "camera_mask: expected dtype bool, received float32"),
        ("lidar_mask", torch.ones(3, dtype=torch.bool), r"lidar_mask: expected shape \(2,\), received \(3,\)"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_tensor(small_policy, name, value, message):
    feeds = torch_feeds(small_config(), 2)
    feeds[name] = value
    with pytest.raises(ValueError, match=message):
        small_policy.sample(feeds, 2, torch.randn(2, 4, 5))


def test_bad_noise_steps_and_missing_inputs(small_policy):
    feeds = torch_feeds(small_config(), 2)
    with pytest.raises(ValueError, match=r"noisy_actions: expected shape \(2, 4, 5\), received \(2, 4, 6\)"):
        small_policy.sample(feeds, 2, torch.randn(2, 4, 6))
    with pytest.raises(ValueError, match="steps"):
        small_policy.sample(feeds, 0, torch.randn(2, 4, 5))
    del feeds["state"]
    with pytest.raises(ValueError, match=r"missing inputs \['state'\]"):
        small_policy.sample(feeds, 2, torch.randn(2, 4, 5))


def test_forward_shape_checks_name_the_tensor(small_policy):
    cfg = small_config()
    feeds = torch_feeds(cfg, 2)
    names = [t.name for t in engine_specs(cfg)[VISION].inputs]
    feeds["images"] = torch.zeros(2, 4, 3, 64, 64)
    with pytest.raises(ValueError, match=r"images: expected shape \(batch, 2, 3, 64, 64\), received \(2, 4, 3, 64, 64\)"):
        small_policy.vision_engine(*(feeds[n] for n in names))
    with pytest.raises(ValueError, match="prefix_kv: expected shape"):
        small_policy.action_expert(torch.zeros(2, 4, 5), torch.zeros(2), torch.zeros(2, 2, 2, 2, 5, 16),
                                   torch.ones(2, cfg.prefix_len, dtype=torch.bool))


def test_save_and_load_round_trip(tmp_path, small_policy):
    cfg = small_config()
    path = save_policy(small_policy, tmp_path / "policy.safetensors")
    loaded = load_policy(path, cfg)
    feeds = torch_feeds(cfg, 1, seed=9)
    noise = torch.randn(1, 4, 5)
    torch.testing.assert_close(loaded.sample(feeds, 2, noise), small_policy.sample(feeds, 2, noise), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_policy(path, dataclasses.replace(cfg, action_dim=6))


def test_time_is_clamped_so_t_zero_stays_finite(small_policy):
    cfg = small_config()
    feeds = torch_feeds(cfg, 1)
    names = [t.name for t in engine_specs(cfg)[VISION].inputs]
    with torch.no_grad():
        kv, mask = small_policy.vision_engine(*(feeds[n] for n in names))
        velocity = small_policy.action_expert(torch.randn(1, 4, 5), torch.zeros(1), kv, mask)
    assert torch.isfinite(velocity).all()
    assert np.isfinite(velocity.numpy()).all()


def test_weights_leave_out_only_parameters_no_engine_reads(tmp_path, small_policy):
    cfg = small_config()
    path = save_policy(small_policy, tmp_path / "policy.safetensors")
    saved = load_file(str(path))
    unused = engine_unused_parameters(small_policy)
    assert unused and not set(unused) & set(saved)
    assert set(saved) | set(unused) == set(small_policy.state_dict())
    del saved["action_expert.action_out.weight"]
    save_file(saved, str(tmp_path / "broken.safetensors"))
    with pytest.raises(RuntimeError, match="action_expert.action_out.weight"):
        load_policy(tmp_path / "broken.safetensors", cfg)
