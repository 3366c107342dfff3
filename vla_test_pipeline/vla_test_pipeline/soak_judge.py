"""The soak's record and its judging, without ROS, so the verdicts can be tested on made-up series.

A soak samples the graph every ``period_s`` (see ``soak.py``); this module decides, from those
samples, whether the graph leaks or degrades. Every trend is judged after a warm-up (model arenas,
DDS discovery and thread pools settle in the first minute) on two windows: the first and the last
third of the samples after the warm-up.

* RSS growth (each process): the larger of (a) the late window's median over the early window's
  median and (b) the rise of a Theil-Sen line (the median of all pairwise slopes) over the judged
  span, both relative to the early median. (a) catches a step, (b) a steady leak over the whole span
  (window medians see only two thirds of a ramp); neither moves for one spike, since a median ignores
  it. Fails above 10 %.
* FD and thread trend (each process): the late window's median minus the early window's median.
  A lone spike or dip moves neither median, a leak that persists moves the late one. Fails above 0.
* Lost or duplicated responses: a request the observer saw with no response within the timeout, or
  a request_id answered twice. Fails above 0.
* p99 drift: each interval's p99 of the server-side latencies (``latency_ms``: request receipt to
  response publication) of the served responses (OK and DEADLINE_EXCEEDED: the model ran; leaving
  the late ones out would cap the p99 at the deadline); a window's p99 is the median of its
  intervals' p99s, so one slow interval (another job on a shared machine) cannot decide it, as it
  would a pooled p99 of a short run. Late window over early window; fails above +20 % (a faster
  late window passes).
* Liveness: every sample interval after the warm-up has at least one served response (a stalled
  server loses nothing, leaks nothing, and has no latency to drift).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

SERVER, CLIENT = "server", "client"
ROLES = (SERVER, CLIENT)
MIN_WINDOW_SAMPLES = 2  # per window, so at least 6 samples after the warm-up
MIN_WINDOW_LATENCIES = 20  # served responses per window before a p99 means anything


@dataclass(frozen=True)
class SoakThresholds:
    max_rss_growth: float = 0.10
    max_fd_growth: float = 0.0
    max_thread_growth: float = 0.0
    max_p99_drift: float = 0.20


@dataclass
class ProcessSample:
    rss_kb: int
    fds: int
    threads: int


@dataclass
class Sample:
    """One reading, ``t_s`` seconds after the soak began; rates and latencies cover the interval since the last one."""

    t_s: float
    processes: Dict[str, ProcessSample]  # by role: server, client
    accepted_rate_hz: float
    latency_p50_ms: Optional[float]
    latency_p99_ms: Optional[float]
    latencies_ms: List[float]  # the interval's served responses' latency_ms (pooled for the p99 drift)
    status_counts: Dict[str, int]  # cumulative, by status name
    requests_seen: int  # cumulative
    responses: int  # cumulative
    lost: int  # cumulative: declared lost so far
    duplicated: int  # cumulative
    missed_control_ticks: Optional[int]  # cumulative, from the client's diagnostics; None = the key is absent
    server_diagnostics: Dict[str, str] = field(default_factory=dict)  # the server's latest, for cross-checks


@dataclass
class Verdict:
    name: str
    passed: bool
    value: str
    limit: str


@dataclass
class SoakRecord:
    duration_s: float
    period_s: float
    warmup_s: float
    samples: List[Sample]
    lost_request_ids: List[int] = field(default_factory=list)  # settled: after a last wait of one timeout
    duplicated_request_ids: List[int] = field(default_factory=list)
    unmatched_responses: int = 0  # answers to requests the observer never saw (not judged: its own loss)
    failure: Optional[str] = None  # a node that died, or an interruption
    config: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    verdicts: List[Verdict] = field(default_factory=list)
    artifacts: Dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.verdicts) and all(v.passed for v in self.verdicts)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "passed": self.passed}, indent=1)


def default_warmup_s(duration_s: float) -> float:
    """A minute or a tenth of the run, whichever is longer, but never more than a third of it."""
    return min(max(60.0, 0.1 * duration_s), duration_s / 3.0)


def windows(samples: Sequence[Sample], warmup_s: float) -> Tuple[List[Sample], List[Sample], List[Sample]]:
    """(judged, early, late): the samples after the warm-up, and their first and last thirds."""
    judged = [s for s in samples if s.t_s >= warmup_s]
    k = len(judged) // 3
    return judged, judged[:k], judged[len(judged) - k:]


def theil_sen_slope(t: Sequence[float], y: Sequence[float]) -> float:
    """The median of the slopes between every pair of points: up to ~29 % outliers cannot move it."""
    t_arr, y_arr = np.asarray(t, dtype=np.float64), np.asarray(y, dtype=np.float64)
    i, j = np.triu_indices(t_arr.size, k=1)
    dt = t_arr[j] - t_arr[i]
    keep = dt != 0
    return float(np.median((y_arr[j] - y_arr[i])[keep] / dt[keep])) if keep.any() else 0.0


def rss_growth(judged: Sequence[Sample], early: Sequence[Sample], late: Sequence[Sample], role: str
               ) -> Tuple[float, float]:
    """(window growth, trend growth), each relative to the early window's median RSS."""
    rss = [float(s.processes[role].rss_kb) for s in judged]
    level = float(np.median([s.processes[role].rss_kb for s in early]))
    window = float(np.median([s.processes[role].rss_kb for s in late])) / level - 1.0
    span = judged[-1].t_s - judged[0].t_s
    trend = theil_sen_slope([s.t_s for s in judged], rss) * span / level
    return window, trend


