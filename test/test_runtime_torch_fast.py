"""The torch backend's GPU fast path (``FastPolicy``), checked on the CPU in fp32 against the policy.

The CUDA serving path runs these same functions in bf16 inside CUDA graphs (``gpu_check`` covers that
on a GPU host); here they must reproduce ``VlaPolicy`` to float32 rounding: prefix keys/values, the
Euler loop over the modulation table with the shared, padded prefix, for one and for two key/value
heads, with the split attention and the joint (reference-layout) one.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest

torch = pytest.importorskip("torch", reason="the torch backend needs PyTorch")

from vla_inference.model.policy import build_policy  # noqa: E402
from vla_inference.runtime.backends.torch_backend import FastPolicy, _patch_conv  # noqa: E402
from vla_inference.spec.config import BackboneConfig, VlaConfig, tiny  # noqa: E402
from vla_inference.spec.engine_spec import VISION, engine_specs  # noqa: E402
from vla_inference.spec.flow import flow_schedule  # noqa: E402

TOLERANCE = 1e-5


def _policy(cfg: VlaConfig):
    torch.manual_seed(0)
    policy = build_policy(cfg).eval()
    with torch.no_grad():  # adaLN-Zero starts at the identity; give the time modulation a signal
        for name, parameter in policy.named_parameters():
            if "modulation" in name:
                parameter.normal_(0.0, 0.02)
    return policy


def _feeds(cfg: VlaConfig, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    feeds = {}
    for spec in engine_specs(cfg)[VISION].inputs:
        shape = spec.concrete_shape(1)
        if spec.dtype == "float32":
            feeds[spec.name] = torch.rand(shape, generator=generator) * 2.0 - 1.0
        elif spec.dtype == "bool":
            feeds[spec.name] = torch.ones(shape, dtype=torch.bool)
        else:
            feeds[spec.name] = torch.randint(0, 256, shape, generator=generator)
    feeds["lidar_range"] = feeds["lidar_range"].abs() * 5.0
    feeds["text_mask"][:, cfg.text_max_len // 3:] = False
    feeds["camera_mask"][:, -1] = False
    return feeds


def _two_kv_heads() -> VlaConfig:
    return dataclasses.replace(tiny(), backbone=BackboneConfig(width=192, depth=2, num_heads=4, num_kv_heads=2,
                                                               head_dim=32, mlp_dim=256))


@pytest.mark.parametrize("cfg_fn", [tiny, _two_kv_heads], ids=["tiny", "two_kv_heads"])
@pytest.mark.parametrize("attention,prefix_attention", [("split", "manual"), ("joint", "sdpa"), ("split", "sdpa")])
def test_fast_path_reproduces_the_policy_in_fp32(cfg_fn, attention: str, prefix_attention: str) -> None:
    cfg = cfg_fn()
    reference = _policy(cfg)
    policy = copy.deepcopy(reference)
    fast = FastPolicy(policy, compile=False, attention=attention, prefix_attention=prefix_attention)
    feeds = _feeds(cfg)
    args = [feeds[spec.name] for spec in engine_specs(cfg)[VISION].inputs]
    samples, steps = 3, 4
    noise = torch.randn((samples, cfg.action_horizon, cfg.action_dim), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_kv, ref_mask = reference.vision_engine(*args)
        fast.install()
        try:
            kv, mask = policy.vision_engine(*args)
        finally:
            fast.uninstall()
        assert torch.equal(mask, ref_mask)
        assert float((kv - ref_kv).abs().max()) <= TOLERANCE * max(1.0, float(ref_kv.abs().max()))

        times, dt = flow_schedule(steps)
        expected = noise.clone()
        for t in times:  # the Euler loop of ``Backend.denoise`` with the prefix repeated K times
            expected = expected + float(dt) * reference.action_expert(
                expected, torch.full((samples,), float(t)), ref_kv.expand(samples, *ref_kv.shape[1:]),
                ref_mask.expand(samples, -1))
        table = fast.modulation_table(torch.from_numpy(times))
        assert table.shape == (steps, fast.mod_rows, cfg.expert.width)
        padded_kv, bias = fast.pad_prefix(kv[0], mask[0])
        assert padded_kv.shape[-2] == fast.prefix_len_padded and fast.prefix_len_padded % 16 == 0
        x = noise.clone()
        for step in range(steps):
            x = x + float(dt) * fast.velocity(x, torch.tensor([times[step]]), table[step], padded_kv, bias)
    assert float((x - expected).abs().max()) <= TOLERANCE


def test_fusing_weights_keeps_names_shapes_and_values_and_is_reused() -> None:
    policy = _policy(tiny())
    before = {name: tensor.clone() for name, tensor in policy.state_dict().items()}
    first = FastPolicy(policy)
    after = policy.state_dict()
    assert list(after) == list(before)
    for name, tensor in before.items():
        assert after[name].shape == tensor.shape and torch.equal(after[name], tensor), name
    second = FastPolicy(policy, attention="joint")
    for a, b in zip(first.expert_weights, second.expert_weights):
        assert all(x.data_ptr() == y.data_ptr() for x, y in zip(a, b))  # no second copy of the weights
    q_proj = policy.action_expert.layers[0].attn.q_proj.weight
    assert q_proj.data_ptr() == first.expert_weights[0][0].data_ptr()


def test_install_and_uninstall_touch_only_this_instance() -> None:
    policy, other = _policy(tiny()), _policy(tiny())
    fast = FastPolicy(policy)
    fast.install()
    assert "_backbone" in vars(policy.vision_engine) and "_backbone" not in vars(other.vision_engine)
    assert all("forward" in vars(block) for block in policy.vision_engine.vit.blocks)
    assert len(fast.patch_convs) == 3  # ViT patches, LiDAR columns, LiDAR patches
    fast.uninstall()
    assert "_backbone" not in vars(policy.vision_engine)
    assert not any("forward" in vars(m) for m in list(policy.vision_engine.vit.blocks) + fast.patch_convs)


def test_patch_convolution_as_one_gemm() -> None:
    conv = torch.nn.Conv2d(4, 24, kernel_size=(8, 4), stride=(8, 4))
    x = torch.randn(2, 4, 16, 32)
    with torch.no_grad():
        assert torch.allclose(_patch_conv(x, conv.weight, conv.bias), conv(x), atol=1e-5)


@pytest.mark.parametrize("cfg_fn", [tiny, _two_kv_heads], ids=["tiny", "two_kv_heads"])
@pytest.mark.parametrize("attention", ["split", "joint"])
def test_fast_path_with_a_prefix_per_sample_reproduces_the_policy_in_fp32(cfg_fn, attention: str) -> None:
    """Camera views: each sample denoises on its own view's prefix (rows 0, 1, 0, 1)."""
    cfg = cfg_fn()
    reference = _policy(cfg)
    policy = copy.deepcopy(reference)
    fast = FastPolicy(policy, compile=False, attention=attention)
    feeds = _feeds(cfg)
    first_camera = dict(feeds, camera_mask=feeds["camera_mask"].clone())
    first_camera["camera_mask"][:, 1:] = False
    rows = torch.tensor([0, 1, 0, 1])
    noise = torch.randn((len(rows), cfg.action_horizon, cfg.action_dim), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        views = [reference.vision_engine(*[f[spec.name] for spec in engine_specs(cfg)[VISION].inputs])
                 for f in (feeds, first_camera)]
        kv = torch.cat([v[0] for v in views])[rows]
        mask = torch.cat([v[1] for v in views])[rows]
        assert not torch.equal(mask[0], mask[1])
        times, dt = flow_schedule(3)
        expected = noise.clone()
        for t in times:
            expected = expected + float(dt) * reference.action_expert(expected, torch.full((len(rows),), float(t)),
                                                                      kv, mask)
        table = fast.modulation_table(torch.from_numpy(times))
        padded_kv, bias = fast.pad_prefix(kv, mask)
        assert padded_kv.shape[0] == len(rows) and bias.shape == (len(rows), fast.prefix_len_padded)
        x = noise.clone()
        for step in range(len(times)):
            x = x + float(dt) * fast.velocity(x, torch.tensor([times[step]]), table[step], padded_kv, bias)
    assert float((x - expected).abs().max()) <= TOLERANCE
