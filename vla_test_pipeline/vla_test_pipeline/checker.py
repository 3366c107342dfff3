"""The smoke checks, without ROS: record what the graph did, then judge it against thresholds.

Definitions (what the table and the JSON record mean):

* accepted: a response whose status is neither REJECTED_RATE_LIMIT nor NOT_READY (the request
  passed the server's rate limiter); the accepted rate is (n - 1) / (last - first arrival).
* end-to-end latency: from the request's ``header.stamp`` (the observation time the client put on
  it) to the response's arrival at the checker, for OK responses; the server's own ``latency_ms``
  (receipt to publish) is reported next to it.
* task success: the share of episodes that *started* inside the checking window and succeeded;
  episodes already running when the window opened are counted as warm-up and left out.
"""
from __future__ import annotations

import json
import re
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List

import numpy as np

from vla_inference.client.vla_client import STATUS_NAMES
from vla_msgs.msg import InferenceResponse

OK = InferenceResponse.STATUS_OK
NOT_ACCEPTED = (InferenceResponse.STATUS_REJECTED_RATE_LIMIT, InferenceResponse.STATUS_NOT_READY)
MESSAGE_CHARS = 90
MAX_REASONS = 5


@dataclass(frozen=True)
class Thresholds:
    min_ok_responses: int = 10
    action_horizon: int = 16
    action_dim: int = 8
    max_request_rate_hz: float = 5.0
    rate_tolerance_hz: float = 0.5
    max_p95_latency_ms: float = 500.0
    min_success_rate: float = 0.5
    min_episodes: int = 1


@dataclass
class ResponseRecord:
    request_id: int
    status: int
    arrival: float  # wall-clock seconds
    horizon: int
    dim: int
    values: int
    denoising_steps: int
    server_latency_ms: float
    message: str


@dataclass
class Check:
    name: str
    passed: bool
    value: str
    limit: str


@dataclass
class SmokeReport:
    window_s: float
    requests_seen: int
    responses: int
    statuses: Dict[str, int]
    non_ok_reasons: Dict[str, int]  # "STATUS: message" -> count, for what went wrong
    accepted: int
    accepted_rate_hz: float
    e2e_latency_ms: Dict[str, float]
    server_latency_ms: Dict[str, float]
    steps_used: Dict[str, int]
    episodes: List[Dict[str, Any]]
    warmup_episodes: int
    success_rate: float
    diagnostics: Dict[str, str]
    checks: List[Check]
    config: Dict[str, Any] = field(default_factory=dict)
    artifacts: Dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "passed": self.passed}, indent=2)


def percentiles(values: List[float]) -> Dict[str, float]:
    if not values:
        return {"samples": 0}
    data = np.asarray(values, dtype=np.float64)
    return {"samples": int(data.size), "p50": float(np.percentile(data, 50)), "p95": float(np.percentile(data, 95)),
            "max": float(data.max())}


class SmokeRecorder:
    """Collects responses, request stamps, episodes and the server's diagnostics; thread-safe."""

    def __init__(self, window_start: float) -> None:
        self.window_start = window_start
        self._lock = threading.Lock()
        self._request_stamps: Dict[int, float] = {}
        self._requests_seen = 0
        self._responses: List[ResponseRecord] = []
        self._episodes: List[Dict[str, Any]] = []
        self._warmup_episodes = 0
        self._diagnostics: Dict[str, str] = {}

    def on_request(self, request_id: int, stamp: float) -> None:
        """A request's observation stamp (a large request may reach the checker after its response)."""
        with self._lock:
            self._requests_seen += 1
            self._request_stamps[request_id] = stamp

    def on_response(self, request_id: int, status: int, arrival: float, horizon: int, dim: int, values: int,
                    denoising_steps: int, server_latency_ms: float, message: str) -> None:
        with self._lock:
            self._responses.append(ResponseRecord(request_id, status, arrival, horizon, dim, values,
                                                  denoising_steps, server_latency_ms, message))

    def on_episode(self, episode: Dict[str, Any]) -> None:
        with self._lock:
            if episode.get("started_at", 0.0) >= self.window_start:
                self._episodes.append(episode)
            else:
                self._warmup_episodes += 1

    def on_diagnostics(self, values: Dict[str, str]) -> None:
        with self._lock:
            self._diagnostics = dict(values)

    def progress(self) -> str:
        """One line for a progress display."""
        with self._lock:
            counts = Counter(r.status for r in self._responses)
            wins = sum(1 for e in self._episodes if e.get("success"))
            return (f"responses {len(self._responses)} (OK {counts.get(OK, 0)}, other "
                    f"{len(self._responses) - counts.get(OK, 0)}) · episodes {len(self._episodes)} "
                    f"({wins} reached)")

    def report(self, thresholds: Thresholds, window_end: float) -> SmokeReport:
        with self._lock:
            responses = list(self._responses)
            stamps = dict(self._request_stamps)
            episodes = list(self._episodes)
            warmup = self._warmup_episodes
            requests_seen = self._requests_seen
            diagnostics = dict(self._diagnostics)
        return judge(responses, stamps, episodes, warmup, requests_seen, diagnostics, thresholds,
                     window_end - self.window_start)


