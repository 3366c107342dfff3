"""Serving statistics for ``/diagnostics``: latency percentiles, responses per status, accepted rate.

Memory is bounded whatever the load: latencies live in a fixed-size rolling window (the newest
``latency_window`` samples), accept times in a deque capped at ``max_rate_samples`` and pruned to the
last ``rate_window_s`` seconds, and status counters are keyed by the server's fixed set of status
names. The accepted rate is the number of accepts in the last
``rate_window_s`` seconds divided by ``rate_window_s``, so it reads low during the first window after
start. The clock is injectable so tests are deterministic.
"""
from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from typing import Callable, Deque, Dict, Optional

import numpy as np

PERCENTILES = (50, 95, 99)


class LatencyStats:
    """Thread-safe counters behind the server's diagnostics; ``snapshot`` gives a flat key -> str dict."""

    def __init__(
        self,
        latency_window: int = 1000,
        rate_window_s: float = 10.0,
        max_rate_samples: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if latency_window < 1 or max_rate_samples < 1:
            raise ValueError("latency_window and max_rate_samples must be >= 1")
        if not math.isfinite(rate_window_s) or rate_window_s <= 0:
            raise ValueError(f"rate_window_s: expected a finite value > 0, received {rate_window_s!r}")
        self._lock = threading.Lock()
        self._latencies_ms: Deque[float] = deque(maxlen=latency_window)
        self._accepted_at: Deque[float] = deque(maxlen=max_rate_samples)
        self._rate_window_s = float(rate_window_s)
        self._status_counts: Counter = Counter()
        self._clock = clock

    def record_accepted(self, now: float) -> None:
        """Count a request admitted by the rate limiter at ``now``."""
        with self._lock:
            self._accepted_at.append(now)
            self._prune(now)

    def record_latency(self, latency_ms: float) -> None:
        """Add one latency sample (non-finite values are ignored: they would poison the percentiles)."""
        if math.isfinite(latency_ms):
            with self._lock:
                self._latencies_ms.append(float(latency_ms))

    def count_status(self, status_name: str) -> None:
        with self._lock:
            self._status_counts[status_name] += 1

    def record_response(self, status_name: str, latency_ms: Optional[float] = None) -> None:
        """Count a response by status and, when given, add its latency."""
        self.count_status(status_name)
        if latency_ms is not None:
            self.record_latency(latency_ms)

    def status_counts(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._status_counts)

    def latency_percentiles_ms(self) -> Dict[int, float]:
        """{50: p50, 95: p95, 99: p99} over the rolling window; empty when no sample was recorded."""
        with self._lock:
            samples = np.fromiter(self._latencies_ms, dtype=np.float64, count=len(self._latencies_ms))
        if samples.size == 0:
            return {}
        values = np.percentile(samples, PERCENTILES)
        return {p: float(v) for p, v in zip(PERCENTILES, values)}

    def accepted_rate_hz(self, now: Optional[float] = None) -> float:
        """Accepted requests per second over the last ``rate_window_s`` seconds."""
        now = self._clock() if now is None else now
        with self._lock:
            self._prune(now)
            return len(self._accepted_at) / self._rate_window_s

    def snapshot(self, now: Optional[float] = None) -> Dict[str, str]:
        """Flat key -> str values, ready for ``diagnostic_msgs/KeyValue``."""
        percentiles = self.latency_percentiles_ms()
        with self._lock:
            samples = len(self._latencies_ms)
        values = {
            "accepted_rate_hz": f"{self.accepted_rate_hz(now):.2f}",
            "latency_samples": str(samples),
        }
        for p in PERCENTILES:
            values[f"latency_p{p}_ms"] = f"{percentiles[p]:.2f}" if p in percentiles else "n/a"
        counts = self.status_counts()
        for name in sorted(counts):
            values[f"count_{name}"] = str(counts[name])
        values["responses_total"] = str(sum(counts.values()))
        return values

    def _prune(self, now: float) -> None:
        horizon = now - self._rate_window_s
        while self._accepted_at and self._accepted_at[0] <= horizon:
            self._accepted_at.popleft()
