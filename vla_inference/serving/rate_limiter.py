"""Per-request admission at a maximum rate, with the time to wait when refused.

The limiter enforces a minimum interval of ``1 / max_rate_hz`` between accepted requests instead of
a token bucket. A bucket lets a client that was quiet fire a burst of requests back to back, which
for a 5 Hz policy server means queued, soon superseded work and latency spikes; with a minimum
interval the accepted rate never exceeds ``max_rate_hz`` over any window (at most
``floor(T * max_rate_hz) + 1`` accepts in any closed window of T seconds). The cost: a client pacing
at exactly the maximum rate with jitter sees some requests refused, so clients pace a little below it
or honour ``retry_after_s``.

Time is passed in (``now``, seconds of a monotonic clock) so decisions are deterministic in tests.
A tolerance of 1 ns absorbs floating-point rounding of ``now`` values that are exactly one interval
apart.
"""
from __future__ import annotations

import math
import threading
from typing import NamedTuple, Optional

_ROUNDING_TOLERANCE_S = 1e-9


class RateDecision(NamedTuple):
    """accepted: admit the request; retry_after_s: seconds until one would be admitted (0 if accepted)."""

    accepted: bool
    retry_after_s: float


def _checked_rate(max_rate_hz: float) -> float:
    rate = float(max_rate_hz)
    if not math.isfinite(rate) or rate <= 0.0:
        raise ValueError(f"max_rate_hz: expected a finite value > 0, received {max_rate_hz!r}")
    return rate


class RateLimiter:
    """Admit requests no closer together than ``1 / max_rate_hz`` seconds. Thread-safe."""

    def __init__(self, max_rate_hz: float) -> None:
        self._lock = threading.Lock()
        self._interval_s = 1.0 / _checked_rate(max_rate_hz)
        self._last_accepted: Optional[float] = None

    @property
    def max_rate_hz(self) -> float:
        with self._lock:
            return 1.0 / self._interval_s

    def set_rate(self, max_rate_hz: float) -> None:
        """Change the rate at run time; the next decision measures the new interval from the last accept."""
        interval_s = 1.0 / _checked_rate(max_rate_hz)
        with self._lock:
            self._interval_s = interval_s

    def try_acquire(self, now: float) -> RateDecision:
        """Accept (and record) a request arriving at ``now``, or say how long until one would be accepted."""
        if not math.isfinite(now):
            raise ValueError(f"now: expected a finite time, received {now!r}")
        with self._lock:
            if self._last_accepted is not None:
                wait_s = self._last_accepted + self._interval_s - now
                if wait_s > _ROUNDING_TOLERANCE_S:
                    return RateDecision(False, wait_s)
            self._last_accepted = now
            return RateDecision(True, 0.0)

    def reset(self) -> None:
        """Forget the last accept (for a server that restarts serving)."""
        with self._lock:
            self._last_accepted = None
