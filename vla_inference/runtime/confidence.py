"""Confidence from the dispersion of K action chunks sampled for the same observation.

The flow policy maps independent noise draws to action chunks. Where the observation pins down
what to do, the K chunks agree; where it does not (an unfamiliar scene, a scrambled camera, a
command the policy never learned), the flow keeps part of the noise's spread. So:

* ``dispersion = sqrt( mean over (h, d) of var_k(samples[k, h, d] / action_scale[d]) )`` with the
  unbiased variance (ddof=1): the root-mean-square per-element standard deviation across samples,
  each action dimension in units of its typical magnitude ``action_scale[d]`` (the manifest's
  ``action_scale`` when it records one, else 1), so centimetre position deltas and a +-1 gripper
  command weigh alike; 0 for samples that agree exactly;
* ``confidence = exp(-dispersion / scale)``, in (0, 1]: 1 when all samples agree, 1/e when their
  spread equals ``scale``. ``scale`` sets how quickly trust falls off; it does not change the
  ranking (so neither the AUROC). ``DEFAULT_SCALE`` is used unless the model directory's manifest
  records a ``confidence_scale`` calibrated for its policy.

With a single sample there is no dispersion to measure: confidence is NaN (callers that need a
score must ask for ``num_samples >= 2``).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

DEFAULT_SCALE = 0.1


def sample_dispersion(samples: np.ndarray, action_scale: Optional[Sequence[float]] = None) -> float:
    """RMS over the chunk of the per-element standard deviation across samples [K, H, D]."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 3:
        raise ValueError(f"samples: expected [K, H, D], received shape {samples.shape}")
    if samples.shape[0] < 2:
        return math.nan
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
    samples: np.ndarray, scale: float = DEFAULT_SCALE, action_scale: Optional[Sequence[float]] = None
) -> Tuple[np.ndarray, float, float]:
    """Return (mean chunk float32 [H, D], confidence, dispersion) of samples [K, H, D]."""
    dispersion = sample_dispersion(samples, action_scale)
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
