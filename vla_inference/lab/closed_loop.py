"""Closed-loop reach success: the policy asked again every few rows, as the synthetic robot asks it.

The one-chunk success in ``evaluate`` starts every chunk from the scene's start. A served robot
asks again every ``request_every`` control rows from wherever the arm is, and each answer arrives
``latency_rows`` later; the client's ``ChunkExecutor`` then skips the rows executed since the
request. So most requests come from part-way along the path, the states a policy trained only on
start positions has never seen. This replays that loop without ROS (one simulated clock, the real
executor, the arm moving by exactly the commanded deltas) on held-out scenes, batched over scenes.

Success is the smoke check's: within ``SUCCESS_TOLERANCE_M`` of the named cube's top centre for
``dwell_rows`` rows in a row, before ``max_rows``.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Deque, Dict, Tuple

import numpy as np

from vla_inference.client.chunk_executor import ChunkExecutor, HoldPolicy
from vla_inference.lab.sampler import Sampler, sample_in_batches
from vla_inference.spec.config import VlaConfig
from vla_inference.spec.observation import vision_feeds
from vla_inference.synthetic.dataset import EVAL_SEED_BASE, make_observation
from vla_inference.synthetic.scene import SLOW_STEP_M, SUCCESS_TOLERANCE_M, generate_scene, step_length

CONTROL_PERIOD_S = 0.05  # the synthetic robot's 20 Hz
MAX_CHUNK_AGE_S = 1.0


@dataclass(frozen=True)
class LoopSettings:
    """Defaults follow the synthetic graph: 20 Hz control, requests at 4.5 Hz, about 200 ms latency."""

    request_every: int = 4
    latency_rows: int = 4
    max_rows: int = 150  # 7.5 s, inside the robot's 8 s episode timeout
    dwell_rows: int = 6  # 0.3 s, the robot's success dwell
    batch: int = 25


def closed_loop_success(sampler: Sampler, cfg: VlaConfig, num_scenes: int, steps: int,
                        settings: LoopSettings = LoopSettings(), seed_base: int = EVAL_SEED_BASE) -> Dict[str, float]:
    """Share of held-out scenes reached in the closed loop, split by pole near the path or not."""
    if settings.request_every < 1 or settings.latency_rows < 0 or settings.dwell_rows < 1:
        raise ValueError(f"settings: request_every and dwell_rows must be >= 1, latency_rows >= 0; got {settings}")
    scenes = [generate_scene(seed_base + i) for i in range(num_scenes)]
    feeds = vision_feeds([make_observation(s, 3, True, cfg.vision.image_size) for s in scenes], cfg)
    targets = np.stack([s.target_position for s in scenes])
    positions = np.array([s.ee_start for s in scenes], dtype=np.float64)
    executors = [ChunkExecutor(CONTROL_PERIOD_S, MAX_CHUNK_AGE_S, HoldPolicy.ZERO, cfg.action_dim)
                 for _ in scenes]
    rng = np.random.default_rng(seed_base)
    in_flight: Deque[Tuple[int, float, np.ndarray]] = deque()  # (arrival row, observation time, chunks)
    inside = np.zeros(num_scenes, dtype=np.int64)
    reached_at = np.full(num_scenes, -1, dtype=np.int64)
    for row in range(settings.max_rows):
        now_s = row * CONTROL_PERIOD_S
        if row % settings.request_every == 0:
            feeds["state"][:, :3] = positions
            noise = rng.standard_normal((num_scenes, cfg.action_horizon, cfg.action_dim)).astype(np.float32)
            chunks = sample_in_batches(sampler, feeds, noise, steps, settings.batch)
            in_flight.append((row + settings.latency_rows, now_s, chunks))
        while in_flight and in_flight[0][0] <= row:
            _, stamp_s, chunks = in_flight.popleft()
            for executor, chunk in zip(executors, chunks):
                executor.accept_chunk(chunk, stamp_s, now_s)
        for i, executor in enumerate(executors):
            if reached_at[i] < 0:
                command, _ = executor.command(now_s)
                positions[i] += command[:3]
        near = np.linalg.norm(positions - targets, axis=1) <= SUCCESS_TOLERANCE_M
        inside = np.where(near, inside + 1, 0)
        reached_at[(reached_at < 0) & (inside >= settings.dwell_rows)] = row
        if np.all(reached_at >= 0):
            break
    success = reached_at >= 0
    slow = np.array([step_length(s) == SLOW_STEP_M for s in scenes])
    return {
        "success": float(success.mean()),
        "success_pole_near_path": float(success[slow].mean()) if slow.any() else float("nan"),
        "success_clear_path": float(success[~slow].mean()) if (~slow).any() else float("nan"),
        "median_seconds_to_success": float(np.median(reached_at[success] + 1) * CONTROL_PERIOD_S) if success.any()
        else float("nan"),
        "scenes": num_scenes,
        "request_every_rows": settings.request_every,
        "latency_rows": settings.latency_rows,
    }

