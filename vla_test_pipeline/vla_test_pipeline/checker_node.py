"""smoke_checker: watches the running graph for ``duration_s``, then prints the table and exits 0 / 1.

Subscribes ``/vla/inference/request`` (for the observation stamps behind end-to-end latency),
``/vla/inference/response``, ``/sim/episode`` and ``/diagnostics``; the judging lives in
``vla_test_pipeline.checker``. The demo runs this node inside its own process; ``launch.py`` runs
the console script and ends the launch when it exits.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.time import Time
from std_msgs.msg import String

from vla_inference import qos
from vla_inference.nodes.entry_point import graceful_sigint
from vla_inference.nodes.parameters import declare
from vla_inference.spec import interface
from vla_inference.synthetic.scene import SUCCESS_TOLERANCE_M
from vla_msgs.msg import InferenceRequest, InferenceResponse
from vla_test_pipeline import topics
from vla_test_pipeline.checker import SmokeRecorder, SmokeReport, Thresholds, format_table
from vla_test_pipeline.graph import CHECKER_NODE, INFERENCE_NODE
from vla_test_pipeline.report import write_artifacts

DEFAULTS = Thresholds()


class SmokeCheckerNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(CHECKER_NODE, **kwargs)
        self.duration_s = declare(self, "duration_s", 30.0, "How long to watch before judging, seconds.",
                                  float_range=(1.0, 3600.0), read_only=True)
        self.thresholds = Thresholds(
            min_ok_responses=declare(self, "min_ok_responses", DEFAULTS.min_ok_responses,
                                     "STATUS_OK responses needed.", int_range=(0, 100000), read_only=True),
            action_horizon=declare(self, "action_horizon", DEFAULTS.action_horizon,
                                   "Expected action_horizon of every chunk.", int_range=(1, 1000), read_only=True),
            action_dim=declare(self, "action_dim", DEFAULTS.action_dim, "Expected action_dim of every chunk.",
                               int_range=(1, 1000), read_only=True),
            max_request_rate_hz=declare(self, "max_request_rate_hz", DEFAULTS.max_request_rate_hz,
                                        "The server's accepted-rate limit.", float_range=(0.1, 100.0),
                                        read_only=True),
            rate_tolerance_hz=declare(self, "rate_tolerance_hz", DEFAULTS.rate_tolerance_hz,
                                      "Allowance over the limit for arrival jitter.", float_range=(0.0, 10.0),
                                      read_only=True),
            max_p95_latency_ms=declare(self, "max_p95_latency_ms", DEFAULTS.max_p95_latency_ms,
                                       "End-to-end p95 latency limit, ms.", float_range=(1.0, 60000.0),
                                       read_only=True),
            min_success_rate=declare(self, "min_success_rate", DEFAULTS.min_success_rate,
                                     "Share of episodes that must reach the target.", float_range=(0.0, 1.0),
                                     read_only=True),
            min_episodes=declare(self, "min_episodes", DEFAULTS.min_episodes,
                                 "Episodes that must finish inside the window.", int_range=(0, 10000),
                                 read_only=True),
        )
        self.output_dir = declare(self, "output_dir", "", "Where smoke_report.json and paths.png go; empty = "
                                  "no files.", read_only=True)
        self.recorder = SmokeRecorder(window_start=time.time())
        self._deadline = time.monotonic() + self.duration_s
        self.create_subscription(InferenceRequest, interface.REQUEST_TOPIC, self._on_request, qos.INFERENCE_QOS)
        self.create_subscription(InferenceResponse, interface.RESPONSE_TOPIC, self._on_response,
                                 qos.READER_QOS)
        self.create_subscription(String, topics.EPISODE_TOPIC, self._on_episode, topics.EPISODE_QOS)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    @property
    def done(self) -> bool:
        return time.monotonic() >= self._deadline

    def remaining_s(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def _on_request(self, msg: InferenceRequest) -> None:
        self.recorder.on_request(msg.request_id, Time.from_msg(msg.header.stamp).nanoseconds * 1e-9)

    def _on_response(self, msg: InferenceResponse) -> None:
        self.recorder.on_response(msg.request_id, msg.status, time.time(), msg.action_horizon, msg.action_dim,
                                  len(msg.action_seq), msg.denoising_steps, msg.latency_ms, msg.message)

    def _on_episode(self, msg: String) -> None:
        try:
            self.recorder.on_episode(json.loads(msg.data))
        except ValueError as exc:
            self.get_logger().warning(f"unreadable /sim/episode message: {exc}")

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(INFERENCE_NODE):
                self.recorder.on_diagnostics({kv.key: kv.value for kv in status.values})

    def finish(self) -> SmokeReport:
        """Judge the window so far; write the files when ``output_dir`` is set."""
        report = self.recorder.report(self.thresholds, time.time())
        if self.output_dir:
            write_artifacts(report, Path(self.output_dir), SUCCESS_TOLERANCE_M)
        return report


def main(args: Optional[list] = None) -> None:
    graceful_sigint()
    rclpy.init(args=args)
    node = SmokeCheckerNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    report: Optional[SmokeReport] = None
    try:
        while not node.done:
            executor.spin_once(timeout_sec=0.1)
        report = node.finish()
        print(format_table(report))
        if report.artifacts:
            print(f"  record: {report.artifacts['json']}\n  paths:  {report.artifacts['png']}")
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    sys.exit(0 if report is not None and report.passed else 1)


if __name__ == "__main__":
    main()
