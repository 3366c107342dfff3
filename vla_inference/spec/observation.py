"""What the pipeline consumes: one robot observation, already in model units.

Nodes and the synthetic task build an ``Observation``; ``vision_feeds`` turns a batch of them into
the ``vision`` engine's inputs (see ``vla_inference.spec.engine_spec``), so every backend and the
training code see exactly the same tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from vla_inference.spec.config import VlaConfig
from vla_inference.spec.engine_spec import normalize_images
from vla_inference.spec.tokenizer import tokenize


@dataclass
class Observation:
    """images: RGB uint8 [H, W, 3] at the model's image size, one per camera present (1..max_cameras);
    lidar_range: float32 [rows, cols] metres (0 = no return) or None; state: float32 [state_dim]."""

    images: Sequence[np.ndarray]
    text: str
    state: np.ndarray
    lidar_range: Optional[np.ndarray] = None

    def validate(self, cfg: VlaConfig) -> None:
        """Raise ``ValueError`` naming the field, expected and received values."""
        check_observation(self, cfg, cfg.state_dim, with_lidar=True)


def check_observation(obs: Observation, cfg: VlaConfig, state_dim: int, with_lidar: bool) -> None:
    """``ValueError`` naming the field, expected and received values. ``state_dim`` is the robot's
    (a pi0.5 policy pads it inside the model); ``with_lidar`` False ignores ``lidar_range``."""
    size = cfg.vision.image_size
    if not 1 <= len(obs.images) <= cfg.max_cameras:
        raise ValueError(f"images: expected 1..{cfg.max_cameras} cameras, received {len(obs.images)}")
    for i, image in enumerate(obs.images):
        if not isinstance(image, np.ndarray) or image.shape != (size, size, 3) or image.dtype != np.uint8:
            got = (getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__))
            raise ValueError(f"images[{i}]: expected uint8 ({size}, {size}, 3), received {got}")
    state = np.asarray(obs.state)
    if state.shape != (state_dim,):
        raise ValueError(f"state: expected shape ({state_dim},), received {state.shape}")
    if not np.isfinite(state).all():
        raise ValueError("state: contains NaN or Inf")
    if not isinstance(obs.text, str) or not obs.text.strip():
        raise ValueError("text: expected a non-empty string")
    if with_lidar and obs.lidar_range is not None:
        lidar = obs.lidar_range
        expected = (cfg.lidar.rows, cfg.lidar.cols)
        if not isinstance(lidar, np.ndarray) or lidar.shape != expected:
            raise ValueError(f"lidar_range: expected shape {expected}, received {getattr(lidar, 'shape', None)}")
        if not np.isfinite(lidar).all():
            raise ValueError("lidar_range: contains NaN or Inf")


TextEncoder = Callable[[str, np.ndarray], Tuple[np.ndarray, np.ndarray]]
StateEncoder = Callable[[np.ndarray], np.ndarray]


def vision_feeds(observations: Sequence[Observation], cfg: VlaConfig, state_dim: Optional[int] = None,
                 encode_text: Optional[TextEncoder] = None, encode_state: Optional[StateEncoder] = None,
                 with_lidar: bool = True) -> Dict[str, np.ndarray]:
    """Batch observations into the ``vision`` engine's named inputs (absent cameras/LiDAR masked).

    The defaults are this project's policies: the robot state is the engine's, the command goes
    through the byte tokenizer, the state through unchanged. A pi0.5 policy passes its robot state
    size, its prompt tokenizer ``encode_text(text, raw state) -> (ids, mask)``, its state
    normalisation, and ``with_lidar=False`` (``policy_io.FeedEncoder``)."""
    n = len(observations)
    size = cfg.vision.image_size
    state_dim = cfg.state_dim if state_dim is None else state_dim
    images = np.zeros((n, cfg.max_cameras, 3, size, size), dtype=np.float32)
    camera_mask = np.zeros((n, cfg.max_cameras), dtype=bool)
    lidar = np.zeros((n, 1, cfg.lidar.rows, cfg.lidar.cols), dtype=np.float32)
    lidar_mask = np.zeros((n,), dtype=bool)
    tokens = np.zeros((n, cfg.text_max_len), dtype=np.int64)
    text_mask = np.zeros((n, cfg.text_max_len), dtype=bool)
    state = np.zeros((n, cfg.state_dim), dtype=np.float32)
    for b, obs in enumerate(observations):
        check_observation(obs, cfg, state_dim, with_lidar)
        count = len(obs.images)
        images[b, :count] = normalize_images(np.stack(obs.images))
        camera_mask[b, :count] = True
        if with_lidar and obs.lidar_range is not None:
            lidar[b, 0] = obs.lidar_range
            lidar_mask[b] = True
        raw_state = np.asarray(obs.state)
        if encode_text is None:
            tokens[b], text_mask[b] = tokenize(obs.text, cfg.text_max_len)
        else:
            tokens[b], text_mask[b] = encode_text(obs.text, raw_state)
        row = raw_state if encode_state is None else encode_state(raw_state)
        state[b, : len(row)] = row
    return {
        "images": images,
        "camera_mask": camera_mask,
        "lidar_range": lidar,
        "lidar_mask": lidar_mask,
        "text_tokens": tokens,
        "text_mask": text_mask,
        "state": state,
    }
