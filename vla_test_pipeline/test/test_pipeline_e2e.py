"""End to end: the whole graph as processes over real DDS, the shipped policy on ONNX Runtime.

Each test starts its own graph (about 20 s with start-up and teardown). ``VLA_TEST_MODEL_DIR``
points the tests at another model directory (empty: the shipped policy).
"""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List

import psutil
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from std_msgs.msg import Float32MultiArray

from vla_inference import qos
from vla_inference.spec import interface
from vla_inference.spec.manifest import MANIFEST_NAME, shipped_model_dir
from vla_msgs.msg import InferenceResponse
from vla_test_pipeline import topics
from vla_test_pipeline.checker import format_table
from vla_test_pipeline.checker_node import SmokeCheckerNode
from vla_test_pipeline.graph import INFERENCE_NODE, GraphConfig, NodeSpec, checker_parameters
from vla_test_pipeline.lifecycle import LifecycleClient
from vla_test_pipeline.processes import installed_executable
from vla_test_pipeline.runner import GraphSession

MODEL_DIR = os.environ.get("VLA_TEST_MODEL_DIR", "")
CAMERAS = "synthetic_cameras"


@pytest.fixture(scope="module", autouse=True)
def model_available():
    model = Path(MODEL_DIR) if MODEL_DIR else shipped_model_dir()
    assert (model / MANIFEST_NAME).is_file(), f"no model at {model}: the shipped policy is missing"


def config(**overrides) -> GraphConfig:
    return GraphConfig(model_dir=MODEL_DIR, **overrides)


class Responses:
    """Every /vla/inference/response the runner's node hears, with its arrival time."""

    def __init__(self, session: GraphSession) -> None:
        self._lock = threading.Lock()
        self._items: List[tuple] = []
        session.node.create_subscription(InferenceResponse, interface.RESPONSE_TOPIC, self._on, qos.INFERENCE_QOS)

    def _on(self, msg: InferenceResponse) -> None:
        with self._lock:
            self._items.append((time.monotonic(), msg))

    def since(self, t: float, status: int = None, until: float = float("inf")) -> List[InferenceResponse]:
        with self._lock:
            return [m for at, m in self._items if t <= at < until and (status is None or m.status == status)]

    def first_arrival(self, t: float, status: int) -> float:
        with self._lock:
            return min(at for at, m in self._items if at >= t and m.status == status)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting for {what}"
        time.sleep(0.1)


def run_smoke_check(graph_config: GraphConfig, out_dir: Path, **session_options):
    """The graph plus the smoke checker for the config's duration; returns (report, exit codes)."""
    with GraphSession(graph_config, out_dir, progress=print, **session_options) as session:
        overrides = [Parameter(k, value=v) for k, v in checker_parameters(graph_config).items()]
        checker = SmokeCheckerNode(context=session.context, parameter_overrides=overrides)
        session.add_node(checker)
        wait_until(lambda: checker.done or session.failed_process() is not None, 30.0, "the check window")
        assert session.failed_process() is None, session.failed_process()
        report = checker.finish()
    print(format_table(report))
    return report, session.exit_codes


def test_smoke_checks_pass_with_the_shipped_policy(tmp_path):
    # 25 s: several closed-loop episodes (each up to 8 s), so one missed reach cannot decide the check.
    report, exit_codes = run_smoke_check(config(duration_s=25.0, output_dir=str(tmp_path)), tmp_path)
    assert report.passed, format_table(report)
    assert Path(report.artifacts["png"]).stat().st_size > 10_000
    failed = {name: code for name, code in exit_codes.items() if code != 0}
    assert not failed, f"processes that did not exit cleanly: {failed}"


