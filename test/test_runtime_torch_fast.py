"""The torch backend's fast path (``vla_inference.model.fast_policy.FastPolicy``) against the policy.

On the CPU in fp32 the fast functions must reproduce ``VlaPolicy`` to float32 rounding: prefix
keys/values, the Euler loop over the modulation table with the shared, padded prefix, for one and for
two key/value heads, with the split attention and the joint (reference-layout) one. The policy's
kernel hooks (``VisionEngine.use_backbone`` / ``use_patch_kernels``) must switch what the vision
engine runs and back, and the backend's options are checked by name. On a CUDA host the same runs in
bf16, and the backend serves each option set end to end (``gpu_check`` covers the shipped policy).
"""
from __future__ import annotations

import copy
import dataclasses
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch backend needs PyTorch")

from vla_inference.lab import bench  # noqa: E402
from vla_inference.model.fast_policy import FastPolicy, _patch_conv  # noqa: E402
from vla_inference.model.policy import build_policy  # noqa: E402
from vla_inference.runtime.backends.torch_backend import TorchBackend  # noqa: E402
from vla_inference.runtime.pipeline import InferencePipeline  # noqa: E402
from vla_inference.runtime.sample_views import plan_views, view_feeds  # noqa: E402
from vla_inference.spec.config import BackboneConfig, VlaConfig, tiny  # noqa: E402
from vla_inference.spec.engine_spec import VISION, engine_specs  # noqa: E402
from vla_inference.spec.flow import flow_schedule  # noqa: E402

TOLERANCE = 1e-5
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


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
@pytest.mark.parametrize("attention,prefix_attention", [("split", "manual"), ("joint", "sdpa"), ("split", "sdpa"),
                                                       ("flex", "manual")])
