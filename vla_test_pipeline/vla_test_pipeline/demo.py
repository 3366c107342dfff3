"""``make demo``: the synthetic robot driven by the shipped policy, judged by the smoke checker.

Starts the graph as processes (``runner.GraphSession``), runs the smoke checker inside this process
for ``--duration`` seconds while printing progress, tears the graph down, and ends with the summary
table, the paths PNG and exit code 0 (all checks passed), 1 (a check failed or a node died) or
130 (interrupted).

    python -m vla_test_pipeline.demo --duration 30 --out out/demo
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import List, Optional

from rclpy.parameter import Parameter

from vla_test_pipeline.checker import format_table
from vla_test_pipeline.checker_node import SmokeCheckerNode
from vla_test_pipeline.graph import checker_parameters, graph_environment
from vla_test_pipeline.runner import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    GraphSession,
    add_graph_arguments,
    config_from_args,
    stop_on_signals,
    timestamped,
)

PROGRESS_PERIOD_S = 3.0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Synthetic robot + VLA policy demo with smoke checks.")
    add_graph_arguments(parser, default_duration=30.0)
    args = parser.parse_args(argv)
    if args.duration <= 0:
        parser.error("--duration must be positive")
    config = config_from_args(args)
    os.environ.update(graph_environment(os.environ))  # the in-process checker uses the graph's transports too
    show = timestamped(time.monotonic())
    stop = threading.Event()
    with stop_on_signals(stop) as received:
        show(f"demo: {config.backend}, {config.denoising_steps} steps, cameras {config.camera_names}, "
             f"LiDAR {'on' if config.use_lidar else 'off'}, {config.duration_s:g} s")
        session = GraphSession(config, args.out, progress=show, stop=stop)
        try:
            session.start()
        except Exception as exc:  # noqa: BLE001 - one line for the user; the logs hold the rest
            show(f"bring-up failed: {exc}")
            return EXIT_INTERRUPTED if received else EXIT_FAILED
        failure = None
        try:
            overrides = [Parameter(name, value=value) for name, value in checker_parameters(config).items()]
            checker = SmokeCheckerNode(context=session.context, parameter_overrides=overrides)
            session.add_node(checker)
            show(f"checking for {config.duration_s:g} s")
            while not checker.done and not stop.wait(min(PROGRESS_PERIOD_S, checker.remaining_s())):
                failure = session.failed_process()
                if failure:
                    break
                show(f"{checker.remaining_s():4.0f} s left · {checker.recorder.progress()}")
            report = None if stop.is_set() else checker.finish()
        finally:
            session.close()
    if received:
        show("interrupted: graph stopped")
        return EXIT_INTERRUPTED
    if failure:
        show(f"a node died: {failure}")
    print()
    print(format_table(report, title=f"smoke check ({config.backend}, {config.denoising_steps} steps, "
                                     f"{config.num_cameras} cameras, LiDAR {'on' if config.use_lidar else 'off'})"))
    print(f"\n  paths PNG: {report.artifacts['png']}\n  record:    {report.artifacts['json']}")
    return EXIT_OK if report.passed and not failure else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
