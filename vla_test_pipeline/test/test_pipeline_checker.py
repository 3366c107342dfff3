"""The smoke checks' judging, from hand-made records."""
import json

import numpy as np
import pytest

from vla_msgs.msg import InferenceResponse as R
from vla_test_pipeline.checker import SmokeRecorder, Thresholds, accepted_rate, format_table
from vla_test_pipeline.report import write_artifacts

T0 = 1000.0


def episode(success: bool, started_at: float = T0 + 1.0) -> dict:
    path = [[0.3, 0.0, 0.3], [0.4, 0.05, 0.2], [0.5, 0.1, 0.05]]
    return {"episode": 0, "scene": 1000000, "text": "reach the red block", "success": success,
            "reason": "success" if success else "timeout", "final_error_m": 0.01 if success else 0.2,
            "started_at": started_at, "duration_s": 1.0, "commands": 10, "ignored_commands": 2,
            "start": path[0], "target": [0.5, 0.1, 0.05], "path": path, "expert_path": path}


def recorder(rate_hz: float = 4.5, count: int = 40, latency_s: float = 0.15, shape=(16, 8),
             successes=(True, True, False)) -> SmokeRecorder:
    rec = SmokeRecorder(window_start=T0)
    for i in range(count):
        stamp = T0 + i / rate_hz
        rec.on_request(i, stamp)
        rec.on_response(i, R.STATUS_OK, stamp + latency_s, shape[0], shape[1], shape[0] * shape[1], 10, 60.0, "")
    rec.on_request(999, T0)
    rec.on_response(999, R.STATUS_REJECTED_RATE_LIMIT, T0 + 0.01, 0, 0, 0, 0, 0.1, "over 5 Hz")
    for success in successes:
        rec.on_episode(episode(success))
    rec.on_episode(episode(False, started_at=T0 - 5.0))  # began before the window: warm-up
    return rec


def test_a_healthy_run_passes_every_check(tmp_path):
    report = recorder().report(Thresholds(min_success_rate=0.6), window_end=T0 + 10.0)
    assert report.passed, format_table(report)
    assert report.statuses == {"OK": 40, "REJECTED_RATE_LIMIT": 1}
    assert report.accepted == 40 and report.accepted_rate_hz == pytest.approx(4.5)
    assert report.e2e_latency_ms["p95"] == pytest.approx(150.0)
    assert report.server_latency_ms["p50"] == pytest.approx(60.0)
    assert len(report.episodes) == 3 and report.warmup_episodes == 1
    assert report.success_rate == pytest.approx(2 / 3)
    assert report.steps_used == {"10": 40}
    table = format_table(report)
    for word in ("OK responses", "action shape", "accepted rate", "e2e latency p95", "task success", "PASS"):
        assert word in table
    write_artifacts(report, tmp_path, 0.03)
    record = json.loads((tmp_path / "smoke_report.json").read_text())
    assert record["passed"] is True and record["artifacts"]["png"].endswith("paths.png")
    assert (tmp_path / "paths.png").stat().st_size > 10_000


@pytest.mark.parametrize("kwargs, failing", [
    (dict(count=5), "OK responses"),
    (dict(shape=(16, 7)), "action shape"),
    (dict(rate_hz=8.0), "accepted rate"),
    (dict(latency_s=0.9), "e2e latency p95"),
    (dict(successes=(False, False, True)), "task success"),
    (dict(successes=()), "task success"),
])
def test_each_check_fails_on_its_own(kwargs, failing):
    report = recorder(**kwargs).report(Thresholds(min_success_rate=0.6), window_end=T0 + 10.0)
    assert [c.name for c in report.checks if not c.passed] == [failing]
    assert not report.passed and "FAIL" in format_table(report)


def test_rate_is_over_the_arrival_span_and_latency_needs_the_request_stamp():
    assert accepted_rate([1.0]) == 0.0
    assert accepted_rate(list(np.arange(0.0, 2.01, 0.25))) == pytest.approx(4.0)
    rec = SmokeRecorder(window_start=T0)
    rec.on_response(5, R.STATUS_OK, T0 + 1.0, 16, 8, 128, 10, 50.0, "")  # its request was never seen
    report = rec.report(Thresholds(min_ok_responses=1, min_episodes=0, min_success_rate=0.0), T0 + 2.0)
    assert report.e2e_latency_ms == {"samples": 0}
    assert [c.name for c in report.checks if not c.passed] == ["accepted rate", "e2e latency p95"]
