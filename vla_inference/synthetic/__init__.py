"""The synthetic reach task shared by training, evaluation, the simulated sensors and benchmarks.

numpy + OpenCV only (no torch), so ROS sensor simulators can import it.
"""
from vla_inference.synthetic.dataset import EVAL_SEED_BASE, TrainingSet, eval_scenes, generate_training_set, make_observation
from vla_inference.synthetic.lidar import LIDAR_ORIGIN, lidar_points, lidar_range_image
from vla_inference.synthetic.render import CAMERAS, NUM_CAMERAS, render_camera
from vla_inference.synthetic.scene import (
    SUCCESS_TOLERANCE_M,
    Scene,
    chunk_goal,
    expert_actions,
    generate_scene,
    is_success,
    path_clearance,
    simulate,
)

__all__ = [
    "CAMERAS",
    "EVAL_SEED_BASE",
    "LIDAR_ORIGIN",
    "NUM_CAMERAS",
    "SUCCESS_TOLERANCE_M",
    "Scene",
    "TrainingSet",
    "chunk_goal",
    "eval_scenes",
    "expert_actions",
    "generate_scene",
    "generate_training_set",
    "is_success",
    "lidar_points",
    "lidar_range_image",
    "make_observation",
    "path_clearance",
    "render_camera",
    "simulate",
]
