"""Parity with LeRobot's own pi0.5 at shapes other than the kit's: fresh random reference models.

For each shape of ``pi05_oracle.SHAPES`` (depth 1-3, head width 8-32, 1-4 key/value heads, other
widths, vocabularies, camera names, state and action sizes), LeRobot 0.4.4 runs in its own venv
(``pi05_reference``) and saves its checkpoint and outputs; this project's loader and model must give
the same per-layer prefix keys/values (valid tokens), velocities at four flow times, and actions,
with all cameras and with a camera masked.
"""
import json

import numpy as np
import pytest
import torch
from pi05_reference import ORACLE_SHAPES, oracle_case
from safetensors.numpy import load_file

from vla_inference.model.pi05 import load_pi05_policy
from vla_inference.spec.lerobot_checkpoint import read_checkpoint

ATOL = 1e-4


@pytest.fixture(scope="module", params=ORACLE_SHAPES)
def case(request):
    directory = oracle_case(request.param)
    info = json.loads((directory / "oracle.json").read_text())
    checkpoint = read_checkpoint(directory / "checkpoint", vision_num_heads=info["siglip"]["num_attention_heads"])
    return info, checkpoint, load_pi05_policy(checkpoint), load_file(str(directory / "oracle.safetensors"))


def _feeds(oracle, camera_mask, state_width):
    images = np.stack([oracle[f"image_{i}"] for i in range(camera_mask.shape[1])], axis=1) * 2 - 1
    batch = images.shape[0]
    return [torch.from_numpy(images.astype(np.float32)), torch.from_numpy(camera_mask),
            torch.zeros(batch, 1, 64, 1024), torch.zeros(batch, dtype=torch.bool),
            torch.from_numpy(oracle["tokens"]), torch.from_numpy(oracle["attention_mask"]),
            torch.zeros(batch, state_width)]


def test_sizes_and_interface_follow_the_reference(case):
    info, checkpoint, _, _ = case
    cfg, io = checkpoint.config, checkpoint.io
    gemma, expert, siglip = info["paligemma"], info["action_expert"], info["siglip"]
    assert (cfg.backbone.width, cfg.backbone.depth, cfg.backbone.mlp_dim, cfg.backbone.num_kv_heads,
            cfg.backbone.head_dim) == (gemma["width"], gemma["depth"], gemma["mlp_dim"], gemma["num_kv_heads"],
                                       gemma["head_dim"])
    assert (cfg.expert.width, cfg.expert.mlp_dim) == (expert["width"], expert["mlp_dim"])
    assert (cfg.vision.width, cfg.vision.mlp_dim, cfg.vision.depth) == (
        siglip["hidden_size"], siglip["intermediate_size"], siglip["num_hidden_layers"])
    assert cfg.text_vocab_size == gemma["vocab_size"]
    assert list(io.camera_keys) == info["shape"]["cameras"]
    assert (io.state_dim, io.action_dim) == (info["shape"]["state_dim"], info["shape"]["action_dim"])


@pytest.mark.parametrize("variant", ["", "masked."])
def test_prefix_keys_values_velocities_and_actions_match(case, variant):
    _, checkpoint, policy, oracle = case
    camera_mask = oracle[f"{variant}image_masks"]
    feeds = _feeds(oracle, camera_mask, checkpoint.config.state_dim)
    with torch.no_grad():
        prefix_kv, prefix_mask = policy.vision_engine(*feeds)
    valid = oracle[f"{variant}prefix_pad_mask"]
    assert np.array_equal(prefix_mask.numpy(), valid)
    for b in range(valid.shape[0]):
        for index, name in ((0, "prefix_k"), (1, "prefix_v")):
            ours = prefix_kv[b, :, index].numpy()[..., valid[b], :]
            theirs = oracle[f"{variant}{name}"][b][..., valid[b], :]
            assert np.abs(ours - theirs).max() <= ATOL, (name, b)
    x = torch.from_numpy(oracle["velocity_x_t"])
    for t, expected in zip(oracle["velocity_t"], oracle[f"{variant}velocity"]):
        with torch.no_grad():
            velocity = policy.action_expert(x, torch.full((x.shape[0],), float(t)), prefix_kv, prefix_mask)
        assert np.abs(velocity.numpy() - expected).max() <= ATOL, float(t)
    chunk = policy.sample(dict(zip([s.name for s in policy.specs["vision"].inputs], feeds)), 10,
                          torch.from_numpy(oracle["noise"])).numpy()
    assert np.abs(chunk - oracle[f"{variant}actions_full"]).max() <= ATOL
    if not variant:
        assert np.abs(chunk[..., :checkpoint.io.action_dim] - oracle["actions"]).max() <= ATOL
