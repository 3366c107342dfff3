"""Spherical projection of a LiDAR point cloud into the model's range image.

The ROS LiDAR adapter and the training data both go through ``project_to_range_image``, so the
policy is served exactly the kind of range image it was trained on.

Conventions (sensor frame: x forward, y left, z up):

* row 0 is the top of the field of view (``fov_up_deg``), row ``rows - 1`` the bottom
  (``fov_down_deg``); a point's row is its elevation rounded to the nearest row, so a beam at
  exactly ``fov_up_deg`` or ``fov_down_deg`` lands on the first or last row;
* column ``cols / 2`` looks straight ahead (azimuth 0), azimuth grows to the left (towards +y) as
  the column index falls, and the column edges sit at ``azimuth = pi * (1 - 2 * col / cols)``;
* a pixel holds the Euclidean range in metres of its nearest return, 0 where there is none;
  points outside ``[min_range, max_range]``, outside the vertical field of view, or with a
  NaN/Inf coordinate are dropped.
"""
from __future__ import annotations

import numpy as np

DEFAULT_ROWS = 64
DEFAULT_COLS = 1024
DEFAULT_FOV_UP_DEG = 15.0
DEFAULT_FOV_DOWN_DEG = -15.0
DEFAULT_MIN_RANGE_M = 0.1
DEFAULT_MAX_RANGE_M = 20.0


def project_to_range_image(
    points: np.ndarray,
    rows: int = DEFAULT_ROWS,
    cols: int = DEFAULT_COLS,
    fov_up_deg: float = DEFAULT_FOV_UP_DEG,
    fov_down_deg: float = DEFAULT_FOV_DOWN_DEG,
    min_range: float = DEFAULT_MIN_RANGE_M,
    max_range: float = DEFAULT_MAX_RANGE_M,
) -> np.ndarray:
    """Project points [N, 3] (sensor frame, metres) to a float32 [rows, cols] range image."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points: expected shape (N, 3), received {points.shape}")
    if rows < 1 or cols < 1:
        raise ValueError(f"rows/cols: expected >= 1, received ({rows}, {cols})")
    if not fov_up_deg > fov_down_deg:
        raise ValueError(f"fov: expected fov_up_deg > fov_down_deg, received ({fov_up_deg}, {fov_down_deg})")
    if not 0.0 <= min_range < max_range:
        raise ValueError(f"range: expected 0 <= min_range < max_range, received ({min_range}, {max_range})")

    image = np.zeros((rows, cols), dtype=np.float32)
    xyz = points.astype(np.float64, copy=False)
    xyz = xyz[np.isfinite(xyz).all(axis=1)]
    if xyz.shape[0] == 0:
        return image
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    ranges = np.sqrt(x * x + y * y + z * z)
    keep = (ranges >= min_range) & (ranges <= max_range) & (ranges > 0.0)
    x, y, z, ranges = x[keep], y[keep], z[keep], ranges[keep]

    elevation = np.degrees(np.arcsin(np.clip(z / np.maximum(ranges, 1e-12), -1.0, 1.0)))
    row_float = (fov_up_deg - elevation) / (fov_up_deg - fov_down_deg) * (rows - 1)
    row = np.rint(row_float).astype(np.int64)
    azimuth = np.arctan2(y, x)
    col = np.floor(0.5 * (1.0 - azimuth / np.pi) * cols).astype(np.int64) % cols
    inside = (row >= 0) & (row < rows)
    row, col, ranges = row[inside], col[inside], ranges[inside]
    if ranges.size == 0:
        return image

    pixel = row * cols + col
    order = np.lexsort((ranges, pixel))
    pixel, ranges = pixel[order], ranges[order]
    first = np.ones(pixel.size, dtype=bool)
    first[1:] = pixel[1:] != pixel[:-1]
    image.reshape(-1)[pixel[first]] = ranges[first].astype(np.float32)
    return image


def beam_rows(
    elevations_deg: np.ndarray,
    rows: int = DEFAULT_ROWS,
    fov_up_deg: float = DEFAULT_FOV_UP_DEG,
    fov_down_deg: float = DEFAULT_FOV_DOWN_DEG,
) -> np.ndarray:
    """Rows that beams at ``elevations_deg`` land on (the same rounding as the projection)."""
    elevations = np.asarray(elevations_deg, dtype=np.float64)
    return np.rint((fov_up_deg - elevations) / (fov_up_deg - fov_down_deg) * (rows - 1)).astype(np.int64)