# A lifecycle stand-in for vla_inference_node that answers every request with the expert's chunk for
# the current scene, planned from the request's state, after the shipped policy's typical inference
# time: the robot side (client, chunk executor, synthetic robot) must then reach every target,
# whatever the trained policy's quality.
MODEL_TIME_S = 0.06
EXPERT_SERVER = textwrap.dedent(f"""
    import dataclasses, sys, time
    import numpy as np
    from rclpy.lifecycle import LifecycleNode
    from std_msgs.msg import UInt32
    from vla_msgs.msg import InferenceRequest, InferenceResponse
    from vla_inference import qos
    from vla_inference.spec import interface
    from vla_inference.nodes.entry_point import spin_node
    from vla_inference.synthetic.scene import expert_actions, generate_scene
    from vla_test_pipeline import topics

    class ExpertServer(LifecycleNode):
        def __init__(self):
            super().__init__("expert")
            self.scene = None
            self.active = False
            self.create_subscription(UInt32, topics.SCENE_TOPIC, self.on_scene, topics.LATCHED_QOS)
            self.pub = self.create_publisher(InferenceResponse, interface.RESPONSE_TOPIC, qos.INFERENCE_QOS)
            self.create_subscription(InferenceRequest, interface.REQUEST_TOPIC, self.on_request, qos.INFERENCE_QOS)

        def on_scene(self, msg):
            self.scene = generate_scene(msg.data)

        def on_activate(self, state):
            self.active = True
            return super().on_activate(state)

        def on_request(self, request):
            response = InferenceResponse(request_id=request.request_id, denoising_steps=10)
            if not self.active or self.scene is None:
                response.status = InferenceResponse.STATUS_NOT_READY
            else:
                start = tuple(float(v) for v in request.sensor_data.state[:3])
                actions = np.zeros((16, 8), np.float32)
                if np.linalg.norm(self.scene.target_position - start) > 1e-6:
                    actions = expert_actions(dataclasses.replace(self.scene, ee_start=start))
                response.action_horizon, response.action_dim = actions.shape
                response.action_seq = actions.ravel().tolist()
                time.sleep({MODEL_TIME_S})
            self.pub.publish(response)

    spin_node(ExpertServer, sys.argv)
    """)


def test_expert_chunks_through_the_client_reach_every_target(tmp_path):
    script = tmp_path / "expert_server.py"
    script.write_text(EXPERT_SERVER)

    def resolve(spec: NodeSpec) -> list:
        return [sys.executable, str(script)] if spec.name == INFERENCE_NODE else installed_executable(spec)

    report, _ = run_smoke_check(config(duration_s=15.0, output_dir=str(tmp_path)), tmp_path, resolve=resolve)
    episodes = [(e["reason"], round(e["final_error_m"] * 100, 1)) for e in report.episodes]
    print("episodes (reason, final error cm):", episodes)
    assert len(report.episodes) >= 3 and report.success_rate >= 0.9, (
        f"with perfect chunks, episodes ended {episodes} (reason, final error cm): the robot-side loop "
        "(vla_client_node's chunk executor, synthetic robot) loses motion")


def test_denoising_steps_set_mid_run_reach_the_next_responses(tmp_path):
    with GraphSession(config(denoising_steps=10), tmp_path, progress=print) as session:
        responses = Responses(session)
        start = time.monotonic()
        wait_until(lambda: len(responses.since(start, InferenceResponse.STATUS_OK)) >= 3, 20.0, "OK responses")
        assert {m.denoising_steps for m in responses.since(start, InferenceResponse.STATUS_OK)} == {10}

        client = session.node.create_client(SetParameters, f"/{INFERENCE_NODE}/set_parameters")
        assert client.wait_for_service(timeout_sec=5.0)
        request = SetParameters.Request(parameters=[ParameterMsg(
            name="denoising_steps", value=ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=3))])
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        assert done.wait(10.0), "set_parameters did not answer"
        assert future.result().results[0].successful, future.result().results[0].reason
        changed = time.monotonic()

        wait_until(lambda: len(responses.since(changed, InferenceResponse.STATUS_OK)) >= 4, 15.0,
                   "OK responses after the change")
        steps = [m.denoising_steps for m in responses.since(changed, InferenceResponse.STATUS_OK)]
        # At most the one request already running when the parameter changed keeps the old value.
        assert steps[1:] == [3] * (len(steps) - 1), steps


class ClientWatch:
    """vla_client_node's diagnostics (latest values, with arrival time) and its /vla/command rows."""

    def __init__(self, session: GraphSession) -> None:
        self._lock = threading.Lock()
        self.values: Dict[str, str] = {}
        self.message = ""
        self.commands: List[tuple] = []
        session.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        session.node.create_subscription(Float32MultiArray, topics.COMMAND_TOPIC, self._on_command, 50)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("vla_client_node"):
                with self._lock:
                    self.values = {kv.key: kv.value for kv in status.values}
                    self.message = status.message

    def _on_command(self, msg: Float32MultiArray) -> None:
        with self._lock:
            self.commands.append((time.monotonic(), list(msg.data)))

    def value(self, key: str) -> str:
        with self._lock:
            return self.values.get(key, "")

    def commands_since(self, t: float) -> List[list]:
        with self._lock:
            return [row for at, row in self.commands if at >= t]


