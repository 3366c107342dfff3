"""What the simulated sensors emit for a scene, as numpy arrays (the ROS shells only wrap them).

Cameras: the synthetic renderer's RGB, turned into the bgr8 a typical camera driver publishes.
LiDAR: the generator returns the sweep's returns only ([N, 3], dropped beams omitted); a spinning
LiDAR driver publishes an organised cloud (one row per ring, one column per azimuth step, NaN where
a beam had no return), so each return is put back at its beam's ring and column, recovered from its
direction, and given a synthetic intensity that falls off with range.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from vla_inference.synthetic.lidar import AZIMUTH_STEPS, RING_ELEVATIONS_DEG, lidar_points
from vla_inference.synthetic.render import render_camera
from vla_inference.synthetic.scene import Scene
from vla_test_pipeline.graph import CAMERA_NAMES

RINGS = len(RING_ELEVATIONS_DEG)


def camera_indices(names: Sequence[str]) -> Tuple[int, ...]:
    """Renderer camera index of each name (front, left, right = 0, 1, 2, as the policy was trained)."""
    unknown = [name for name in names if name not in CAMERA_NAMES]
    if unknown:
        raise ValueError(f"camera_names: unknown {unknown}; expected names from {list(CAMERA_NAMES)}")
    return tuple(CAMERA_NAMES.index(name) for name in names)


def render_bgr(scene: Scene, index: int, width: int, height: int) -> np.ndarray:
    """uint8 [height, width, 3] BGR, C-contiguous."""
    return np.ascontiguousarray(render_camera(scene, index, width, height)[:, :, ::-1])


def organised_sweep(points: np.ndarray) -> np.ndarray:
    """float32 [RINGS, AZIMUTH_STEPS, 4] (x, y, z, intensity); NaN where the beam had no return."""
    cloud = np.full((RINGS, AZIMUTH_STEPS, 4), np.nan, dtype=np.float32)
    xyz = np.asarray(points, dtype=np.float64)
    distance = np.linalg.norm(xyz, axis=1)
    elevation = np.degrees(np.arcsin(np.clip(xyz[:, 2] / np.maximum(distance, 1e-12), -1.0, 1.0)))
    spacing = (RING_ELEVATIONS_DEG[-1] - RING_ELEVATIONS_DEG[0]) / (RINGS - 1)
    ring = np.rint((elevation - RING_ELEVATIONS_DEG[0]) / spacing).astype(np.int64)
    azimuth = np.arctan2(xyz[:, 1], xyz[:, 0])
    column = np.rint((1.0 - azimuth / np.pi) * AZIMUTH_STEPS / 2.0 - 0.5).astype(np.int64) % AZIMUTH_STEPS
    valid = (ring >= 0) & (ring < RINGS) & (distance > 0)
    cloud[ring[valid], column[valid], :3] = xyz[valid]
    cloud[ring[valid], column[valid], 3] = 100.0 / (1.0 + distance[valid])
    return cloud


def scene_sweep(scene: Scene) -> np.ndarray:
    return organised_sweep(lidar_points(scene))
