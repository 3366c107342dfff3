"""The synthetic reach task: scenes, commands, ground-truth action chunks and the success test.

World frame: robot base at the origin, x forward, y left, z up, table top at z = 0. A scene holds
3-4 cubes of distinct colours on the table, a command naming one of them, the end effector's start
position, and 0-2 vertical poles that only the LiDAR sees (the cameras do not render them).

Ground truth (``expert_actions``): the end effector moves in a straight line from its start to the
top centre of the named cube at a constant ``FAST_STEP_M`` per step, or ``SLOW_STEP_M`` when a pole
stands within ``NEAR_CLEARANCE_M`` of that line (horizontally), and stops on arrival; a chunk has
``HORIZON`` steps. So the cameras say where the cubes are, the text which cube, the state where the
motion starts and the LiDAR how fast to go: every modality changes the chunk.

Action layout, [HORIZON, ACTION_DIM] float32:

* 0-2: end-effector position deltas for the step, metres;
* 3: gripper, +1 = open while travelling, -1 = close once the step has arrived at the target;
* 4-7: reserved (orientation deltas on a real arm), always 0.

Every random choice comes from one ``numpy.random.Generator`` seeded by the caller, so a seed
names a scene on every machine.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

HORIZON = 16
ACTION_DIM = 8
STATE_DIM = 8
FAST_STEP_M = 0.05
SLOW_STEP_M = 0.02
NEAR_CLEARANCE_M = 0.08
BLOCK_EDGE_M = 0.05
# A reach succeeds when its end point is within 3 cm of the goal: the goal is the top centre of a
# 5 cm cube, whose top face reaches 2.5-3.5 cm from its centre, so a tool tip that close ends over
# the cube's top face (or touching its edge), where a suction cup or a centred gripper makes contact.
SUCCESS_TOLERANCE_M = 0.03

GRIPPER_OPEN = 1.0
GRIPPER_CLOSE = -1.0

PALETTE: Tuple[Tuple[str, Tuple[int, int, int]], ...] = (
    ("red", (215, 35, 35)),
    ("green", (40, 170, 60)),
    ("blue", (35, 75, 220)),
    ("yellow", (235, 205, 30)),
    ("purple", (135, 50, 175)),
    ("orange", (245, 130, 20)),
)
COLOR_NAMES = tuple(name for name, _ in PALETTE)
COMMAND_TEMPLATES = (
    "reach the {} block",
    "move to the {} block",
    "go to the {} cube",
    "touch the {} block",
    "reach for the {} cube",
    "move the gripper to the {} block",
)

TABLE_X = (0.05, 1.05)
TABLE_Y = (-0.6, 0.6)
BLOCK_X = (0.35, 0.70)
BLOCK_Y = (-0.28, 0.28)
BLOCK_MIN_SEPARATION_M = 0.12
EE_X = (0.15, 0.45)
EE_Y = (-0.30, 0.30)
EE_Z = (0.18, 0.38)
MAX_REACH_M = 0.70
MIN_HORIZONTAL_TRAVEL_M = 0.10
OBSTACLE_X = (0.10, 0.95)
OBSTACLE_Y = (-0.50, 0.50)
OBSTACLE_RADIUS_M = (0.015, 0.04)
OBSTACLE_HEIGHT_M = (0.45, 0.80)
NEAR_SAMPLE_CLEARANCE_M = (0.02, 0.06)
FAR_MIN_CLEARANCE_M = 0.15
# Replanned starts (training only): off the straight line by N(0, jitter) per axis, never below this height.
REPLAN_JITTER_M = 0.015
REPLAN_MIN_Z_M = 0.01
# Scene mix: no pole, a pole next to the path (plus maybe a far one), only poles away from it.
OBSTACLE_MODE_PROBS = (0.3, 0.4, 0.3)


@dataclass(frozen=True)
class Block:
    color: str
    rgb: Tuple[int, int, int]
    x: float
    y: float
    yaw: float

    @property
    def top_center(self) -> np.ndarray:
        return np.array([self.x, self.y, BLOCK_EDGE_M], dtype=np.float64)


@dataclass(frozen=True)
class Obstacle:
    """A vertical pole standing on the table, seen only by the LiDAR."""

    x: float
    y: float
    radius: float
    height: float


@dataclass(frozen=True)
class Layout:
    """What the cameras see: the cubes and the lighting/table appearance."""

    blocks: Tuple[Block, ...]
    table_rgb: Tuple[int, int, int]
    wall_rgb: Tuple[int, int, int]
    brightness: float


@dataclass(frozen=True)
class Scene:
    layout: Layout
    target_index: int
    text: str
    ee_start: Tuple[float, float, float]
    obstacles: Tuple[Obstacle, ...]
    lidar_seed: int

    @property
    def blocks(self) -> Tuple[Block, ...]:
        return self.layout.blocks

    @property
    def target(self) -> Block:
        return self.layout.blocks[self.target_index]

    @property
    def target_position(self) -> np.ndarray:
        return self.target.top_center

    @property
    def state(self) -> np.ndarray:
        """Proprio state, float32 [8]: end-effector xyz, then 5 reserved zeros."""
        state = np.zeros(STATE_DIM, dtype=np.float32)
        state[:3] = self.ee_start
        return state


def sample_layout(rng: np.random.Generator) -> Layout:
    """3-4 cubes of distinct palette colours, at least ``BLOCK_MIN_SEPARATION_M`` apart."""
    count = int(rng.integers(3, 5))
    colors = rng.choice(len(PALETTE), size=count, replace=False)
    positions: list = []
    while len(positions) < count:
        candidate = np.array([rng.uniform(*BLOCK_X), rng.uniform(*BLOCK_Y)])
        if all(np.linalg.norm(candidate - p) >= BLOCK_MIN_SEPARATION_M for p in positions):
            positions.append(candidate)
    blocks = tuple(
        Block(PALETTE[c][0], PALETTE[c][1], float(p[0]), float(p[1]), float(rng.uniform(0.0, np.pi / 2)))
        for c, p in zip(colors, positions)
    )
    table = tuple(int(v) for v in np.clip(np.array([175, 145, 105]) + rng.integers(-15, 16, size=3), 0, 255))
    wall = tuple(int(v) for v in np.clip(np.array([200, 205, 212]) + rng.integers(-12, 13, size=3), 0, 255))
    return Layout(blocks, table, wall, float(rng.uniform(0.85, 1.1)))


def segment_clearance(start_xy: np.ndarray, end_xy: np.ndarray, obstacle: Obstacle) -> float:
    """Horizontal gap between the pole's surface and the segment start -> end (negative = hit)."""
    direction = end_xy - start_xy
    length_sq = float(direction @ direction)
    centre = np.array([obstacle.x, obstacle.y])
    s = 0.0 if length_sq == 0.0 else float(np.clip((centre - start_xy) @ direction / length_sq, 0.0, 1.0))
    return float(np.linalg.norm(start_xy + s * direction - centre)) - obstacle.radius