def test_fast_path_reproduces_the_policy_in_fp32(cfg_fn, attention: str, prefix_attention: str) -> None:
    cfg = cfg_fn()
    reference = _policy(cfg)
    policy = copy.deepcopy(reference)
    fast = FastPolicy(policy, compile=False, attention=attention, prefix_attention=prefix_attention)
    feeds = _feeds(cfg)
    args = _args(cfg, feeds)
    samples, steps = 3, 4
    noise = torch.randn((samples, cfg.action_horizon, cfg.action_dim), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_kv, ref_mask = reference.vision_engine(*args)
        with fast.installed():
            kv, mask = policy.vision_engine(*args)
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


def _args(cfg: VlaConfig, feeds: dict) -> list:
    return [feeds[spec.name] for spec in engine_specs(cfg)[VISION].inputs]


def _own_modules(policy) -> dict:
    """What the vision engine runs of its own per kernel hook: backbone norms, ViT blocks, patch convolutions."""
    engine = policy.vision_engine
    return {"backbone": [layer.input_norm for layer in engine.layers], "vit": list(engine.vit.blocks),
            "patch": list(engine.patch_convolutions())}


def test_the_hooks_switch_the_vision_engine_to_the_fast_path_and_back() -> None:
    cfg = tiny()
    reference = _policy(cfg)
    policy, other = copy.deepcopy(reference), copy.deepcopy(reference)
    fast = FastPolicy(policy)
    assert len(fast.patch_convs) == 3  # ViT patches, LiDAR columns, LiDAR patches
    args = _args(cfg, _feeds(cfg))
    ran = set()  # (policy, kind) of every own module that ran, by PyTorch's forward hooks
    for name, instance in (("policy", policy), ("other", other)):
        for kind, modules in _own_modules(instance).items():
            for module in modules:
                module.register_forward_hook(lambda *_, key=(name, kind): ran.add(key))
    every = {"backbone", "vit", "patch"}

    def run(name: str, instance) -> torch.Tensor:
        ran.clear()
        with torch.no_grad():
            kv, mask = instance.vision_engine(*args)
        assert torch.equal(mask, ref_mask)
        assert {kind for who, kind in ran if who != name} == set()
        return kv, {kind for who, kind in ran if who == name}

    with torch.no_grad():
        ref_kv, ref_mask = reference.vision_engine(*args)
    scale = TOLERANCE * max(1.0, float(ref_kv.abs().max()))
    kv, kinds = run("policy", policy)
    assert kinds == every and float((kv - ref_kv).abs().max()) <= scale
    fast.install()
    try:
        kv, kinds = run("policy", policy)
        assert kinds == set(), f"the policy's own {sorted(kinds)} ran with the fast path installed"
        assert float((kv - ref_kv).abs().max()) <= scale
        assert run("other", other)[1] == every  # another instance keeps its own modules
    finally:
        fast.uninstall()
    kv, kinds = run("policy", policy)
    assert kinds == every and float((kv - ref_kv).abs().max()) <= scale
    with pytest.raises(RuntimeError, match="inside the block"), fast.installed():
        assert run("policy", policy)[1] == set()
        raise RuntimeError("inside the block")
    assert run("policy", policy)[1] == every  # ``installed`` uninstalled on the way out


def test_a_backbone_hook_must_return_the_contract_shape() -> None:
    cfg = tiny()
    policy = _policy(cfg)
    args = _args(cfg, _feeds(cfg))
    policy.vision_engine.use_backbone(lambda x, prefix_mask: x)  # the tokens, not the keys/values
    with torch.no_grad(), pytest.raises(ValueError, match=re.escape("prefix_kv (use_backbone): expected shape")):
        policy.vision_engine(*args)
    policy.vision_engine.use_backbone(None)
    with torch.no_grad():
        kv, _ = policy.vision_engine(*args)
    b = cfg.backbone
    assert kv.shape == (1, b.depth, 2, b.num_kv_heads, cfg.prefix_len, b.head_dim)


@pytest.mark.parametrize("option,value,allowed", [
    ("attention", "bogus", "('split', 'joint', 'flex')"),
    ("prefix_attention", "flash", "('manual', 'sdpa')"),
    ("fast_path", "false", "True or False"),
    ("compile", 1, "True or False"),
    ("sync_prefix", None, "True or False"),
    ("shared_views", "yes", "True or False"),
    ("online_softmax", "no", "True or False"),
])
def test_a_bad_backend_option_is_refused_naming_it(option: str, value, allowed: str) -> None:
    cfg = tiny()
    message = re.escape(f"{option}: expected ") + ".*" + re.escape(f"{allowed}, received {value!r}")
    with pytest.raises(ValueError, match=f"^{message}$"):
        TorchBackend.from_policy(_policy(cfg), cfg, "cpu", **{option: value})
    if option in ("attention", "prefix_attention"):
        with pytest.raises(ValueError, match=f"^{message}$"):
            FastPolicy(_policy(cfg), **{option: value})


def test_bench_torch_options_reach_the_backend_constructor() -> None:
    base = ["--backend", "torch", "--random-weights", "--preset", "tiny", "--device", "cpu"]
    backend = bench.make_backend(bench.parse_args(
        base + ["--torch-option", "fast_path=off", "--torch-option", " prefix_attention = sdpa", "--torch-option",
                "sync_prefix=False", "--torch-option", "shared_views=off", "--torch-option", "online_softmax=no"]))
    assert (backend.fast_path, backend.prefix_attention, backend.sync_prefix) == (False, "sdpa", False)
    assert (backend.shared_views, backend.online_softmax) == (False, False)
    assert (backend.compile, backend.attention) == (True, "split")  # the defaults
    with pytest.raises(ValueError, match=r"^attention: expected .*received 'bogus'$"):
        bench.make_backend(bench.parse_args(base + ["--torch-option", "attention=bogus"]))
    with pytest.raises(TypeError, match="has no option 'fastpath'"):
        bench.make_backend(bench.parse_args(["--backend", "torch", "--torch-option", "fastpath=false"]))
    with pytest.raises(SystemExit):
        bench.make_backend(bench.parse_args(["--torch-option", "fast_path=false"]))  # onnxruntime
    with pytest.raises(SystemExit):
        bench.parse_args(["--torch-option", "fast_path"])  # not NAME=VALUE


def test_patch_convolution_as_one_gemm() -> None:
    conv = torch.nn.Conv2d(4, 24, kernel_size=(8, 4), stride=(8, 4))
    x = torch.randn(2, 4, 16, 32)
    with torch.no_grad():
        assert torch.allclose(_patch_conv(x, conv.weight, conv.bias), conv(x), atol=1e-5)


@pytest.mark.parametrize("cfg_fn", [tiny, _two_kv_heads], ids=["tiny", "two_kv_heads"])
@pytest.mark.parametrize("attention", ["split", "joint", "flex"])
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


def _view_rows(cfg: VlaConfig, feeds: dict) -> dict:
    """Row 0 the observation, row 1 its camera 0 alone: what the pipeline feeds a ``cameras`` request."""
    rows = view_feeds({name: value.numpy() for name, value in feeds.items()}, plan_views("cameras", cfg.max_cameras, 2))
    return {name: torch.from_numpy(value) for name, value in rows.items()}


@pytest.mark.parametrize("cfg_fn", [tiny, _two_kv_heads], ids=["tiny", "two_kv_heads"])
@pytest.mark.parametrize("prefix_attention", ["manual", "sdpa"])
def test_both_camera_views_in_one_pass_equal_the_vision_engine_on_the_two_rows(cfg_fn, prefix_attention: str) -> None:
    cfg = cfg_fn()
    reference = _policy(cfg)
    policy = copy.deepcopy(reference)
    fast = FastPolicy(policy, compile=False, prefix_attention=prefix_attention)
    args = _args(cfg, _view_rows(cfg, _feeds(cfg, seed=4)))
    with torch.no_grad():
        ref_kv, ref_mask = reference.vision_engine(*args)
        with fast.installed():
            kv, mask = fast.encode_views(*args)
    assert torch.equal(mask, ref_mask)
    assert kv.shape == ref_kv.shape
    kept = mask[:, None, None, None, :, None]
    scale = max(1.0, float(ref_kv.abs().max()))
    assert float(((kv - ref_kv) * kept).abs().max()) <= TOLERANCE * scale
    left_out = torch.ones(cfg.prefix_len, dtype=torch.bool)
    left_out[fast.view_positions] = False
    assert int(left_out.sum()) == (cfg.max_cameras - 1) * cfg.tokens_per_camera
    assert float(kv[1][..., left_out, :].abs().max()) == 0.0  # row 1's other camera slots are not computed
    assert float((kv[1] - kv[0]).abs().max()) > 1e-2  # the views differ: row 1 did not attend to row 0


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double().flatten(), b.double().flatten()
    return float(a64 @ b64 / (a64.norm() * b64.norm() + 1e-30))


@cuda_only
def test_fast_path_on_cuda_in_bf16_follows_the_policy_through_the_hooks() -> None:
    cfg = tiny()
    reference = _policy(cfg).to("cuda", torch.bfloat16)
    policy = copy.deepcopy(reference)
    fast = FastPolicy(policy)
    args = [t.cuda() for t in _args(cfg, _feeds(cfg))]
    samples = 3
    x = torch.randn((samples, cfg.action_horizon, cfg.action_dim), generator=torch.Generator().manual_seed(3)).cuda()
    t = torch.full((1,), 0.6, device="cuda")
    with torch.inference_mode():
        ref_kv, ref_mask = reference.vision_engine(*args)
        with fast.installed():
            kv, mask = policy.vision_engine(*args)
        own_kv, _ = policy.vision_engine(*args)
        ref_v = reference.action_expert(x, t.expand(samples), ref_kv.expand(samples, *ref_kv.shape[1:]),
                                        ref_mask.expand(samples, -1))
        v = fast.velocity(x, t, fast.modulation_table(t)[0], *fast.pad_prefix(kv[0], mask[0]))
    assert torch.equal(mask, ref_mask)
    assert _cosine(kv, ref_kv) >= 0.999 and _cosine(v, ref_v) >= 0.999
    assert _cosine(own_kv, ref_kv) >= 0.99999  # uninstalled: the policy's own modules again


@cuda_only
@pytest.mark.parametrize("options", [
    {},
    {"fast_path": False},
    {"compile": False, "attention": "joint", "prefix_attention": "sdpa", "sync_prefix": False},
    {"shared_views": False},
    {"attention": "flex", "online_softmax": False},
], ids=["default", "policy-as-written", "eager-joint-sdpa-async", "views-as-rows", "flex-plain-softmax"])
def test_cuda_backend_serves_its_options_and_agrees_with_the_cpu(options: dict) -> None:
    cfg = tiny()
    policy = _policy(cfg)
    observations = bench.bench_observations(cfg, 2, cfg.max_cameras, lidar=True, seed=5)
    chunks, described = {}, {}
    for device, device_options in (("cpu", {}), ("cuda", options)):
        backend = TorchBackend.from_policy(copy.deepcopy(policy), cfg, device, **device_options)
        with InferencePipeline(backend, num_samples=4, pipelining=True, owns_backend=True) as pipeline:
            chunks[device] = [pipeline.infer(o, steps=5, seed=i).actions for i, o in enumerate(observations)]
            described = backend.describe()
    fast_path = options.get("fast_path", True)
    assert described["fast_path"] is fast_path, described["fast_path_note"]
    if fast_path:
        assert described["compile"] is options.get("compile", True), described["fast_path_note"]
        assert (described["attention"], described["prefix_attention"]) == (
            options.get("attention", "split"), options.get("prefix_attention", "manual"))
        assert described["shared_views"] is options.get("shared_views", True), described["fast_path_note"]
        assert described["online_softmax"] is options.get("online_softmax", True)
    assert described["sync_prefix"] is options.get("sync_prefix", True)
    for gpu, cpu in zip(chunks["cuda"], chunks["cpu"]):
        assert _cosine(torch.from_numpy(gpu), torch.from_numpy(cpu)) >= 0.999
        assert np.isfinite(gpu).all()
