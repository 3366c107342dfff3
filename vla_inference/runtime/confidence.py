"""Confidence from the dispersion of K action chunks sampled for the same observation.

The flow policy maps independent noise draws, seen through different camera views
(``runtime.sample_views``), to action chunks. Where the observation pins down what to do, the K
chunks agree; where it does not (a scrambled camera, a command the policy cannot read, a missing
sensor), they part. So:

* the spread is measured on what the robot would do. When the model directory's manifest lists
  ``path_dims`` (the action dimensions that are per-step position deltas), on the path they trace:
  the running sum of those dimensions over the chunk, in their own units (metres), because a
  robot executes the sum and a small per-step disagreement compounds into a different end point.
  Without ``path_dims``, on the actions themselves, each dimension divided by its typical
  magnitude ``action_scale[d]`` (the manifest's ``action_scale`` when it records one, else 1);
* ``dispersion = sqrt( mean over (h, d) of var_k(x[k, h, d]) )`` of that representation ``x``,
  with the unbiased variance (ddof=1): the root-mean-square per-element standard deviation across
  samples; 0 for samples that agree exactly;
* ``confidence = exp(-dispersion / scale)``, in (0, 1]: 1 when all samples agree, 1/e when their
  spread equals ``scale``. ``scale`` sets how quickly trust falls off; it does not change the
  ranking (so neither the AUROC). ``DEFAULT_SCALE`` is used unless the model directory's manifest
  records a ``confidence_scale`` calibrated for its policy.

On the shipped tiny policy (K=4 with camera views: three rows, 150 held-out scenes, offline),
measuring the path instead of the actions scaled to 3 cm / 1 (gripper) lifted the AUROC against a
scrambled command from 0.63 to 0.85 and against shuffled camera patches from 0.80 to 0.96: per-step
gripper flips and centimetre deltas hide the end point's disagreement.

With a single sample there is no dispersion to measure: confidence is NaN (callers that need a
score must ask for ``num_samples >= 2``).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

DEFAULT_SCALE = 0.1


def sample_dispersion(samples: np.ndarray, action_scale: Optional[Sequence[float]] = None,
                      path_dims: Optional[Sequence[int]] = None) -> float:
    """RMS over the chunk of the per-element standard deviation across samples [K, H, D]
    (of the traced path when ``path_dims`` is given, else of the scaled actions)."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 3:
        raise ValueError(f"samples: expected [K, H, D], received shape {samples.shape}")
    if samples.shape[0] < 2:
        return math.nan
    if path_dims is not None:
        dims = np.asarray(path_dims, dtype=np.int64)
        if dims.ndim != 1 or dims.size == 0 or dims.min() < 0 or dims.max() >= samples.shape[2]:
            raise ValueError(f"path_dims: expected action dimensions in [0, {samples.shape[2]}), "
                             f"received {list(path_dims)}")
        return float(np.sqrt(np.cumsum(samples[:, :, dims], axis=1).var(axis=0, ddof=1).mean()))
    if action_scale is not None:
        scale = np.asarray(action_scale, dtype=np.float64)
        if scale.shape != (samples.shape[2],) or not (scale > 0).all():
            raise ValueError(f"action_scale: expected {samples.shape[2]} positive values, received {scale.tolist()}")
        samples = samples / scale
    return float(np.sqrt(samples.var(axis=0, ddof=1).mean()))


def confidence_from_dispersion(dispersion: float, scale: float = DEFAULT_SCALE) -> float:
    """Map a dispersion >= 0 to a confidence in (0, 1]; NaN stays NaN."""
    if not scale > 0:
        raise ValueError(f"scale: expected > 0, received {scale}")
    return math.exp(-dispersion / scale) if not math.isnan(dispersion) else math.nan


def summarize_samples(
    samples: np.ndarray,
    scale: float = DEFAULT_SCALE,
    action_scale: Optional[Sequence[float]] = None,
    path_dims: Optional[Sequence[int]] = None,
) -> Tuple[np.ndarray, float, float]:
    """Return (mean chunk float32 [H, D], confidence, dispersion) of samples [K, H, D]."""
    dispersion = sample_dispersion(samples, action_scale, path_dims)
    mean = np.asarray(samples, dtype=np.float32).mean(axis=0, dtype=np.float64).astype(np.float32)
    return mean, confidence_from_dispersion(dispersion, scale), dispersion


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Probability that a positive scores above a negative (ties count half): Mann-Whitney U / (n+ n-)."""
    pos = np.asarray(positive, dtype=np.float64)
    neg = np.asarray(negative, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("auroc needs at least one positive and one negative score")
    scores = np.concatenate([pos, neg])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    start = 0
    while start < scores.size:  # average ranks over ties
        stop = start
        while stop + 1 < scores.size and sorted_scores[stop + 1] == sorted_scores[start]:
            stop += 1
        ranks[order[start : stop + 1]] = 0.5 * (start + stop) + 1.0
        start = stop + 1
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))
