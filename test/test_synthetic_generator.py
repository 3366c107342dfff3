"""The synthetic reach task: determinism, rendering, LiDAR, ground truth and observations."""
import dataclasses
import subprocess
import sys

import cv2
import numpy as np
import pytest

from vla_inference.spec.config import tiny
from vla_inference.spec.engine_spec import VISION, check_inputs, engine_specs
from vla_inference.spec.observation import vision_feeds
from vla_inference.synthetic import (
    EVAL_SEED_BASE,
    SUCCESS_TOLERANCE_M,
    chunk_goal,
    expert_actions,
    generate_scene,
    generate_training_set,
    is_success,
    lidar_points,
    lidar_range_image,
    make_observation,
    path_clearance,
    render_camera,
    simulate,
)
from vla_inference.synthetic.scene import (
    COLOR_NAMES,
    FAST_STEP_M,
    GRIPPER_CLOSE,
    GRIPPER_OPEN,
    NEAR_CLEARANCE_M,
    SLOW_STEP_M,
    Obstacle,
)

SEEDS = range(40)


def scene_with_pole_near_path():
    return next(s for s in map(generate_scene, SEEDS) if path_clearance(s) < NEAR_CLEARANCE_M)


def scene_with_clear_path():
    return next(s for s in map(generate_scene, SEEDS) if not s.obstacles)


def test_same_seed_same_scene_renders_and_sweep():
    a, b = generate_scene(1234), generate_scene(1234)
    assert a == b
    for cam in range(3):
        assert np.array_equal(render_camera(a, cam, 224, 224), render_camera(b, cam, 224, 224))
    assert np.array_equal(lidar_points(a), lidar_points(b))
    assert np.array_equal(expert_actions(a), expert_actions(b))


def test_different_seeds_differ():
    a, b = generate_scene(1), generate_scene(2)
    assert a != b
    assert not np.array_equal(render_camera(a, 0, 224, 224), render_camera(b, 0, 224, 224))


def test_scene_contents_follow_the_task_definition():
    for scene in map(generate_scene, SEEDS):
        colors = [b.color for b in scene.blocks]
        assert 3 <= len(colors) <= 4 and len(set(colors)) == len(colors)
        assert set(colors) <= set(COLOR_NAMES)
        assert scene.target.color in scene.text
        assert len(scene.obstacles) <= 2
        assert scene.state.shape == (8,) and scene.state.dtype == np.float32
        assert np.array_equal(scene.state[:3], np.float32(scene.ee_start)) and not scene.state[3:].any()


def test_render_any_resolution_matches_a_stretched_render():
    scene = generate_scene(7)
    small = render_camera(scene, 1, 224, 224)
    large = render_camera(scene, 1, 640, 480)
    assert small.shape == (224, 224, 3) and large.shape == (480, 640, 3) and small.dtype == np.uint8
    stretched = cv2.resize(large, (224, 224), interpolation=cv2.INTER_AREA)
    assert np.abs(stretched.astype(np.int16) - small).mean() < 2.0
    with pytest.raises(ValueError, match="camera index"):
        render_camera(scene, 3, 224, 224)


def test_cameras_see_every_block_in_their_colour():
    scene = generate_scene(11)
    for cam in range(3):
        image = render_camera(scene, cam, 224, 224).astype(np.int16)
        for block in scene.blocks:
            close = np.abs(image - np.array(block.rgb)).sum(axis=2) < 90
            assert close.sum() >= 15, (cam, block.color)


def test_poles_are_invisible_to_cameras_but_seen_by_the_lidar():
    scene = scene_with_pole_near_path()
    empty = dataclasses.replace(scene, obstacles=())
    for cam in range(3):
        assert np.array_equal(render_camera(scene, cam, 224, 224), render_camera(empty, cam, 224, 224))
    with_poles, without = lidar_range_image(scene), lidar_range_image(empty)
    nearer = (with_poles > 0) & (without > 0) & (with_poles < without - 0.5)
    assert nearer.sum() >= 10


def test_lidar_sweep_is_16_rings_in_the_range_image():
    scene = generate_scene(3)
    points = lidar_points(scene)
    assert points.dtype == np.float32 and points.ndim == 2 and points.shape[1] == 3
    assert 0.97 * 16 * 1024 <= len(points) <= 16 * 1024
    image = lidar_range_image(scene)
    assert image.shape == (64, 1024)
    assert np.count_nonzero(image.any(axis=1)) == 16


def test_clear_path_chunk_reaches_the_target_at_full_speed():
    scene = scene_with_clear_path()
    actions = expert_actions(scene)
    assert actions.shape == (16, 8) and actions.dtype == np.float32
    steps = np.linalg.norm(actions[:, :3], axis=1)
    assert steps.max() == pytest.approx(FAST_STEP_M, abs=1e-6)
    path = simulate(scene.ee_start, actions)
    assert path.shape == (17, 3)
    assert np.linalg.norm(path[-1] - scene.target_position) < 1e-6
    arrived = np.linalg.norm(path[1:] - scene.target_position, axis=1) < 1e-6
    assert np.array_equal(actions[:, 3], np.where(arrived, GRIPPER_CLOSE, GRIPPER_OPEN))
    assert not actions[:, 4:].any()
    assert is_success(path, scene.target_position)


