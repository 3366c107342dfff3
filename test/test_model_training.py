"""Training pieces of the tiny policy: the path loss, the scrambled commands, and a few
real optimisation steps on a freshly generated training set."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_inference.lab.train import TrainSettings, scramble_commands, train, trajectory_loss
from vla_inference.model.policy import build_policy
from vla_inference.spec.config import tiny
from vla_inference.synthetic.dataset import generate_training_set

SCALE = torch.tensor([0.03, 0.03, 0.03, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_trajectory_loss_weighs_a_repeated_bias_above_cancelling_noise():
    actions = torch.zeros(1, 16, 8)
    assert float(trajectory_loss(actions, actions, SCALE)) == 0.0
    bias = actions.clone()
    bias[..., 0] = 0.001
    alternating = actions.clone()
    alternating[..., 0] = 0.001 * (-1.0) ** torch.arange(16)
    # Same per-step error; only the bias moves the end point, and the loss says so.
    assert float(((bias - actions) ** 2).sum()) == pytest.approx(float(((alternating - actions) ** 2).sum()))
    biased, cancelling = float(trajectory_loss(bias, actions, SCALE)), float(trajectory_loss(alternating, actions, SCALE))
    steps = np.arange(1, 17)
    assert biased == pytest.approx(np.mean((steps * 0.001 / 0.03) ** 2) / 3, rel=1e-5)
    assert biased > 20 * cancelling


@pytest.fixture(scope="module")
def small_set():
    return generate_training_set(3, 2)


def test_scrambled_commands_permute_a_copy_and_keep_the_scene(small_set):
    indices = np.arange(len(small_set))
    feeds = small_set.vision_feeds(indices, np.full(len(indices), 3), np.ones(len(indices), dtype=bool))
    original = {k: v.copy() for k, v in feeds.items()}
    scrambled = scramble_commands(feeds, np.random.default_rng(3))
    for name, value in original.items():
        np.testing.assert_array_equal(feeds[name], value)  # the input is untouched
        if name != "text_tokens":
            np.testing.assert_array_equal(scrambled[name], value)
    for row in range(len(indices)):
        length = int(original["text_mask"][row].sum())
        assert not np.array_equal(scrambled["text_tokens"][row], original["text_tokens"][row]), f"row {row}"
        assert sorted(scrambled["text_tokens"][row, :length]) == sorted(original["text_tokens"][row, :length])
        np.testing.assert_array_equal(scrambled["text_tokens"][row, length:], original["text_tokens"][row, length:])


def test_scrambled_command_fraction_and_precision_are_checked(small_set):
    with pytest.raises(ValueError, match="scrambled_command_fraction"):
        train(build_policy(tiny()), small_set, TrainSettings(steps=1, scrambled_command_fraction=1.0))
    with pytest.raises(ValueError, match="precision"):
        train(build_policy(tiny()), small_set, TrainSettings(steps=1, precision="fp16"))


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_few_training_steps_update_the_policy(small_set, precision):
    torch.manual_seed(0)
    policy = build_policy(tiny())
    before = [p.detach().clone() for p in policy.parameters()]
    settings = TrainSettings(steps=3, batch=4, warmup=1, scrambled_command_fraction=0.25, ema_decay=0.0,
                             precision=precision)
    losses, aux = train(policy, small_set, settings)
    assert len(losses) == 3 and len(aux) == 3
    assert all(np.isfinite(losses)) and all(np.isfinite(list(a.values())).all() for a in aux)
    assert "patch_colour" in aux[0] and "state_pole" in aux[0]
    changed = sum(not torch.equal(b, p) for b, p in zip(before, policy.parameters()))
    assert changed > len(before) // 2
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    assert not policy.training