def test_camera_process_killed_the_client_holds_naming_it_and_resumes_after_restart(tmp_path):
    with GraphSession(config(), tmp_path, progress=print) as session:
        responses = Responses(session)
        client = ClientWatch(session)
        server_pid = session.processes[INFERENCE_NODE].pid
        start = time.monotonic()
        wait_until(lambda: len(responses.since(start, InferenceResponse.STATUS_OK)) >= 2, 20.0, "OK responses")

        session.processes.signal(CAMERAS, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: "front" in client.value("stale_sensors"), 10.0, "the client naming the stale cameras")
        held = time.monotonic()
        time.sleep(2.0)
        # The client holds instead of sending what the server must refuse: no INVALID_REQUEST, no request.
        assert responses.since(killed, InferenceResponse.STATUS_INVALID_REQUEST) == []
        assert responses.since(held + 1.0) == [], "requests went out while a camera was stale"
        assert int(client.value("requests_held_stale")) > 0
        session.processes.restart(CAMERAS)
        restarted = time.monotonic()
        wait_until(lambda: len(responses.since(restarted, InferenceResponse.STATUS_OK)) >= 3, 20.0,
                   "OK responses after the camera restart")
        wait_until(lambda: client.value("stale_sensors") == "", 5.0, "the stale-sensor report to clear")
        assert session.processes[INFERENCE_NODE].running() and session.processes[INFERENCE_NODE].pid == server_pid
        assert session.failed_process() is None, session.failed_process()


def test_server_sigkilled_under_a_running_client_it_holds_and_resumes_once_a_respawned_server_is_active(tmp_path):
    with GraphSession(config(), tmp_path, progress=print) as session:
        responses = Responses(session)
        client = ClientWatch(session)
        start = time.monotonic()
        wait_until(lambda: len(responses.since(start, InferenceResponse.STATUS_OK)) >= 2, 20.0, "OK responses")
        wait_until(lambda: client.value("server_connected") == "True", 5.0, "the client seeing the server")

        session.processes.signal(INFERENCE_NODE, signal.SIGKILL)
        killed = time.monotonic()
        # The participant lease of the package's Fast DDS profile (3 s) bounds how soon DDS says so.
        wait_until(lambda: client.value("server_missing") == "True", 8.0, "the client reporting the server missing")
        noticed = time.monotonic()
        print(f"server missing reported {noticed - killed:.1f} s after SIGKILL")
        assert "server missing" in client.message
        time.sleep(0.5)
        held_rows = client.commands_since(time.monotonic() - 0.3)
        assert held_rows and all(not any(row) for row in held_rows), "the client kept moving without a server"

        session.processes.restart(INFERENCE_NODE)
        respawned = time.monotonic()
        LifecycleClient(session.node, INFERENCE_NODE).bring_up()
        wait_until(lambda: len(responses.since(respawned, InferenceResponse.STATUS_OK)) >= 3, 30.0,
                   "OK responses from the respawned server")
        wait_until(lambda: client.value("server_missing") == "False", 5.0, "the client seeing the server again")
        wait_until(lambda: any(any(row) for row in client.commands_since(respawned)), 10.0, "motion again")
        assert session.failed_process() is None, session.failed_process()


def test_sigint_to_the_demo_leaves_no_process_behind(tmp_path):
    command = [sys.executable, "-m", "vla_test_pipeline.demo", "--duration", "120", "--out", str(tmp_path),
               "--model-dir", MODEL_DIR]
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: List[str] = []
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("checking for" in line for line in lines), 60.0, "the demo's graph to come up")
        descendants = psutil.Process(demo.pid).children(recursive=True)
        assert len(descendants) >= 9, [p.cmdline() for p in descendants]
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30.0) == 130, "".join(lines)
    finally:
        if demo.poll() is None:
            demo.kill()
    reader.join(timeout=5.0)
    gone, alive = psutil.wait_procs(descendants, timeout=3.0)
    assert alive == [], [p.pid for p in alive]
    assert any("interrupted" in line for line in lines), "".join(lines)
