"""How far a chunk computed another way (bf16, FP8, INT8) moves the robot from the fp32 chunk, in cm.

A cosine over the flattened chunk is dominated by the ±1 gripper column: a 1 cm bias on every
position delta (28 cm at the end of a 16-row chunk) still scored 0.99985. What the robot does with a
chunk is sum its position deltas, so precision comparisons are judged on that path:

* end-point error: distance between the two paths' final positions (sum of all rows' deltas);
* max step error: the largest distance between the two paths at any row (cumulative sums);
* gripper agreement: share of rows whose gripper command has the same sign.

The gate: end-point error within ``ENDPOINT_LIMIT_CM`` on at least ``SCENE_SHARE`` of the scenes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence

import numpy as np

ENDPOINT_LIMIT_CM = 0.5
SCENE_SHARE = 0.99
SUCCESS_POINTS = 1.0  # closed-loop success may differ from fp32 by this many percentage points


@dataclass(frozen=True)
class PathErrors:
    """Per chunk pair (one scene, one sample), in centimetres; gripper agreement as a share of rows."""

    endpoint_cm: np.ndarray
    max_step_cm: np.ndarray
    gripper_agreement: np.ndarray


def path_errors(candidate: np.ndarray, reference: np.ndarray, path_dims: Sequence[int] = (0, 1, 2),
                gripper_dim: Optional[int] = 3) -> PathErrors:
    """Errors of ``candidate`` against ``reference``, both [..., H, D] with position deltas in metres."""
    candidate = np.asarray(candidate, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if candidate.shape != reference.shape or candidate.ndim < 2:
        raise ValueError(f"chunks: expected two equal [..., H, D] arrays, received {candidate.shape} and "
                         f"{reference.shape}")
    dims = list(path_dims)
    drift = np.cumsum(candidate[..., dims] - reference[..., dims], axis=-2)  # [..., H, len(dims)]
    distance_cm = np.linalg.norm(drift, axis=-1) * 100.0
    if gripper_dim is None:
        agreement = np.ones(candidate.shape[:-2])
    else:
        agreement = np.mean(np.sign(candidate[..., gripper_dim]) == np.sign(reference[..., gripper_dim]), axis=-1)
    return PathErrors(distance_cm[..., -1].ravel(), distance_cm.max(axis=-1).ravel(), np.ravel(agreement))


@dataclass(frozen=True)
class PathSummary:
    chunks: int
    endpoint_cm_max: float
    endpoint_cm_p99: float
    endpoint_cm_median: float
    max_step_cm: float
    within_limit: float  # share of chunks whose end point is within ENDPOINT_LIMIT_CM
    gripper_agreement_min: float
    passed: bool

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)


def summarize(errors: PathErrors, limit_cm: float = ENDPOINT_LIMIT_CM, share: float = SCENE_SHARE) -> PathSummary:
    endpoint = errors.endpoint_cm
    within = float(np.mean(endpoint <= limit_cm))
    return PathSummary(
        chunks=int(endpoint.size),
        endpoint_cm_max=float(endpoint.max()),
        endpoint_cm_p99=float(np.percentile(endpoint, 99)),
        endpoint_cm_median=float(np.median(endpoint)),
        max_step_cm=float(errors.max_step_cm.max()),
        within_limit=within,
        gripper_agreement_min=float(errors.gripper_agreement.min()),
        passed=within >= share,
    )


def success_gate(candidate_success: float, reference_success: float, points: float = SUCCESS_POINTS) -> bool:
    """Closed-loop success (shares in [0, 1]) within ``points`` percentage points of the reference."""
    return abs(candidate_success - reference_success) * 100.0 <= points + 1e-9
