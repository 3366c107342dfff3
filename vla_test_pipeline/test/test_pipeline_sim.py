"""The synthetic robot's episode logic and sensor conversions, without ROS."""
import dataclasses

import numpy as np
import pytest

from vla_inference.synthetic.lidar import lidar_points
from vla_inference.synthetic.scene import expert_actions, generate_scene
from vla_test_pipeline.episode import EpisodeSettings, ReachEpisode, expert_path
from vla_test_pipeline.sim_sensors import RINGS, camera_indices, organised_sweep, render_bgr

SCENES = [1_000_000 + i for i in range(6)]


def run_expert(episode: ReachEpisode, start: float, period: float = 0.05) -> tuple:
    """Feed the expert's chunks (replanned each chunk) until the episode ends; returns (result, time)."""
    now = start
    while True:
        replanned = dataclasses.replace(episode.scene, ee_start=tuple(episode.position))
        for row in expert_actions(replanned):
            now += period
            episode.apply(row, now)
            result = episode.check(now)
            if result is not None:
                return result, now


@pytest.mark.parametrize("seed", SCENES)
def test_expert_commands_succeed_after_the_dwell(seed):
    settings = EpisodeSettings(timeout_s=30.0, settle_s=0.2, dwell_s=0.3)
    episode = ReachEpisode(0, seed, now=0.0, wall_time=100.0, settings=settings)
    for t in np.arange(0.0, 0.2, 0.05):  # commands inside the settle time do not move the arm
        assert not episode.apply([0.1, 0.0, 0.0], t)
    result, _ = run_expert(episode, 0.2)
    assert result.success and result.reason == "success"
    assert result.final_error_m <= settings.tolerance_m
    assert result.ignored_commands == 4 and result.started_at == 100.0
    np.testing.assert_allclose(result.path[-1], result.target, atol=1e-4)
    np.testing.assert_allclose(result.expert_path[-1], result.target, atol=1e-4)


def test_no_motion_times_out_and_passing_through_does_not_count():
    settings = EpisodeSettings(timeout_s=2.0, settle_s=0.0, dwell_s=0.5)
    episode = ReachEpisode(3, SCENES[0], now=0.0, wall_time=0.0, settings=settings)
    offset = episode.scene.target_position - episode.position
    episode.apply(offset, 0.1)  # exactly on target ...
    assert episode.check(0.1) is None
    episode.apply([0.2, 0.0, 0.0], 0.2)  # ... and off again before the dwell ended
    assert episode.check(0.7) is None
    result = episode.check(2.0)
    assert result is not None and not result.success and result.reason == "timeout"
    assert result.episode == 3 and result.final_error_m == pytest.approx(0.2, abs=1e-6)


def test_state_follows_the_end_effector_and_non_finite_commands_are_ignored():
    episode = ReachEpisode(0, SCENES[1], now=0.0, wall_time=0.0, settings=EpisodeSettings(settle_s=0.0))
    before = episode.state()
    assert before.shape == (8,) and before.dtype == np.float32
    assert episode.apply([0.01, -0.02, 0.03, 1.0], 0.1)
    np.testing.assert_allclose(episode.state()[:3], before[:3] + [0.01, -0.02, 0.03], atol=1e-6)
    assert not episode.apply([np.nan, 0.0, 0.0], 0.2)


def test_expert_path_replans_until_the_target_even_when_slowed():
    for seed in SCENES:
        scene = generate_scene(seed)
        path = expert_path(scene)
        np.testing.assert_allclose(path[0], scene.ee_start)
        np.testing.assert_allclose(path[-1], scene.target_position, atol=1e-9)


def test_organised_sweep_puts_every_return_back_on_its_ring():
    points = lidar_points(generate_scene(SCENES[2]))
    cloud = organised_sweep(points)
    assert cloud.shape == (RINGS, 1024, 4) and cloud.dtype == np.float32
    valid = np.isfinite(cloud[..., 0])
    assert valid.sum() == len(points)
    np.testing.assert_array_equal(np.sort(cloud[valid][:, :3], axis=0), np.sort(points, axis=0))
    elevation = np.degrees(np.arctan2(cloud[..., 2], np.hypot(cloud[..., 0], cloud[..., 1])))
    ring_means = np.nanmean(elevation, axis=1)
    np.testing.assert_allclose(ring_means, np.linspace(-15, 15, 16), atol=0.05)
    assert np.all(cloud[valid][:, 3] > 0)


def test_cameras_render_bgr_of_the_named_view():
    assert camera_indices(["front", "left", "right"]) == (0, 1, 2)
    with pytest.raises(ValueError):
        camera_indices(["rear"])
    from vla_inference.synthetic.render import render_camera
    scene = generate_scene(SCENES[0])
    bgr = render_bgr(scene, 1, 64, 48)
    assert bgr.shape == (48, 64, 3) and bgr.flags.c_contiguous
    np.testing.assert_array_equal(bgr[:, :, ::-1], render_camera(scene, 1, 64, 48))