def path_clearance(scene: Scene) -> float:
    """Smallest pole clearance of the straight start -> target path; ``inf`` without poles."""
    start = np.asarray(scene.ee_start[:2], dtype=np.float64)
    end = scene.target_position[:2]
    return min((segment_clearance(start, end, o) for o in scene.obstacles), default=float("inf"))


def _sample_pole(rng: np.random.Generator, x: float, y: float) -> Obstacle:
    return Obstacle(float(x), float(y), float(rng.uniform(*OBSTACLE_RADIUS_M)), float(rng.uniform(*OBSTACLE_HEIGHT_M)))


def _pole_fits(pole: Obstacle, layout: Layout, others: Sequence[Obstacle]) -> bool:
    """Inside the LiDAR's working area, off the cubes and other poles."""
    if not (OBSTACLE_X[0] <= pole.x <= OBSTACLE_X[1] and OBSTACLE_Y[0] <= pole.y <= OBSTACLE_Y[1]):
        return False
    for block in layout.blocks:
        if np.hypot(pole.x - block.x, pole.y - block.y) < pole.radius + BLOCK_EDGE_M:
            return False
    return all(np.hypot(pole.x - o.x, pole.y - o.y) >= pole.radius + o.radius + 0.05 for o in others)


def _sample_near_pole(rng: np.random.Generator, start: np.ndarray, end: np.ndarray, layout: Layout) -> Obstacle:
    direction = end - start
    normal = np.array([-direction[1], direction[0]]) / np.linalg.norm(direction)
    for _ in range(1000):
        along = rng.uniform(0.15, 0.9)
        side = 1.0 if rng.random() < 0.5 else -1.0
        pole = _sample_pole(rng, 0.0, 0.0)
        offset = pole.radius + rng.uniform(*NEAR_SAMPLE_CLEARANCE_M)
        centre = start + along * direction + side * offset * normal
        pole = Obstacle(float(centre[0]), float(centre[1]), pole.radius, pole.height)
        if _pole_fits(pole, layout, ()):
            return pole
    raise RuntimeError("could not place a pole next to the path")


def _sample_far_pole(
    rng: np.random.Generator, start: np.ndarray, end: np.ndarray, layout: Layout, others: Sequence[Obstacle]
) -> Optional[Obstacle]:
    for _ in range(1000):
        pole = _sample_pole(rng, rng.uniform(*OBSTACLE_X), rng.uniform(*OBSTACLE_Y))
        if segment_clearance(start, end, pole) >= FAR_MIN_CLEARANCE_M and _pole_fits(pole, layout, others):
            return pole
    return None


