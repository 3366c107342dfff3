"""Dispersion confidence, AUROC, scrambles and the flow schedule (pure NumPy, no model)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vla_inference.lab.confidence_eval import random_text, scramble, shuffle_patches
from vla_inference.runtime.confidence import (
    DEFAULT_SCALE,
    auroc,
    confidence_from_dispersion,
    sample_dispersion,
    summarize_samples,
)
from vla_inference.spec.flow import flow_schedule
from vla_inference.spec.observation import Observation


def test_identical_samples_are_fully_confident() -> None:
    samples = np.tile(np.arange(12, dtype=np.float32).reshape(1, 3, 4), (5, 1, 1))
    mean, confidence, dispersion = summarize_samples(samples)
    assert dispersion == 0.0 and confidence == 1.0
    np.testing.assert_array_equal(mean, samples[0])


def test_dispersion_is_the_rms_of_per_element_standard_deviations() -> None:
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((4, 6, 3)) * np.array([0.1, 1.0, 2.0])
    expected = math.sqrt(np.mean(np.var(samples, axis=0, ddof=1)))
    assert sample_dispersion(samples) == pytest.approx(expected)
    assert confidence_from_dispersion(DEFAULT_SCALE, DEFAULT_SCALE) == pytest.approx(1 / math.e)


def test_action_scale_weighs_each_dimension_in_its_own_units() -> None:
    rng = np.random.default_rng(3)
    samples = rng.standard_normal((6, 4, 2)) * np.array([0.03, 1.0])
    raw = sample_dispersion(samples)
    scaled = sample_dispersion(samples, action_scale=[0.03, 1.0])
    assert scaled == pytest.approx(sample_dispersion(samples / np.array([0.03, 1.0])))
    assert scaled > raw
    with pytest.raises(ValueError, match="action_scale"):
        sample_dispersion(samples, action_scale=[1.0, 0.0])


def test_path_dispersion_is_the_spread_of_the_cumulative_positions() -> None:
    rng = np.random.default_rng(4)
    samples = rng.standard_normal((4, 16, 8)) * 0.01
    expected = math.sqrt(np.mean(np.var(np.cumsum(samples[:, :, :3], axis=1), axis=0, ddof=1)))
    assert sample_dispersion(samples, path_dims=[0, 1, 2]) == pytest.approx(expected)
    gripper_only = np.zeros((4, 16, 8))
    gripper_only[:, :, 3] = rng.choice([-1.0, 1.0], size=(4, 16))
    assert sample_dispersion(gripper_only, path_dims=[0, 1, 2]) == 0.0
    with pytest.raises(ValueError, match="path_dims"):
        sample_dispersion(samples, path_dims=[8])


def test_a_small_steady_disagreement_counts_more_on_the_path_than_per_step() -> None:
    """Two samples 1 mm/step apart end 16 mm apart: the path measure sees that, per step it is 1 mm."""
    samples = np.zeros((2, 16, 3))
    samples[1, :, 0] = 0.001
    per_step = sample_dispersion(samples)
    path = sample_dispersion(samples, path_dims=[0, 1, 2])
    assert per_step == pytest.approx(0.001 / math.sqrt(2) / math.sqrt(3))
    assert path > 5 * per_step


def test_confidence_falls_as_samples_spread() -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal((8, 16, 8))
    scores = [summarize_samples(base * spread)[1] for spread in (0.0, 0.01, 0.1, 1.0)]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_single_sample_and_bad_inputs() -> None:
    assert math.isnan(sample_dispersion(np.zeros((1, 2, 2))))
    assert math.isnan(confidence_from_dispersion(math.nan))
    with pytest.raises(ValueError, match="samples"):
        sample_dispersion(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="scale"):
        confidence_from_dispersion(0.1, scale=0.0)


def test_auroc_counts_ties_half() -> None:
    assert auroc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auroc([0.1], [0.9]) == 0.0
    assert auroc([0.5, 0.5], [0.5, 0.5]) == 0.5
    assert auroc([0.3, 0.7], [0.5]) == 0.5
    with pytest.raises(ValueError):
        auroc([], [0.1])


def test_scrambles_keep_the_observation_valid() -> None:
    from vla_inference.spec.config import tiny

    cfg = tiny()
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    shuffled = shuffle_patches(image, 16, rng)
    assert shuffled.shape == image.shape and not np.array_equal(shuffled, image)
    assert sorted(map(bytes, shuffled.reshape(14, 16, 14, 16, 3).transpose(0, 2, 1, 3, 4).reshape(196, -1))) == \
        sorted(map(bytes, image.reshape(14, 16, 14, 16, 3).transpose(0, 2, 1, 3, 4).reshape(196, -1)))
    lidar = rng.uniform(0, 10, (cfg.lidar.rows, cfg.lidar.cols)).astype(np.float32)
    obs = Observation([image, image], "reach the red block", np.zeros(cfg.state_dim, np.float32), lidar)
    for mode in ("patches", "text", "all", "lidar_dropped"):
        scrambled = scramble(obs, mode, cfg.vision.patch_size, rng)
        scrambled.validate(cfg)
    assert scramble(obs, "lidar_dropped", 16, rng).lidar_range is None
    assert scramble(obs, "text", 16, rng).text != obs.text
    assert random_text(20, rng).strip()
    with pytest.raises(ValueError, match="mode"):
        scramble(obs, "colour", 16, rng)


def test_flow_schedule_runs_from_one_to_zero() -> None:
    times, dt = flow_schedule(4)
    np.testing.assert_array_equal(times, np.array([1.0, 0.75, 0.5, 0.25], dtype=np.float32))
    assert dt == np.float32(-0.25) and times.dtype == np.float32
    times, dt = flow_schedule(3)
    assert times[0] == 1.0 and times[-1] + dt == pytest.approx(0.0, abs=1e-7)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            flow_schedule(bad)
