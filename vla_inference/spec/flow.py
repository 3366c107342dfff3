"""The Euler flow schedule and loop, in one place so every backend integrates exactly the same times.

Flow time runs from 1 (noise) to 0 (data) in ``steps`` equal steps: step ``i`` evaluates the
velocity at ``t_i = 1 - i / steps`` and updates ``x <- x + dt * v`` with ``dt = -1 / steps``
(``vla_inference.spec.engine_spec``). Times are computed in float64 and rounded once to float32,
so a CUDA graph that reads them from a device buffer and a NumPy loop see identical values.
"""
from __future__ import annotations

from typing import Callable, Tuple, TypeVar

import numpy as np


def check_steps(steps: int) -> int:
    """``steps`` as an int, or ``ValueError`` when it is not an integer >= 1."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps: expected an integer >= 1, received {steps!r}")
    return int(steps)


def flow_schedule(steps: int) -> Tuple[np.ndarray, np.float32]:
    """Return (times float32 [steps], dt float32) for a ``steps``-step Euler integration."""
    check_steps(steps)
    times = (1.0 - np.arange(steps, dtype=np.float64) / steps).astype(np.float32)
    return times, np.float32(-1.0 / steps)


Actions = TypeVar("Actions")  # a NumPy array or a torch tensor


def euler_integrate(velocity: Callable[[Actions, np.float32], Actions], noise: Actions, steps: int) -> Actions:
    """Integrate ``noise`` (t = 1) to actions (t = 0): ``x <- x + dt * velocity(x, t_i)`` over the
    schedule. The host loop of every backend and of the PyTorch reference; GPU backends that replay
    a captured step read the same ``flow_schedule``. ``noise`` is not modified."""
    times, dt = flow_schedule(steps)
    x = noise
    for t in times:
        x = x + velocity(x, t) * float(dt)
    return x