def sample_task(layout: Layout, rng: np.random.Generator, lidar_seed: int) -> Scene:
    """Target, command phrasing, start position and poles for a layout."""
    target_index = int(rng.integers(len(layout.blocks)))
    target = layout.blocks[target_index]
    text = COMMAND_TEMPLATES[int(rng.integers(len(COMMAND_TEMPLATES)))].format(target.color)
    goal = target.top_center
    while True:
        ee = np.array([rng.uniform(*EE_X), rng.uniform(*EE_Y), rng.uniform(*EE_Z)])
        if np.linalg.norm(goal - ee) <= MAX_REACH_M and np.linalg.norm(goal[:2] - ee[:2]) >= MIN_HORIZONTAL_TRAVEL_M:
            break
    start_xy, end_xy = ee[:2], goal[:2]
    mode = int(rng.choice(3, p=OBSTACLE_MODE_PROBS))
    poles: list = []
    if mode == 1:
        poles.append(_sample_near_pole(rng, start_xy, end_xy, layout))
    far_count = int(rng.integers(0, 2)) if mode == 1 else (int(rng.integers(1, 3)) if mode == 2 else 0)
    for _ in range(far_count):
        pole = _sample_far_pole(rng, start_xy, end_xy, layout, poles)
        if pole is not None:
            poles.append(pole)
    return Scene(layout, target_index, text, (float(ee[0]), float(ee[1]), float(ee[2])), tuple(poles), lidar_seed)


def replanned_start(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with the end effector part-way to the target and up to a few cm off the line.

    A closed loop asks again after every few executed rows, from wherever the arm is; a policy
    that only saw starts from the ``EE_*`` box has never seen those states.
    """
    start = np.asarray(scene.ee_start, dtype=np.float64)
    point = start + rng.uniform(0.0, 1.0) * (scene.target_position - start) + rng.normal(0.0, REPLAN_JITTER_M, 3)
    point[2] = max(point[2], REPLAN_MIN_Z_M)
    return dataclasses.replace(scene, ee_start=(float(point[0]), float(point[1]), float(point[2])))


def generate_scene(seed: int) -> Scene:
    """The scene named by ``seed`` (layout, then the layout's first task)."""
    rng = np.random.default_rng(seed)
    layout = sample_layout(rng)
    return sample_task(layout, rng, lidar_seed=int(seed))


def step_length(scene: Scene) -> float:
    """Metres per step: slow when a pole stands next to the path."""
    return SLOW_STEP_M if path_clearance(scene) < NEAR_CLEARANCE_M else FAST_STEP_M


def expert_actions(scene: Scene) -> np.ndarray:
    """Ground-truth chunk [HORIZON, ACTION_DIM] float32 (see the module docstring)."""
    start = np.asarray(scene.ee_start, dtype=np.float64)
    offset = scene.target_position - start
    distance = float(np.linalg.norm(offset))
    travelled = np.minimum(np.arange(HORIZON + 1) * step_length(scene), distance)
    actions = np.zeros((HORIZON, ACTION_DIM), dtype=np.float32)
    actions[:, :3] = (np.diff(travelled)[:, None] * (offset / distance)[None, :]).astype(np.float32)
    arrived = travelled[1:] >= distance - 1e-9
    actions[:, 3] = np.where(arrived, GRIPPER_CLOSE, GRIPPER_OPEN)
    return actions


def simulate(ee_start: Sequence[float], actions: np.ndarray) -> np.ndarray:
    """End-effector path [H + 1, 3] from executing the position deltas of ``actions`` [H, >=3]."""
    actions = np.asarray(actions)
    if actions.ndim != 2 or actions.shape[1] < 3:
        raise ValueError(f"actions: expected shape (H, >=3), received {actions.shape}")
    start = np.asarray(ee_start, dtype=np.float64).reshape(3)
    return np.concatenate([start[None], start[None] + np.cumsum(actions[:, :3].astype(np.float64), axis=0)])


def chunk_goal(scene: Scene) -> np.ndarray:
    """Where the ground-truth chunk ends: the target, or short of it when slowed by a pole."""
    return simulate(scene.ee_start, expert_actions(scene))[-1]


def is_success(path: np.ndarray, goal: np.ndarray, tolerance: float = SUCCESS_TOLERANCE_M) -> bool:
    """The path's final point lies within ``tolerance`` metres of ``goal``."""
    return bool(np.linalg.norm(np.asarray(path)[-1] - np.asarray(goal)) <= tolerance)
