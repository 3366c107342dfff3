"""One reach episode of the synthetic robot, without ROS.

The simulated arm is a point end effector that moves by exactly the position deltas it is
commanded (one command = one control step). An episode starts at the scene's ``ee_start``; it
succeeds once the end effector has stayed within the task's tolerance of the named cube's top
centre for ``dwell_s`` (so passing through the goal does not count), and fails after
``timeout_s``. Commands in the first ``settle_s`` are ignored: they were computed from the previous
scene's observations, which the client may still be playing out.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from vla_inference.synthetic.scene import (
    SUCCESS_TOLERANCE_M,
    Scene,
    expert_actions,
    generate_scene,
    simulate,
)

MAX_EXPERT_CHUNKS = 8


@dataclass(frozen=True)
class EpisodeSettings:
    timeout_s: float = 8.0
    settle_s: float = 0.5
    dwell_s: float = 0.3
    tolerance_m: float = SUCCESS_TOLERANCE_M


@dataclass
class EpisodeResult:
    """What ``/sim/episode`` carries (as JSON) when an episode ends."""

    episode: int
    scene: int
    text: str
    success: bool
    reason: str  # "success" or "timeout"
    final_error_m: float
    started_at: float  # wall-clock seconds (time.time()), to match the checker's window
    duration_s: float
    commands: int
    ignored_commands: int
    start: List[float]
    target: List[float]
    path: List[List[float]]
    expert_path: List[List[float]]

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def expert_path(scene: Scene) -> np.ndarray:
    """The ground-truth path [K, 3]: expert chunks replanned from where each one ended, to the target."""
    goal = scene.target_position
    position = np.asarray(scene.ee_start, dtype=np.float64)
    points = [position]
    for _ in range(MAX_EXPERT_CHUNKS):
        if np.linalg.norm(goal - position) < 1e-9:
            break
        replanned = dataclasses.replace(scene, ee_start=tuple(float(v) for v in position))
        segment = simulate(position, expert_actions(replanned))[1:]
        points.extend(segment)
        position = segment[-1]
    return np.asarray(points)


class ReachEpisode:
    """Integrates commanded deltas into the end effector and decides when the episode ends."""

    def __init__(self, episode: int, scene_seed: int, now: float, wall_time: float,
                 settings: EpisodeSettings = EpisodeSettings()) -> None:
        self.episode = episode
        self.scene_seed = scene_seed
        self.scene = generate_scene(scene_seed)
        self.settings = settings
        self._started = now
        self._wall_started = wall_time
        self._position = np.asarray(self.scene.ee_start, dtype=np.float64)
        self._path: List[np.ndarray] = [self._position.copy()]
        self._commands = 0
        self._ignored = 0
        self._inside_since: Optional[float] = None

    @property
    def text(self) -> str:
        return self.scene.text

    @property
    def position(self) -> np.ndarray:
        return self._position.copy()

    def error(self) -> float:
        return float(np.linalg.norm(self._position - self.scene.target_position))

    def state(self) -> np.ndarray:
        """Proprio state in the synthetic layout: end-effector xyz, then the reserved values."""
        state = self.scene.state.copy()
        state[:3] = self._position
        return state

    def apply(self, command: Sequence[float], now: float) -> bool:
        """Apply one control step's command (first 3 values: xyz delta, metres); False when ignored."""
        delta = np.asarray(command[:3], dtype=np.float64)
        if now - self._started < self.settings.settle_s or delta.shape != (3,) or not np.all(np.isfinite(delta)):
            self._ignored += 1
            return False
        self._position = self._position + delta
        self._commands += 1
        if np.any(delta != 0.0):
            self._path.append(self._position.copy())
        return True

    def check(self, now: float) -> Optional[EpisodeResult]:
        """The result once the episode is over (success after the dwell, or timeout), else None."""
        if self.error() <= self.settings.tolerance_m:
            if self._inside_since is None:
                self._inside_since = now
            if now - self._inside_since >= self.settings.dwell_s:
                return self._result(now, True)
        else:
            self._inside_since = None
        if now - self._started >= self.settings.timeout_s:
            return self._result(now, False)
        return None

    def _result(self, now: float, success: bool) -> EpisodeResult:
        return EpisodeResult(
            episode=self.episode,
            scene=self.scene_seed,
            text=self.scene.text,
            success=success,
            reason="success" if success else "timeout",
            final_error_m=self.error(),
            started_at=self._wall_started,
            duration_s=now - self._started,
            commands=self._commands,
            ignored_commands=self._ignored,
            start=[float(v) for v in self.scene.ee_start],
            target=[float(v) for v in self.scene.target_position],
            path=np.round(np.asarray(self._path), 5).tolist(),
            expert_path=np.round(expert_path(self.scene), 5).tolist(),
        )
