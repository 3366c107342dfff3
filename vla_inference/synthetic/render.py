"""Three fixed pinhole cameras rendering a scene's cubes and table with OpenCV polygons.

Intrinsics are defined at a 640x480 reference and scale with the output size (fx with width, fy
with height, principal point at the centre), so a 640x480 render resized to 224x224 matches a
224x224 render up to resampling blur. Poles (``Scene.obstacles``) are not rendered: only the LiDAR
sees them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import cv2
import numpy as np

from vla_inference.synthetic.scene import BLOCK_EDGE_M, TABLE_X, TABLE_Y, Block, Scene

REFERENCE_SIZE = (640, 480)
REFERENCE_FOCAL_PX = 520.0
NEAR_PLANE_M = 0.01
FLOOR_Z = -0.75
FLOOR_RGB = (95, 92, 100)
LIGHT_DIRECTION = np.array([0.3, 0.2, 1.0]) / np.linalg.norm([0.3, 0.2, 1.0])
SUBPIXEL_BITS = 4


@dataclass(frozen=True)
class Camera:
    name: str
    position: Tuple[float, float, float]
    look_at: Tuple[float, float, float]

    def rotation(self) -> np.ndarray:
        """World -> camera rotation (rows: right, down, forward)."""
        forward = np.subtract(self.look_at, self.position).astype(np.float64)
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        return np.stack([right, down, forward])


CAMERAS: Tuple[Camera, ...] = (
    Camera("front_overhead", (0.05, 0.0, 0.75), (0.53, 0.0, 0.0)),
    Camera("left", (0.60, 0.62, 0.50), (0.53, 0.0, 0.0)),
    Camera("right", (0.60, -0.62, 0.50), (0.53, 0.0, 0.0)),
)
NUM_CAMERAS = len(CAMERAS)


def intrinsics(width: int, height: int) -> Tuple[float, float, float, float]:
    """(fx, fy, cx, cy) in pixels for a ``width`` x ``height`` render."""
    ref_w, ref_h = REFERENCE_SIZE
    return REFERENCE_FOCAL_PX * width / ref_w, REFERENCE_FOCAL_PX * height / ref_h, width / 2.0, height / 2.0


def project_points(camera: Camera, points_world: np.ndarray, width: int, height: int) -> np.ndarray:
    """World points [N, 3] -> pixel coordinates [N, 2] (continuous; pixel i spans [i, i + 1))."""
    cam = (np.asarray(points_world, dtype=np.float64) - np.asarray(camera.position)) @ camera.rotation().T
    fx, fy, cx, cy = intrinsics(width, height)
    return np.stack([fx * cam[:, 0] / cam[:, 2] + cx, fy * cam[:, 1] / cam[:, 2] + cy], axis=1)


def _clip_near(polygon_cam: np.ndarray) -> np.ndarray:
    """Clip a convex polygon (camera frame) to z >= NEAR_PLANE_M (Sutherland-Hodgman, one plane)."""
    kept: List[np.ndarray] = []
    count = len(polygon_cam)
    for i in range(count):
        a, b = polygon_cam[i], polygon_cam[(i + 1) % count]
        a_in, b_in = a[2] >= NEAR_PLANE_M, b[2] >= NEAR_PLANE_M
        if a_in:
            kept.append(a)
        if a_in != b_in:
            s = (NEAR_PLANE_M - a[2]) / (b[2] - a[2])
            kept.append(a + s * (b - a))
    return np.array(kept).reshape(-1, 3)


def _fill(image: np.ndarray, camera: Camera, polygon_world: np.ndarray, rgb: np.ndarray) -> None:
    cam = (polygon_world - np.asarray(camera.position)) @ camera.rotation().T
    cam = _clip_near(cam)
    if len(cam) < 3:
        return
    height, width = image.shape[:2]
    fx, fy, cx, cy = intrinsics(width, height)
    pixels = np.stack([fx * cam[:, 0] / cam[:, 2] + cx, fy * cam[:, 1] / cam[:, 2] + cy], axis=1)
    # fillPoly puts integer coordinates at pixel centres; ours put them at pixel corners.
    fixed = np.rint((pixels - 0.5) * (1 << SUBPIXEL_BITS)).astype(np.int32)
    color = tuple(int(c) for c in np.clip(rgb, 0, 255))
    cv2.fillPoly(image, [fixed], color, lineType=cv2.LINE_AA, shift=SUBPIXEL_BITS)


def _cube_faces(block: Block) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(corners [4, 3], outward normal) for the five faces of a cube other than its bottom."""
    half = BLOCK_EDGE_M / 2.0
    c, s = np.cos(block.yaw), np.sin(block.yaw)
    axis_u, axis_v = np.array([c, s, 0.0]), np.array([-s, c, 0.0])
    centre = np.array([block.x, block.y, half])
    up = np.array([0.0, 0.0, 1.0])
    faces = [(up, axis_u, axis_v)]
    for normal in (axis_u, -axis_u, axis_v, -axis_v):
        tangent = np.cross(up, normal)
        faces.append((normal, tangent, up))
    result = []
    for normal, t1, t2 in faces:
        mid = centre + half * normal
        corners = np.array([mid + half * (a * t1 + b * t2) for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))])
        result.append((corners, normal))
    return result


def render_camera(scene: Scene, index: int, width: int, height: int) -> np.ndarray:
    """Render camera ``index`` (0..2) of ``scene`` as uint8 RGB [height, width, 3]."""
    if not 0 <= index < NUM_CAMERAS:
        raise ValueError(f"camera index: expected 0..{NUM_CAMERAS - 1}, received {index}")
    if width < 8 or height < 8:
        raise ValueError(f"render size: expected at least 8x8, received {width}x{height}")
    camera = CAMERAS[index]
    layout = scene.layout
    light = layout.brightness
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = np.clip(np.asarray(layout.wall_rgb) * light, 0, 255).astype(np.uint8)
    floor = np.array([[-3.0, -3.0, FLOOR_Z], [3.0, -3.0, FLOOR_Z], [3.0, 3.0, FLOOR_Z], [-3.0, 3.0, FLOOR_Z]])
    _fill(image, camera, floor, np.asarray(FLOOR_RGB) * light)
    table = np.array([[TABLE_X[0], TABLE_Y[0], 0.0], [TABLE_X[1], TABLE_Y[0], 0.0],
                      [TABLE_X[1], TABLE_Y[1], 0.0], [TABLE_X[0], TABLE_Y[1], 0.0]])
    _fill(image, camera, table, np.asarray(layout.table_rgb) * light)
    eye = np.asarray(camera.position)
    by_distance = sorted(layout.blocks, key=lambda b: -np.linalg.norm(np.array([b.x, b.y, BLOCK_EDGE_M / 2]) - eye))
    for block in by_distance:
        for corners, normal in _cube_faces(block):
            if normal @ (eye - corners.mean(axis=0)) <= 0.0:
                continue
            shade = 0.55 + 0.45 * max(0.0, float(normal @ LIGHT_DIRECTION))
            _fill(image, camera, corners, np.asarray(block.rgb) * shade * light)
    return image