def _reason(message: str) -> str:
    """A message with its numbers masked, so 'retry in 3 ms' and 'retry in 7 ms' count as one reason."""
    return re.sub(r"\d+(\.\d+)?", "#", message)[:MESSAGE_CHARS]


def accepted_rate(arrivals: List[float]) -> float:
    if len(arrivals) < 2:
        return 0.0
    span = max(arrivals) - min(arrivals)
    return (len(arrivals) - 1) / span if span > 0 else float("inf")


def judge(responses: List[ResponseRecord], request_stamps: Dict[int, float], episodes: List[Dict[str, Any]],
          warmup_episodes: int, requests_seen: int, diagnostics: Dict[str, str], t: Thresholds,
          window_s: float) -> SmokeReport:
    """Compute the summary and the pass/fail of every check."""
    statuses = Counter(STATUS_NAMES.get(r.status, str(r.status)) for r in responses)
    ok = [r for r in responses if r.status == OK]
    accepted = [r.arrival for r in responses if r.status not in NOT_ACCEPTED]
    rate = accepted_rate(accepted)
    e2e = percentiles([(r.arrival - request_stamps[r.request_id]) * 1000.0 for r in ok
                       if r.request_id in request_stamps])
    server = percentiles([r.server_latency_ms for r in ok])
    with_actions = [r for r in responses if r.horizon or r.dim or r.values]
    bad_shapes = [r for r in with_actions
                  if (r.horizon, r.dim) != (t.action_horizon, t.action_dim) or r.values != r.horizon * r.dim]
    successes = sum(1 for e in episodes if e.get("success"))
    success_rate = successes / len(episodes) if episodes else 0.0
    rate_limit = t.max_request_rate_hz + t.rate_tolerance_hz
    checks = [
        Check("OK responses", len(ok) >= t.min_ok_responses, str(len(ok)), f">= {t.min_ok_responses}"),
        Check("action shape", bool(ok) and not bad_shapes,
              f"{len(with_actions) - len(bad_shapes)}/{len(with_actions)} ok",
              f"{t.action_horizon}x{t.action_dim}"),
        Check("accepted rate", 0.0 < rate <= rate_limit, f"{rate:.2f} Hz", f"<= {rate_limit:.2f} Hz"),
        Check("e2e latency p95", e2e["samples"] > 0 and e2e["p95"] <= t.max_p95_latency_ms,
              f"{e2e['p95']:.0f} ms" if e2e["samples"] else "no samples", f"<= {t.max_p95_latency_ms:.0f} ms"),
        Check("task success", len(episodes) >= t.min_episodes and success_rate >= t.min_success_rate,
              f"{successes}/{len(episodes)} ({success_rate:.0%})",
              f">= {t.min_success_rate:.0%} of >= {t.min_episodes}"),
    ]
    return SmokeReport(
        window_s=window_s,
        requests_seen=requests_seen,
        responses=len(responses),
        statuses=dict(statuses),
        non_ok_reasons=dict(Counter(f"{STATUS_NAMES.get(r.status, str(r.status))}: {_reason(r.message)}"
                                    for r in responses if r.status != OK).most_common(MAX_REASONS)),
        accepted=len(accepted),
        accepted_rate_hz=rate,
        e2e_latency_ms=e2e,
        server_latency_ms=server,
        steps_used={str(k): v for k, v in sorted(Counter(r.denoising_steps for r in ok).items())},
        episodes=episodes,
        warmup_episodes=warmup_episodes,
        success_rate=success_rate,
        diagnostics=diagnostics,
        checks=checks,
    )


def format_table(report: SmokeReport, title: str = "smoke check") -> str:
    """The summary table printed at the end of the demo and by the smoke_checker script."""
    e2e, server = report.e2e_latency_ms, report.server_latency_ms

    def ms(stats: Dict[str, float]) -> str:
        return f"{stats['p50']:.0f} / {stats['p95']:.0f} ms" if stats.get("samples") else "-"

    statuses = ", ".join(f"{name} {count}" for name, count in sorted(report.statuses.items())) or "none"
    lines = [
        f"{title} — {report.window_s:.1f} s window",
        f"  requests seen {report.requests_seen} · responses {report.responses} ({statuses})",
        f"  accepted {report.accepted} at {report.accepted_rate_hz:.2f} Hz · latency p50 / p95: end-to-end "
        f"{ms(e2e)}, server {ms(server)} · steps used {report.steps_used or '-'}",
        f"  episodes {len(report.episodes)} (+{report.warmup_episodes} warm-up not counted)",
        *(f"  non-OK x{count}: {reason}" for reason, count in report.non_ok_reasons.items()),
        "",
        f"  {'check':<18} {'value':<20} {'limit':<22} result",
        f"  {'-' * 18} {'-' * 20} {'-' * 22} ------",
    ]
    lines += [f"  {c.name:<18} {c.value:<20} {c.limit:<22} {'PASS' if c.passed else 'FAIL'}" for c in report.checks]
    lines.append(f"  {'overall':<18} {'':<20} {'':<22} {'PASS' if report.passed else 'FAIL'}")
    return "\n".join(lines)
