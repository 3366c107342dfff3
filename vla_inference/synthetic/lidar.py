"""A 16-ring spinning LiDAR (VLP-16-like: +-15 deg, 2 deg apart, 1024 azimuth steps) ray-cast
against the scene's poles, the table, the floor and the room's walls.

The sensor sits on a mast at ``LIDAR_ORIGIN`` (world frame), level, axes parallel to the world's;
``lidar_points`` returns the returns in that sensor frame. At 0.35 m above the table its lowest
beam passes over the 5 cm cubes, so the cubes never appear in the sweep and the poles never appear
in the cameras. Range noise and dropped returns are drawn from ``Scene.lidar_seed``.
"""
from __future__ import annotations

import numpy as np

from vla_inference.sensors.lidar_projection import DEFAULT_COLS, project_to_range_image
from vla_inference.synthetic.scene import TABLE_X, TABLE_Y, Scene

LIDAR_ORIGIN = np.array([0.0, 0.0, 0.35])
RING_ELEVATIONS_DEG = np.linspace(-15.0, 15.0, 16)
AZIMUTH_STEPS = DEFAULT_COLS
FLOOR_Z = -0.75
WALLS_X = (-2.0, 3.0)
WALLS_Y = (-2.5, 2.5)
RANGE_NOISE_M = 0.005
DROPOUT = 0.01


def beam_directions() -> np.ndarray:
    """Unit beam directions [rings * AZIMUTH_STEPS, 3]; azimuths at range-image column centres."""
    azimuth = np.pi * (1.0 - 2.0 * (np.arange(AZIMUTH_STEPS) + 0.5) / AZIMUTH_STEPS)
    elevation = np.radians(RING_ELEVATIONS_DEG)
    el, az = np.meshgrid(elevation, azimuth, indexing="ij")
    return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1).reshape(-1, 3)


def _plane_hits(origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Distance to the first of floor/walls/table along each beam (inf where none)."""
    hits = np.full(dirs.shape[0], np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis, value in ((2, FLOOR_Z), (0, WALLS_X[0]), (0, WALLS_X[1]), (1, WALLS_Y[0]), (1, WALLS_Y[1])):
            t = (value - origin[axis]) / dirs[:, axis]
            hits = np.where((t > 0) & (t < hits), t, hits)
        t = -origin[2] / dirs[:, 2]
        x = origin[0] + t * dirs[:, 0]
        y = origin[1] + t * dirs[:, 1]
        on_table = (t > 0) & (x >= TABLE_X[0]) & (x <= TABLE_X[1]) & (y >= TABLE_Y[0]) & (y <= TABLE_Y[1])
    return np.where(on_table & (t < hits), t, hits)


def _pole_hits(origin: np.ndarray, dirs: np.ndarray, scene: Scene) -> np.ndarray:
    """Distance to the nearest pole surface along each beam (inf where none)."""
    hits = np.full(dirs.shape[0], np.inf)
    horizontal_sq = dirs[:, 0] ** 2 + dirs[:, 1] ** 2
    for pole in scene.obstacles:
        ox, oy = origin[0] - pole.x, origin[1] - pole.y
        b = ox * dirs[:, 0] + oy * dirs[:, 1]
        c = ox * ox + oy * oy - pole.radius**2
        disc = b * b - horizontal_sq * c
        with np.errstate(invalid="ignore", divide="ignore"):
            t = (-b - np.sqrt(disc)) / horizontal_sq
        z = origin[2] + t * dirs[:, 2]
        valid = (disc >= 0) & (t > 0) & (z >= 0.0) & (z <= pole.height)
        hits = np.where(valid & (t < hits), t, hits)
    return hits


def lidar_points(scene: Scene) -> np.ndarray:
    """One sweep as float32 [N, 3] in the LiDAR frame (N <= 16 * 1024; dropped returns omitted)."""
    dirs = beam_directions()
    distance = np.minimum(_plane_hits(LIDAR_ORIGIN, dirs), _pole_hits(LIDAR_ORIGIN, dirs, scene))
    rng = np.random.default_rng([scene.lidar_seed, 0x11DA5])
    distance = distance + rng.normal(0.0, RANGE_NOISE_M, size=distance.shape)
    keep = np.isfinite(distance) & (rng.random(distance.shape) >= DROPOUT)
    return (dirs[keep] * distance[keep, None]).astype(np.float32)


def lidar_range_image(scene: Scene) -> np.ndarray:
    """The sweep projected exactly as the serving LiDAR adapter projects it: float32 [64, 1024]."""
    return project_to_range_image(lidar_points(scene))
