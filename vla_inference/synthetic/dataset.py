"""Observations and training sets built from the synthetic task (numpy + OpenCV only).

``make_observation`` is what the simulated sensors would deliver for a scene (224x224 renders of
cameras 0..n-1, the projected LiDAR sweep, the command, the state); ``vision_feeds`` turns it into
the vision engine's inputs. ``generate_training_set`` produces the same tensors in bulk, sharing one
set of renders between several tasks of a layout (renders depend only on the layout) so that a
training set of tens of thousands of tasks fits in memory.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Iterator

import numpy as np

from vla_inference.sensors.lidar_projection import DEFAULT_COLS, DEFAULT_ROWS, beam_rows
from vla_inference.spec.observation import Observation
from vla_inference.spec.tokenizer import normalize_text, tokenize
from vla_inference.synthetic.lidar import RING_ELEVATIONS_DEG, lidar_range_image
from vla_inference.synthetic.render import CAMERAS, NUM_CAMERAS, project_points, render_camera
from vla_inference.synthetic.scene import (
    ACTION_DIM,
    BLOCK_EDGE_M,
    COLOR_NAMES,
    HORIZON,
    NEAR_CLEARANCE_M,
    SLOW_STEP_M,
    STATE_DIM,
    Scene,
    expert_actions,
    generate_scene,
    replanned_start,
    sample_layout,
    sample_task,
    segment_clearance,
    step_length,
)

logger = logging.getLogger(__name__)

IMAGE_SIZE = 224
TEXT_MAX_LEN = 48
# Held-out scenes start here; training layouts use seeds [0, num_layouts), far below it.
EVAL_SEED_BASE = 1_000_000
RING_ROWS = beam_rows(RING_ELEVATIONS_DEG)
MAX_BLOCKS = 4
MAX_POLES = 2
REPLAN_STREAM = 11  # the replanned starts' random stream, apart from the layout's


def make_observation(scene: Scene, num_cameras: int = NUM_CAMERAS, with_lidar: bool = True,
                     image_size: int = IMAGE_SIZE) -> Observation:
    """Cameras 0..num_cameras-1 at ``image_size``, the projected sweep (or None), text and state."""
    if not 1 <= num_cameras <= NUM_CAMERAS:
        raise ValueError(f"num_cameras: expected 1..{NUM_CAMERAS}, received {num_cameras}")
    images = [render_camera(scene, i, image_size, image_size) for i in range(num_cameras)]
    lidar = lidar_range_image(scene) if with_lidar else None
    return Observation(images=images, text=scene.text, state=scene.state, lidar_range=lidar)


def eval_scenes(count: int, seed_base: int = EVAL_SEED_BASE) -> Iterator[Scene]:
    """Held-out scenes: seeds disjoint from every training layout seed."""
    for i in range(count):
        yield generate_scene(seed_base + i)


@dataclass
class TrainingSet:
    """Tasks [N] over layouts [L]; LiDAR kept as its ring rows only (the other rows are always 0)."""

    images: np.ndarray  # uint8 [L, cameras, 3, H, W] (channels first, RGB)
    layout_index: np.ndarray  # int64 [N]
    lidar_rings: np.ndarray  # float16 [N, rings, cols], metres
    text_tokens: np.ndarray  # int64 [N, text_max_len]
    text_mask: np.ndarray  # bool [N, text_max_len]
    state: np.ndarray  # float32 [N, 8]
    actions: np.ndarray  # float32 [N, H, D]
    slow: np.ndarray  # bool [N]: a pole stands next to the path
    target_offset: np.ndarray  # float32 [N, 3]: named cube's top centre minus the end-effector start
    target_slot: np.ndarray  # int64 [N]: which of its layout's blocks is named
    block_pixels: np.ndarray  # float32 [L, cameras, MAX_BLOCKS, 2]: cube centres in each render (u, v), NaN pad
    block_colors: np.ndarray  # int64 [L, MAX_BLOCKS]: palette index of each cube, -1 pad
    block_xy: np.ndarray  # float32 [L, MAX_BLOCKS, 2]: cube centres on the table (world x, y), NaN pad
    poles: np.ndarray  # float32 [N, MAX_POLES, 4]: x, y, radius, 1 if next to the path else 0; NaN pad
    text_colour: np.ndarray  # int64 [N, text_max_len]: palette index for the colour word's tokens, else len(palette)

    def __len__(self) -> int:
        return int(self.layout_index.shape[0])

    def vision_feeds(self, indices: np.ndarray, num_cameras: np.ndarray, with_lidar: np.ndarray) -> Dict[str, np.ndarray]:
        """The vision engine's inputs for tasks ``indices``, with cameras/LiDAR masked out as asked
        (absent inputs are zero-filled, as ``spec.observation.vision_feeds`` does)."""
        indices = np.asarray(indices)
        batch = indices.shape[0]
        cameras = self.images.shape[1]
        camera_mask = np.arange(cameras)[None, :] < np.asarray(num_cameras)[:, None]
        raw = self.images[self.layout_index[indices]]
        images = raw.astype(np.float32) * np.float32(1.0 / 127.5) - np.float32(1.0)
        images *= camera_mask[:, :, None, None, None]
        lidar_mask = np.asarray(with_lidar, dtype=bool)
        lidar = np.zeros((batch, 1, DEFAULT_ROWS, DEFAULT_COLS), dtype=np.float32)
        lidar[:, 0, RING_ROWS, :] = self.lidar_rings[indices].astype(np.float32)
        lidar *= lidar_mask[:, None, None, None]
        return {
            "images": images,
            "camera_mask": camera_mask,
            "lidar_range": lidar,
            "lidar_mask": lidar_mask,
            "text_tokens": self.text_tokens[indices],
            "text_mask": self.text_mask[indices],
            "state": self.state[indices],
        }


def generate_training_set(num_layouts: int, tasks_per_layout: int, image_size: int = IMAGE_SIZE,
                          text_max_len: int = TEXT_MAX_LEN, first_seed: int = 0,
                          replan_fraction: float = 0.0) -> TrainingSet:
    """Layout seeds ``first_seed + [0, num_layouts)``; task 0 of layout ``s`` is ``generate_scene(s)``.

    ``replan_fraction`` of the tasks start part-way to their target (``replanned_start``), drawn from
    their own random stream, so the other tasks are the same for every fraction.
    """
    if not 0.0 <= replan_fraction <= 1.0:
        raise ValueError(f"replan_fraction: expected [0, 1], received {replan_fraction}")
    if first_seed + num_layouts > EVAL_SEED_BASE:
        raise ValueError(f"training seeds must stay below the held-out base {EVAL_SEED_BASE}")
    count = num_layouts * tasks_per_layout
    images = np.zeros((num_layouts, NUM_CAMERAS, 3, image_size, image_size), dtype=np.uint8)
    layout_index = np.repeat(np.arange(num_layouts), tasks_per_layout)
    lidar_rings = np.zeros((count, len(RING_ROWS), DEFAULT_COLS), dtype=np.float16)
    tokens = np.zeros((count, text_max_len), dtype=np.int64)
    text_mask = np.zeros((count, text_max_len), dtype=bool)
    state = np.zeros((count, STATE_DIM), dtype=np.float32)
    actions = np.zeros((count, HORIZON, ACTION_DIM), dtype=np.float32)
    slow = np.zeros(count, dtype=bool)
    target_offset = np.zeros((count, 3), dtype=np.float32)
    target_slot = np.zeros(count, dtype=np.int64)
    block_pixels = np.full((num_layouts, NUM_CAMERAS, MAX_BLOCKS, 2), np.nan, dtype=np.float32)
    block_colors = np.full((num_layouts, MAX_BLOCKS), -1, dtype=np.int64)
    block_xy = np.full((num_layouts, MAX_BLOCKS, 2), np.nan, dtype=np.float32)
    poles = np.full((count, MAX_POLES, 4), np.nan, dtype=np.float32)
    text_colour = np.full((count, text_max_len), len(COLOR_NAMES), dtype=np.int64)
    for layout_i in range(num_layouts):
        seed = first_seed + layout_i
        rng = np.random.default_rng(seed)
        layout = sample_layout(rng)
        for task in range(tasks_per_layout):
            n = layout_i * tasks_per_layout + task
            scene = sample_task(layout, rng, lidar_seed=seed if task == 0 else seed + (task << 32))
            replan_rng = np.random.default_rng([seed, task, REPLAN_STREAM])
            if replan_rng.random() < replan_fraction:
                scene = replanned_start(scene, replan_rng)
            if task == 0:
                centres = np.array([[b.x, b.y, BLOCK_EDGE_M / 2.0] for b in layout.blocks])
                block_colors[layout_i, : len(centres)] = [COLOR_NAMES.index(b.color) for b in layout.blocks]
                block_xy[layout_i, : len(centres)] = centres[:, :2]
                for cam in range(NUM_CAMERAS):
                    images[layout_i, cam] = render_camera(scene, cam, image_size, image_size).transpose(2, 0, 1)
                    block_pixels[layout_i, cam, : len(centres)] = project_points(CAMERAS[cam], centres, image_size,
                                                                                 image_size)
            range_image = lidar_range_image(scene)
            lidar_rings[n] = range_image[RING_ROWS]
            tokens[n], text_mask[n] = tokenize(scene.text, text_max_len)
            word_start = 1 + normalize_text(scene.text).find(scene.target.color)
            text_colour[n, word_start: word_start + len(scene.target.color)] = COLOR_NAMES.index(scene.target.color)
            state[n] = scene.state
            actions[n] = expert_actions(scene)
            slow[n] = step_length(scene) == SLOW_STEP_M
            target_offset[n] = scene.target_position - np.asarray(scene.ee_start)
            target_slot[n] = scene.target_index
            start, end = np.asarray(scene.ee_start[:2]), scene.target_position[:2]
            for j, pole in enumerate(scene.obstacles):
                near = segment_clearance(start, end, pole) < NEAR_CLEARANCE_M
                poles[n, j] = (pole.x, pole.y, pole.radius, float(near))
        if (layout_i + 1) % 500 == 0:
            logger.info("generated %d / %d layouts", layout_i + 1, num_layouts)
    return TrainingSet(images, layout_index, lidar_rings, tokens, text_mask, state, actions, slow, target_offset,
                       target_slot, block_pixels, block_colors, block_xy, poles, text_colour)

