"""Which cameras each of a request's K samples sees: the confidence's second source of spread.

Noise alone is a weak witness. A flow policy trained on one answer per scene maps every noise draw
to nearly the same chunk, even when the scene makes no sense (shuffled camera images, a command
that names nothing): the K chunks agree and the confidence stays high (shipped tiny policy, noise
only: AUROC 0.5-0.6 against those scrambles). Camera views make the samples disagree when the
inputs do. A policy trained with cameras left out answers a consistent scene alike from any of the
camera sets it was trained on, while shuffled images, or a command the policy cannot read, send each
camera set to its own guess.

``cameras`` mode, for a request with C > 1 cameras: even samples see all C cameras, odd samples
only the first (camera 0: the camera every camera set the policy was trained on contains, see
``train.camera_count_probs``), and samples 2j and 2j+1 share noise draw j. So sample 0 is always the
full observation, the vision pass runs on two rows, not K, and inside a pair only the view
differs, so camera disagreement is not drowned by noise, while the pairs differ in noise, so the
spread the noise alone shows (a missing LiDAR) still counts.

Measured on the shipped tiny policy, K=4, path spread, AUROC real vs scrambled for patches / text /
all / LiDAR dropped. Served by the pipeline (``confidence_eval``, 100 held-out scenes): noise only
0.62 / 0.56 / 0.66 / 0.89; these camera views 0.94 / 0.79 / 0.93 / 0.78 (a missing LiDAR is a little
harder to see: a view pair shares its noise). Alternatives, from the same chunks offline (150
scenes): a third row with the first two cameras 0.95 / 0.84 / 0.94 / 0.82, not worth 50 % more
vision time; all + the first two cameras 0.86 / 0.70 / 0.88 / 0.81 (two cameras agree with three
too often); three views with every sample its own noise 0.93 / 0.80 / 0.93 / 0.89.

``noise`` mode, or a single camera: every sample sees all cameras and draws its own noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Tuple

import numpy as np

CONFIDENCE_VIEWS = ("cameras", "noise")


@dataclass(frozen=True)
class SampleViews:
    """``camera_counts[r]``: cameras in view row r (row 0 = all of them); ``sample_rows[k]``: the row
    sample k reads its prefix from; ``noise_draws[k]``: which of the request's K noise draws it starts from."""

    camera_counts: Tuple[int, ...]
    sample_rows: Tuple[int, ...]
    noise_draws: Tuple[int, ...]


def plan_views(mode: str, cameras: int, num_samples: int) -> SampleViews:
    """The view rows and each sample's row for a request with ``cameras`` cameras."""
    if mode not in CONFIDENCE_VIEWS:
        raise ValueError(f"confidence_views: expected one of {CONFIDENCE_VIEWS}, received {mode!r}")
    if cameras < 1 or num_samples < 1:
        raise ValueError(f"cameras and num_samples must be >= 1, received {cameras}, {num_samples}")
    if mode == "noise" or cameras == 1:
        return SampleViews((cameras,), (0,) * num_samples, tuple(range(num_samples)))
    samples = range(num_samples)
    return SampleViews((cameras, 1), tuple(k % 2 for k in samples), tuple(k // 2 for k in samples))


def max_view_rows(mode: str, max_cameras: int) -> int:
    """The most vision rows ``plan_views`` gives a request of a model with ``max_cameras`` cameras."""
    return len(plan_views(mode, max_cameras, 2).camera_counts)


def view_feeds(feeds: Mapping[str, np.ndarray], views: SampleViews) -> Dict[str, np.ndarray]:
    """The ``vision`` feeds of one observation (batch 1) repeated to one row per view, with the camera
    slots past each view's count masked and zeroed: what ``vision_feeds`` gives an observation with
    only those cameras, without normalising the images again."""
    if int(feeds["images"].shape[0]) != 1:
        raise ValueError(f"feeds: expected one observation (batch 1), received {feeds['images'].shape[0]}")
    rows = len(views.camera_counts)
    out = {name: np.repeat(value, rows, axis=0) for name, value in feeds.items()}
    for row, count in enumerate(views.camera_counts):
        out["camera_mask"][row, count:] = False
        out["images"][row, count:] = 0.0
    return out


def single_camera_views(feeds: Mapping[str, np.ndarray]) -> bool:
    """Whether every row after the first is the first row seen through its camera 0 alone (what
    ``view_feeds`` makes of a ``cameras`` plan): a backend may then encode all rows from the first
    row's inputs (the torch backend's one-pass views) instead of encoding each row as given."""
    mask, images = feeds["camera_mask"], feeds["images"]
    if mask.shape[0] < 2:
        return False
    for row in range(1, mask.shape[0]):
        if mask[row, 1:].any() or mask[row, 0] != mask[0, 0] or not np.array_equal(images[row, 0], images[0, 0]):
            return False
        if any(not np.array_equal(value[row], value[0]) for name, value in feeds.items()
               if name not in ("images", "camera_mask")):
            return False
    return True
