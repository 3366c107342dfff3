"""The soak: its judge on made-up series (no ROS graph), then one real 3-minute run of the tool (what CI runs)."""
import json
import os
import subprocess
import sys
from typing import Callable, Sequence

import numpy as np
import pytest

from vla_test_pipeline.soak import plot_series, read_process
from vla_test_pipeline.soak_judge import (
    CLIENT,
    ROLES,
    SERVER,
    ProcessSample,
    Sample,
    SoakRecord,
    default_warmup_s,
    format_table,
    judge,
)

PERIOD_S = 10.0
COUNT = 36  # six minutes: a 60 s warm-up, then 31 samples (windows of 10)
MODEL_DIR = os.environ.get("VLA_TEST_MODEL_DIR", "")


def flat(value: float) -> Callable[[str, float], float]:
    return lambda role, t: value


def make_record(rss_mb: Callable[[str, float], float] = flat(400.0), fds: Callable[[str, float], float] = flat(26),
                threads: Callable[[str, float], float] = flat(31), latency_ms: Callable[[float], float] = lambda t: 300.0,
                served: Callable[[float], int] = lambda t: 40, lost: Sequence[int] = (),
                duplicated: Sequence[int] = ()) -> SoakRecord:
    """A six-minute soak sampled every 10 s; RSS and latencies carry a little noise, the counts none."""
    rng = np.random.default_rng(7)
    samples = []
    for k in range(1, COUNT + 1):
        t = k * PERIOD_S
        processes = {role: ProcessSample(rss_kb=int(rss_mb(role, t) * 1024 * (1 + 0.003 * rng.standard_normal())),
                                         fds=int(fds(role, t)), threads=int(threads(role, t))) for role in ROLES}
        latencies = list(latency_ms(t) * (1 + 0.05 * rng.standard_normal(served(t))))
        samples.append(Sample(
            t_s=t, processes=processes, accepted_rate_hz=served(t) / PERIOD_S,
            latency_p50_ms=float(np.percentile(latencies, 50)) if latencies else None,
            latency_p99_ms=float(np.percentile(latencies, 99)) if latencies else None,
            latencies_ms=latencies, status_counts={"OK": 40 * k}, requests_seen=40 * k, responses=40 * k,
            lost=0, duplicated=0, missed_control_ticks=None))
    return SoakRecord(duration_s=COUNT * PERIOD_S, period_s=PERIOD_S, warmup_s=default_warmup_s(COUNT * PERIOD_S),
                      samples=samples, lost_request_ids=list(lost), duplicated_request_ids=list(duplicated))


def failed(record: SoakRecord) -> set:
    return {v.name for v in judge(record) if not v.passed}


def spike(base: float, at_s: float, height: float) -> Callable[[str, float], float]:
    return lambda role, t: base + (height if t == at_s else 0.0)


def test_a_flat_run_passes_even_with_one_spike_per_series():
    record = make_record(rss_mb=spike(400.0, 300.0, 150.0), fds=spike(26, 340.0, 9), threads=spike(31, 70.0, 6),
                         latency_ms=lambda t: 900.0 if t == 330.0 else 300.0)
    assert not failed(record), format_table(record)
    assert record.passed
    assert "overall" in format_table(record) and "FAIL" not in format_table(record)


def test_an_rss_ramp_of_15_percent_fails_and_only_for_that_process():
    record = make_record(rss_mb=lambda role, t: 400.0 * (1 + 0.15 * t / 360.0) if role == SERVER else 100.0)
    assert failed(record) == {"server RSS growth"}, format_table(record)


def test_an_rss_step_of_12_percent_after_warm_up_fails():
    record = make_record(rss_mb=lambda role, t: 100.0 * (1.12 if t > 200.0 and role == CLIENT else 1.0))
    assert failed(record) == {"client RSS growth"}, format_table(record)


def test_a_small_rss_rise_passes():
    record = make_record(rss_mb=lambda role, t: 400.0 * (1 + 0.05 * t / 360.0))
    assert not failed(record), format_table(record)


def test_fd_growth_fails():
    record = make_record(fds=lambda role, t: 26 + (t // 120 if role == SERVER else 0))  # one more every 2 minutes
    assert failed(record) == {"server FDs trend"}, format_table(record)


def test_thread_growth_fails():
    record = make_record(threads=lambda role, t: 18 + (t > 250.0 if role == CLIENT else 0))
    assert failed(record) == {"client threads trend"}, format_table(record)


def test_a_lost_response_fails():
    assert failed(make_record(lost=[1234])) == {"lost responses"}


def test_a_duplicated_response_fails():
    assert failed(make_record(duplicated=[99])) == {"duplicated responses"}


def test_p99_drift_of_30_percent_fails_and_a_faster_late_window_passes():
    slower = make_record(latency_ms=lambda t: 300.0 * (1.3 if t > 250.0 else 1.0))
    assert failed(slower) == {"p99 drift"}, format_table(slower)
    assert not failed(make_record(latency_ms=lambda t: 300.0 * (0.7 if t > 250.0 else 1.0)))


def test_an_interval_with_nothing_served_fails():
    assert failed(make_record(served=lambda t: 0 if t == 200.0 else 40)) == {"served every interval"}


def test_a_node_that_died_fails_and_too_short_a_run_cannot_pass():
    record = make_record()
    record.failure = "vla_client_node exited with code 1; its log ends with:\n..."
    assert failed(record) == {"ran to the end"}
    short = make_record()
    short.samples = short.samples[:8]  # two samples after the warm-up
    assert "trend windows" in failed(short) and not short.passed


def test_warm_up_is_a_minute_or_a_tenth_but_at_most_a_third():
    assert (default_warmup_s(3600), default_warmup_s(180), default_warmup_s(60)) == (360.0, 60.0, 20.0)


def test_record_and_plot_files(tmp_path):
    record = make_record(lost=[5])
    judge(record)
    data = json.loads(record.to_json())
    assert data["passed"] is False and len(data["samples"]) == COUNT
    assert data["samples"][0]["processes"]["server"]["fds"] == 26
    assert plot_series(record, tmp_path / "soak.png").stat().st_size > 10_000


def test_read_process_sees_this_process():
    stats = read_process(os.getpid())
    assert stats.rss_kb > 10_000 and stats.fds >= 3 and stats.threads >= 1


@pytest.mark.timeout(540)
def test_three_minute_soak_of_the_real_graph_passes(tmp_path):
    # What CI runs: bring-up (~15-45 s), 180 s of samples, one response timeout, teardown.
    command = [sys.executable, "-m", "vla_test_pipeline.soak", "--duration", "180", "--period", "10",
               "--out", str(tmp_path), "--model-dir", MODEL_DIR]
    run = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=500)
    print(run.stdout)
    assert run.returncode == 0, run.stdout[-6000:]
    record = json.loads((tmp_path / "soak.json").read_text())
    assert record["passed"] and len(record["samples"]) >= 15
    assert (tmp_path / "soak.png").stat().st_size > 10_000
    assert "overall" in run.stdout