def test_pole_near_path_slows_the_chunk():
    scene = scene_with_pole_near_path()
    slow = expert_actions(scene)
    fast = expert_actions(dataclasses.replace(scene, obstacles=()))
    assert np.linalg.norm(slow[:, :3], axis=1).max() == pytest.approx(SLOW_STEP_M, abs=1e-6)
    assert not np.allclose(slow, fast)
    direction = scene.target_position - np.asarray(scene.ee_start)
    assert np.allclose(np.cross(slow[:, :3].sum(axis=0), direction), 0.0, atol=1e-6)


def test_every_modality_changes_the_ground_truth():
    scene = scene_with_pole_near_path()
    base = expert_actions(scene)
    other_target = dataclasses.replace(scene, target_index=(scene.target_index + 1) % len(scene.blocks))
    moved_start = dataclasses.replace(scene, ee_start=(scene.ee_start[0] + 0.05,) + scene.ee_start[1:])
    far_pole = dataclasses.replace(scene, obstacles=(Obstacle(0.9, 0.45, 0.02, 0.6),))
    for changed in (other_target, moved_start, far_pole):
        assert not np.allclose(expert_actions(changed), base)


def test_success_test_uses_the_tolerance():
    goal = np.array([0.5, 0.0, 0.05])
    assert is_success(np.array([[0.0, 0.0, 0.0], goal + [SUCCESS_TOLERANCE_M * 0.99, 0, 0]]), goal)
    assert not is_success(np.array([[0.0, 0.0, 0.0], goal + [0, SUCCESS_TOLERANCE_M * 1.01, 0]]), goal)
    scene = generate_scene(5)
    assert np.allclose(chunk_goal(scene), simulate(scene.ee_start, expert_actions(scene))[-1])
    with pytest.raises(ValueError, match="actions"):
        simulate(scene.ee_start, np.zeros((16, 2)))


def test_observation_feeds_the_vision_engine():
    cfg = tiny()
    scene = generate_scene(21)
    observations = [make_observation(scene, 1, False), make_observation(scene, 3, True)]
    feeds = vision_feeds(observations, cfg)
    assert check_inputs(engine_specs(cfg)[VISION], feeds) == 2
    assert feeds["camera_mask"].tolist() == [[True, False, False], [True, True, True]]
    assert feeds["lidar_mask"].tolist() == [False, True]
    assert not feeds["lidar_range"][0].any() and feeds["lidar_range"][1].any()
    with pytest.raises(ValueError, match="num_cameras"):
        make_observation(scene, 4, True)


def test_training_set_matches_observations_of_the_same_scenes():
    cfg = tiny()
    data = generate_training_set(num_layouts=2, tasks_per_layout=2, first_seed=40)
    assert len(data) == 4
    first_tasks = np.array([0, 2])
    expected = vision_feeds([make_observation(generate_scene(s)) for s in (40, 41)], cfg)
    got = data.vision_feeds(first_tasks, np.array([3, 3]), np.array([True, True]))
    for name, value in expected.items():
        tolerance = 0.01 if name == "lidar_range" else 0.0  # float16 storage of the sweep
        np.testing.assert_allclose(got[name], value, atol=tolerance, err_msg=name)
    np.testing.assert_array_equal(data.actions[first_tasks], [expert_actions(generate_scene(s)) for s in (40, 41)])
    masked = data.vision_feeds(first_tasks, np.array([1, 2]), np.array([False, True]))
    assert not masked["images"][0, 1:].any() and not masked["lidar_range"][0].any()
    with pytest.raises(ValueError, match="held-out"):
        generate_training_set(num_layouts=2, tasks_per_layout=1, first_seed=EVAL_SEED_BASE - 1)


def test_replanned_tasks_start_part_way_and_leave_the_other_tasks_alone():
    plain = generate_training_set(num_layouts=6, tasks_per_layout=4, first_seed=50)
    mixed = generate_training_set(num_layouts=6, tasks_per_layout=4, first_seed=50, replan_fraction=0.5)
    moved = np.any(plain.state != mixed.state, axis=1)
    assert 0 < moved.sum() < len(moved)
    for name in ("state", "actions", "target_offset", "slow"):
        np.testing.assert_array_equal(getattr(plain, name)[~moved], getattr(mixed, name)[~moved], err_msg=name)
    np.testing.assert_array_equal(plain.images, mixed.images)  # the cameras do not see the arm
    plain_ends = plain.state[moved, :3] + plain.target_offset[moved]
    np.testing.assert_allclose(mixed.state[moved, :3] + mixed.target_offset[moved], plain_ends, atol=1e-6)
    plain_distance = np.linalg.norm(plain.target_offset[moved], axis=1)
    mixed_distance = np.linalg.norm(mixed.target_offset[moved], axis=1)
    assert np.median(mixed_distance / plain_distance) < 0.8, "replanned starts lie part-way to the same target"
    assert np.all(mixed.state[moved, 2] >= 0.01) and np.isfinite(mixed.actions).all()
    with pytest.raises(ValueError, match="replan_fraction"):
        generate_training_set(num_layouts=1, tasks_per_layout=1, replan_fraction=1.5)


def test_synthetic_package_does_not_import_torch():
    code = "import sys, vla_inference.synthetic; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
