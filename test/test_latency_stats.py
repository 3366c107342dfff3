"""latency_stats: percentiles over a bounded window, status counts, accepted rate on an injected clock."""
import threading

import pytest

from vla_inference.serving.latency_stats import LatencyStats


def test_percentiles_over_the_window():
    stats = LatencyStats()
    for ms in range(1, 101):
        stats.record_latency(float(ms))
    p = stats.latency_percentiles_ms()
    assert p[50] == pytest.approx(50.5)
    assert p[95] == pytest.approx(95.05)
    assert p[99] == pytest.approx(99.01)


def test_window_keeps_only_the_newest_samples():
    stats = LatencyStats(latency_window=10)
    for ms in range(1000):
        stats.record_latency(float(ms))
    p = stats.latency_percentiles_ms()
    assert p[50] == pytest.approx(994.5)
    assert stats.snapshot(now=0.0)["latency_samples"] == "10"


def test_non_finite_latencies_are_ignored():
    stats = LatencyStats()
    stats.record_latency(float("nan"))
    stats.record_latency(float("inf"))
    stats.record_latency(4.0)
    assert stats.latency_percentiles_ms()[99] == 4.0


def test_status_counts_and_response_latency():
    stats = LatencyStats()
    stats.record_response("OK", 12.0)
    stats.record_response("OK", 14.0)
    stats.record_response("SUPERSEDED")
    stats.count_status("INVALID_REQUEST")
    assert stats.status_counts() == {"OK": 2, "SUPERSEDED": 1, "INVALID_REQUEST": 1}
    assert stats.latency_percentiles_ms()[50] == pytest.approx(13.0)


def test_accepted_rate_over_the_last_window():
    stats = LatencyStats(rate_window_s=10.0)
    for k in range(100):
        stats.record_accepted(k * 0.2)
    assert stats.accepted_rate_hz(now=19.9) == pytest.approx(5.0)
    assert stats.accepted_rate_hz(now=24.9) == pytest.approx(2.5)
    assert stats.accepted_rate_hz(now=40.0) == 0.0


def test_accept_history_is_bounded():
    stats = LatencyStats(rate_window_s=1000.0, max_rate_samples=50)
    for k in range(10_000):
        stats.record_accepted(k * 0.001)
    assert stats.accepted_rate_hz(now=10.0) == pytest.approx(50 / 1000.0)


def test_snapshot_is_flat_strings_and_uses_the_injected_clock():
    now = [100.0]
    stats = LatencyStats(rate_window_s=2.0, clock=lambda: now[0])
    empty = stats.snapshot()
    assert empty["latency_p50_ms"] == "n/a" and empty["responses_total"] == "0"
    stats.record_accepted(99.5)
    stats.record_accepted(99.9)
    stats.record_response("OK", 20.0)
    stats.record_response("REJECTED_RATE_LIMIT")
    values = stats.snapshot()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in values.items())
    assert values["accepted_rate_hz"] == "1.00"
    assert values["latency_p50_ms"] == "20.00" and values["latency_p95_ms"] == "20.00"
    assert values["latency_p99_ms"] == "20.00"
    assert values["count_OK"] == "1" and values["count_REJECTED_RATE_LIMIT"] == "1"
    assert values["responses_total"] == "2"
    now[0] = 102.0
    assert stats.snapshot()["accepted_rate_hz"] == "0.00"


@pytest.mark.parametrize("kwargs", [{"latency_window": 0}, {"max_rate_samples": 0}, {"rate_window_s": 0.0},
                                    {"rate_window_s": float("nan")}])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        LatencyStats(**kwargs)


def test_concurrent_recording_counts_everything():
    stats = LatencyStats(latency_window=100_000)

    def record():
        for k in range(500):
            stats.record_response("OK", float(k))
            stats.record_accepted(1.0)

    threads = [threading.Thread(target=record) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stats.status_counts() == {"OK": 2000}
    assert stats.snapshot(now=1.0)["latency_samples"] == "2000"
    assert stats.accepted_rate_hz(now=1.0) == pytest.approx(2000 / 10.0)