def count_growth(early: Sequence[Sample], late: Sequence[Sample], role: str, attribute: str) -> float:
    def median(part: Sequence[Sample]) -> float:
        return float(np.median([getattr(s.processes[role], attribute) for s in part]))
    return median(late) - median(early)


def window_p99(part: Sequence[Sample]) -> Tuple[Optional[float], int]:
    """(median of the intervals' p99s, latencies behind them); None when too few to mean anything."""
    count = sum(len(s.latencies_ms) for s in part)
    p99s = [s.latency_p99_ms for s in part if s.latency_p99_ms is not None]
    if count < MIN_WINDOW_LATENCIES:
        return None, count
    return float(np.median(p99s)), count


def judge(record: SoakRecord, t: SoakThresholds = SoakThresholds()) -> List[Verdict]:
    """Every verdict of the run; also stored in ``record.verdicts``."""
    judged, early, late = windows(record.samples, record.warmup_s)
    verdicts: List[Verdict] = []
    if record.failure:
        verdicts.append(Verdict("ran to the end", False, record.failure.splitlines()[0][:60], "no node died"))
    lost, duplicated = len(record.lost_request_ids), len(record.duplicated_request_ids)
    verdicts += [
        Verdict("lost responses", lost == 0, str(lost), "0"),
        Verdict("duplicated responses", duplicated == 0, str(duplicated), "0"),
    ]
    if len(early) < MIN_WINDOW_SAMPLES:
        verdicts.append(Verdict("trend windows", False, f"{len(judged)} samples after warm-up",
                                f">= {3 * MIN_WINDOW_SAMPLES} (longer run)"))
        record.verdicts = verdicts
        return verdicts
    for role in ROLES:
        window, trend = rss_growth(judged, early, late, role)
        growth = max(window, trend)
        verdicts.append(Verdict(f"{role} RSS growth", growth <= t.max_rss_growth,
                                f"{growth:+.1%} (win {window:+.1%}, fit {trend:+.1%})", f"<= {t.max_rss_growth:+.0%}"))
    for attribute, label, limit in (("fds", "FDs", t.max_fd_growth), ("threads", "threads", t.max_thread_growth)):
        for role in ROLES:
            growth = count_growth(early, late, role, attribute)
            verdicts.append(Verdict(f"{role} {label} trend", growth <= limit, f"{growth:+g} (late - early median)",
                                    f"<= {limit:+g}"))
    (p99_early, n_early), (p99_late, n_late) = window_p99(early), window_p99(late)
    if p99_early is None or p99_late is None:
        verdicts.append(Verdict("p99 drift", False, f"{n_early} / {n_late} latencies",
                                f">= {MIN_WINDOW_LATENCIES} per window"))
    else:
        drift = p99_late / p99_early - 1.0
        verdicts.append(Verdict("p99 drift", drift <= t.max_p99_drift,
                                f"{drift:+.1%} ({p99_early:.0f} -> {p99_late:.0f} ms)", f"<= {t.max_p99_drift:+.0%}"))
    stalled = [s.t_s for s in judged if not s.latencies_ms]
    verdicts.append(Verdict("served every interval", not stalled,
                            f"{len(judged) - len(stalled)}/{len(judged)}" + (f" (none at {stalled[0]:.0f} s)" if stalled
                                                                            else ""), "all"))
    record.verdicts = verdicts
    return verdicts


def _span(values: Sequence[float], unit: str = "", scale: float = 1.0, digits: int = 0) -> str:
    return f"{values[0] / scale:.{digits}f} -> {values[-1] / scale:.{digits}f}{unit} (max {max(values) / scale:.{digits}f})"


def format_table(record: SoakRecord) -> str:
    """The summary printed at the end of a soak: the series at a glance, then the verdicts."""
    samples = record.samples
    lines = [f"soak — {samples[-1].t_s if samples else 0:.0f} s of {record.duration_s:g} s, {len(samples)} samples "
             f"every {record.period_s:g} s, warm-up {record.warmup_s:.0f} s"]
    if samples:
        last = samples[-1]
        for role in ROLES:
            stats = [s.processes[role] for s in samples]
            lines.append(f"  {role:<6} RSS {_span([p.rss_kb for p in stats], ' MB', 1024.0, 1)} · FDs "
                         f"{_span([p.fds for p in stats])} · threads {_span([p.threads for p in stats])}")
        latencies = [v for s in samples for v in s.latencies_ms]
        rates = [s.accepted_rate_hz for s in samples]
        latency = (f"p50 {np.percentile(latencies, 50):.0f} / p99 {np.percentile(latencies, 99):.0f} ms "
                   f"({len(latencies)} served)") if latencies else "no response served"
        lines += [
            f"  requests seen {last.requests_seen} · responses {last.responses} ("
            + (", ".join(f"{k} {v}" for k, v in sorted(last.status_counts.items())) or "none") + ")",
            f"  accepted {np.mean(rates):.2f} Hz mean ({min(rates):.2f}..{max(rates):.2f}) · server latency {latency}",
            f"  lost {len(record.lost_request_ids)} · duplicated {len(record.duplicated_request_ids)} · answers to "
            f"unseen requests {record.unmatched_responses} · missed control ticks "
            + (str(last.missed_control_ticks) if last.missed_control_ticks is not None else "unknown"),
        ]
    lines += [f"  note: {note}" for note in record.notes]
    lines += ["", f"  {'check':<22} {'value':<40} {'limit':<22} result", f"  {'-' * 22} {'-' * 40} {'-' * 22} ------"]
    lines += [f"  {v.name:<22} {v.value:<40} {v.limit:<22} {'PASS' if v.passed else 'FAIL'}" for v in record.verdicts]
    lines.append(f"  {'overall':<22} {'':<40} {'':<22} {'PASS' if record.passed else 'FAIL'}")
    return "\n".join(lines)
