"""The Euler flow schedule, in one place so every backend integrates exactly the same times.

Flow time runs from 1 (noise) to 0 (data) in ``steps`` equal steps: step ``i`` evaluates the
velocity at ``t_i = 1 - i / steps`` and updates ``x <- x + dt * v`` with ``dt = -1 / steps``
(``vla_inference.spec.engine_spec``). Times are computed in float64 and rounded once to float32,
so a CUDA graph that reads them from a device buffer and a NumPy loop see identical values.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def flow_schedule(steps: int) -> Tuple[np.ndarray, np.float32]:
    """Return (times float32 [steps], dt float32) for a ``steps``-step Euler integration."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps: expected an integer >= 1, received {steps!r}")
    times = (1.0 - np.arange(steps, dtype=np.float64) / steps).astype(np.float32)
    return times, np.float32(-1.0 / steps)
