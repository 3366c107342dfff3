"""Fit an RGB camera frame to the model's square input (224 x 224 for the shipped policies).

Three modes, because cameras differ in what may be lost:

* ``stretch``: resize both axes independently; keeps the whole field of view, distorts aspect.
* ``letterbox``: scale the longer side to ``size`` keeping aspect, pad the rest with black (0),
  centred; keeps the field of view and the geometry, wastes pixels.
* ``center_crop``: crop the largest centred square, then resize; keeps geometry, loses the edges
  of the longer axis.

Shrinking uses ``cv2.INTER_AREA`` (averages source pixels, no aliasing); enlarging uses
``cv2.INTER_LINEAR``.
"""
from __future__ import annotations

import operator

import cv2
import numpy as np

from vla_inference.spec.interface import RESIZE_MODES


def _resize(rgb: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    if (height, width) == (out_height, out_width):
        return np.ascontiguousarray(rgb)
    shrinking = out_height < height or out_width < width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(rgb), (out_width, out_height), interpolation=interpolation)


def resize_to_model(rgb: np.ndarray, size: int = 224, mode: str = "stretch") -> np.ndarray:
    """RGB uint8 [H, W, 3] -> uint8 [size, size, 3] by ``mode`` (see the module docstring).

    A C-contiguous frame already at [size, size, 3] is returned as is (no copy) in every mode.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode: expected one of {', '.join(RESIZE_MODES)}, received {mode!r}")
    if isinstance(size, bool) or not hasattr(size, "__index__") or operator.index(size) < 1:
        raise ValueError(f"size: expected a positive integer, received {size!r}")
    size = operator.index(size)
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = (getattr(rgb, "shape", None), getattr(rgb, "dtype", type(rgb).__name__))
        raise ValueError(f"rgb: expected uint8 [H, W, 3], received {got}")
    height, width = rgb.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"rgb: expected a non-empty image, received shape {rgb.shape}")
    if mode == "stretch" or (height, width) == (size, size):
        return _resize(rgb, size, size)
    if mode == "center_crop":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        return _resize(rgb[top : top + side, left : left + side], size, size)
    scale = size / max(height, width)
    scaled_height = min(size, max(1, round(height * scale)))
    scaled_width = min(size, max(1, round(width * scale)))
    scaled = _resize(rgb, scaled_height, scaled_width)
    if scaled.shape[:2] == (size, size):
        return scaled
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - scaled_height) // 2, (size - scaled_width) // 2
    canvas[top : top + scaled_height, left : left + scaled_width] = scaled
    return canvas
