"""Training pieces of the tiny policy: the path loss, the uninformative-input scrambles, and a few
real optimisation steps on a freshly generated training set."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_inference.model.config import tiny
from vla_inference.model.policy import build_policy
from vla_inference.model.train import TrainSettings, make_uninformative, train, trajectory_loss
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


def test_uninformative_feeds_scramble_a_copy(small_set):
    indices = np.arange(len(small_set))
    feeds = small_set.vision_feeds(indices, np.full(len(indices), 3), np.ones(len(indices), dtype=bool))
    original = {k: v.copy() for k, v in feeds.items()}
    scrambled = make_uninformative(feeds, np.random.default_rng(3))
    for name, value in original.items():
        np.testing.assert_array_equal(feeds[name], value)  # the input is untouched
    for name in ("camera_mask", "lidar_range", "lidar_mask", "text_mask", "state"):
        np.testing.assert_array_equal(scrambled[name], original[name])
    for row in range(len(indices)):
        same_images = np.array_equal(scrambled["images"][row], original["images"][row])
        if not same_images:  # whole tiles moved: every camera keeps its pixel values
            for camera in range(3):
                np.testing.assert_allclose(np.sort(scrambled["images"][row, camera].ravel()),
                                           np.sort(original["images"][row, camera].ravel()))
        same_text = np.array_equal(scrambled["text_tokens"][row], original["text_tokens"][row])
        assert not (same_images and same_text), f"row {row} left unscrambled"
        length = int(original["text_mask"][row].sum())
        assert sorted(scrambled["text_tokens"][row, :length]) == sorted(original["text_tokens"][row, :length])


def test_a_few_training_steps_update_the_policy(small_set):
    torch.manual_seed(0)
    policy = build_policy(tiny())
    before = [p.detach().clone() for p in policy.parameters()]
    settings = TrainSettings(steps=3, batch=4, warmup=1, uninformative_fraction=0.25, ema_decay=0.0)
    losses, aux = train(policy, small_set, settings)
    assert len(losses) == 3 and len(aux) == 3
    assert all(np.isfinite(losses)) and all(np.isfinite(list(a.values())).all() for a in aux)
    assert "patch_colour" in aux[0] and "state_pole" in aux[0]
    changed = sum(not torch.equal(b, p) for b, p in zip(before, policy.parameters()))
    assert changed > len(before) // 2
    assert not policy.training
