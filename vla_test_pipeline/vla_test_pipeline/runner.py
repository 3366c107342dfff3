"""The graph without launch_ros: the nodes of ``graph.build_graph`` as processes, lifecycle driven here.

``launch``/``launch_ros`` cannot be installed from the package sources this project builds from, so
this module does what ``launch/launch.py`` does, from the same graph description: start every node
with its name, parameters and remappings; configure and activate the inference node through the
standard ``lifecycle_msgs`` services; watch the processes; and tear everything down on success,
failure, Ctrl-C or SIGTERM.

    python -m vla_test_pipeline.runner --cameras 2 --no-lidar --duration 0   # until Ctrl-C
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from vla_inference.spec.interface import BACKENDS
from vla_test_pipeline.graph import CAMERA_NAMES, GraphConfig, build_graph, graph_environment
from vla_test_pipeline.lifecycle import LifecycleClient, LifecycleError
from vla_test_pipeline.processes import ProcessSet, Resolver, installed_executable

Progress = Callable[[str], None]
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


@dataclass(frozen=True)
class BringUpTimeouts:
    services_s: float = 45.0  # process start-up, on a loaded 2-core machine
    configure_s: float = 120.0  # model load and warm-up
    activate_s: float = 15.0


class GraphSession:
    """One running graph: its processes, an rclpy node of the runner's own, and the lifecycle bring-up.

    The runner's node is spun by a background executor; callers may add nodes to it (``add_node``)
    or use ``node`` for their own subscriptions and service calls. ``close`` is idempotent.
    """

    def __init__(self, config: GraphConfig, out_dir: Path, *, include_checker: bool = False,
                 resolve: Resolver = installed_executable, progress: Progress = lambda _: None,
                 stop: Optional[threading.Event] = None, timeouts: BringUpTimeouts = BringUpTimeouts()) -> None:
        self.config = config
        self.nodes = build_graph(config, include_checker=include_checker)
        self.out_dir = out_dir
        self.stop = stop or threading.Event()
        self.processes = ProcessSet(out_dir / "logs", out_dir / "params", resolve,
                                    env={**os.environ, **graph_environment(os.environ)})
        self._progress = progress
        self._timeouts = timeouts
        self._context: Optional[Context] = None
        self._executor: Optional[MultiThreadedExecutor] = None
        self._spin_thread: Optional[threading.Thread] = None
        self.node: Optional[Node] = None
        self._guest_nodes: List[Node] = []
        self.exit_codes: Dict[str, Optional[int]] = {}
        self._closed = False

    def __enter__(self) -> "GraphSession":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start every process and bring the lifecycle nodes to active; raises on any failure (and cleans up)."""
        self._context = Context()
        rclpy.init(context=self._context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("vla_pipeline_runner", context=self._context)
        self._executor = MultiThreadedExecutor(num_threads=2, context=self._context)
        self._executor.add_node(self.node)
        self._spin_thread = threading.Thread(target=self._spin, name="runner-executor", daemon=True)
        self._spin_thread.start()
        try:
            self._progress(f"starting {len(self.nodes)} processes (logs in {self.out_dir / 'logs'})")
            self.processes.start_all(self.nodes)
            for spec in self.nodes:
                if spec.lifecycle:
                    self._progress(f"{spec.name}: configure (loads the {self.config.backend} backend), then activate")
                    started = time.monotonic()
                    try:
                        LifecycleClient(self.node, spec.name, self.abort_reason).bring_up(
                            self._timeouts.services_s, self._timeouts.configure_s, self._timeouts.activate_s)
                    except LifecycleError as exc:
                        process = self.processes[spec.name]
                        raise LifecycleError(f"{exc}; {process.log_path} ends with:\n{process.log_tail(5)}") from None
                    self._progress(f"{spec.name}: active after {time.monotonic() - started:.1f} s")
        except BaseException:
            self.close()
            raise

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except Exception:  # noqa: BLE001 - the context was shut down under the executor: nothing left to spin
            pass

    @property
    def context(self) -> Context:
        """The runner's ROS context: create nodes in it to have them spun by ``add_node``."""
        return self._context

    def add_node(self, node: Node) -> None:
        """Spin ``node`` (created in ``context``) with the runner's executor; ``close`` destroys it."""
        self._guest_nodes.append(node)
        self._executor.add_node(node)

    def failed_process(self) -> Optional[str]:
        """A description (with its log's tail) of the first node process that has exited, else None."""
        for process in self.processes.exited():
            tail = process.log_tail()
            return (f"{process.name} exited with code {process.popen.returncode}; its log "
                    f"({process.log_path}) ends with:\n{tail}")
        return None

    def abort_reason(self) -> Optional[str]:
        if self.stop.is_set():
            return "interrupted"
        failure = self.failed_process()
        return failure.splitlines()[0] if failure else None

    def close(self) -> Dict[str, Optional[int]]:
        """Stop every process (SIGINT, SIGTERM, SIGKILL), then the runner's own ROS context."""
        if self._closed:
            return self.exit_codes
        self._closed = True
        if any(True for _ in self.processes):
            self._progress("stopping the graph")
            self.exit_codes = self.processes.stop()
            unclean = {name: code for name, code in self.exit_codes.items() if code != 0}
            if unclean:
                self._progress("exit codes other than 0 (negative = signal): "
                               + ", ".join(f"{name}={code}" for name, code in unclean.items()))
        if self._executor is not None:
            self._executor.shutdown(timeout_sec=2.0)
        for node in (*self._guest_nodes, *([self.node] if self.node is not None else [])):
            node.destroy_node()
        if self._context is not None:
            self._context.try_shutdown()
        if self._spin_thread is not None:
            self._spin_thread.join(timeout=2.0)
        return self.exit_codes


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[List[int]]:
    """SIGINT and SIGTERM set ``stop`` (and are listed) instead of raising, so teardown runs in order."""
    received: List[int] = []

    def handler(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def timestamped(start: float) -> Progress:
    """A progress printer for the command line: '[  12.3 s] message'."""
    def show(message: str) -> None:
        print(f"[{time.monotonic() - start:6.1f} s] {message}", flush=True)
    return show


def add_graph_arguments(parser: argparse.ArgumentParser, default_duration: float) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    parser.add_argument("--model-dir", default="", help="model directory (default: the shipped policy)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="inference device (auto: tensorrt -> cuda, torch -> cuda when a GPU is visible)")
    parser.add_argument("--precision", default="auto", help="backend precision (auto: the backend's default)")
    parser.add_argument("--steps", type=int, default=10, help="denoising_steps of the inference node (1..50)")
    parser.add_argument("--cameras", type=int, default=3, choices=range(1, len(CAMERA_NAMES) + 1),
                        help="number of cameras (front, left, right: the first N)")
    parser.add_argument("--no-lidar", action="store_true", help="run without the LiDAR and its adapter")
    parser.add_argument("--duration", type=float, default=default_duration,
                        help="seconds to run (runner: 0 = until Ctrl-C)")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory (logs, reports)")


def config_from_args(args: argparse.Namespace) -> GraphConfig:
    return GraphConfig(backend=args.backend, model_dir=args.model_dir, device=args.device, precision=args.precision,
                       denoising_steps=args.steps,
                       num_cameras=args.cameras, use_lidar=not args.no_lidar, duration_s=args.duration,
                       output_dir=str(args.out))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Run the synthetic-robot graph as processes (no launch_ros).")
    add_graph_arguments(parser, default_duration=0.0)
    args = parser.parse_args(argv)
    os.environ.update(graph_environment(os.environ))  # this process's own nodes use the graph's transports too
    show = timestamped(time.monotonic())
    stop = threading.Event()
    with stop_on_signals(stop) as received:
        try:
            session = GraphSession(config_from_args(args), args.out, progress=show, stop=stop)
            session.start()
        except Exception as exc:  # noqa: BLE001 - one line for the user; the logs hold the rest
            show(f"bring-up failed: {exc}")
            return EXIT_INTERRUPTED if received else EXIT_FAILED
        try:
            deadline = time.monotonic() + args.duration if args.duration > 0 else float("inf")
            failure = None
            while not stop.wait(1.0) and time.monotonic() < deadline:
                failure = session.failed_process()
                if failure:
                    show(failure)
                    break
        finally:
            session.close()
    if received:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if failure else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
