"""Faults inside a real vla_inference_node process (test/fault_injection.py wraps its real backend):
a backend that raises or hangs, a configure that throws; the node answers on time and keeps serving."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest
from lifecycle_msgs.msg import Transition
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from ros_helpers import wait_for, wait_future

from vla_inference.client.vla_client import ClientResult, VlaClient
from vla_inference.synthetic import generate_scene, make_observation
from vla_msgs.msg import InferenceResponse
from vla_test_pipeline.lifecycle import LifecycleClient, LifecycleError

FAULT_NODE = Path(__file__).with_name("fault_injection.py")
NODE = "vla_inference_node"
DEADLINE_MS = 2000.0
HANG_MS = 6000.0


class Probe:
    """A node of the test's own, spun in a thread: lifecycle, parameters and a VlaClient."""

    def __init__(self, context) -> None:
        self.node = Node("fault_tester", context=context)
        self.executor = MultiThreadedExecutor(num_threads=2, context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.lifecycle = LifecycleClient(self.node, NODE)
        self.client = VlaClient(self.node, timeout_s=10.0, first_request_id=1)
        self.params = self.node.create_client(SetParameters, f"/{NODE}/set_parameters")
        observation = make_observation(generate_scene(3), num_cameras=3, with_lidar=True)
        self.inputs = (list(observation.images), observation.text, list(observation.state), observation.lidar_range)

    def infer(self) -> ClientResult:
        images, text, state, lidar = self.inputs
        return self.client.infer(images, text, state, lidar)

    def set_steps(self, steps: int) -> bool:
        value = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=steps)
        request = SetParameters.Request(parameters=[ParameterMsg(name="denoising_steps", value=value)])
        return wait_future(self.params.call_async(request), 5.0).results[0].successful

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(5.0)
        self.node.destroy_node()


def start_fault_node(plan: str, log: Path) -> subprocess.Popen:
    args = [sys.executable, str(FAULT_NODE), "--ros-args", "-p", f"fault_plan:={plan}",
            "-p", f"deadline_ms:={DEADLINE_MS}", "-p", "max_request_rate_hz:=100.0", "-p", "num_samples:=2",
            "-p", "pipelining:=false"]
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.fixture
def tester(ros_context) -> Iterator[Probe]:
    made = Probe(ros_context)
    yield made
    made.close()


@pytest.fixture
def fault_process(tmp_path) -> Iterator[List]:
    """Started by the test (it picks the plan); stopped with SIGINT afterwards, whatever happened."""
    started: List = []
    yield started
    for proc, _ in started:
        if proc.poll() is None:
            proc.send_signal(2)
            try:
                proc.wait(15.0)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_a_raising_backend_answers_internal_error_and_a_hung_one_deadline_exceeded_on_time(tester, fault_process,
                                                                                             tmp_path):
    log = tmp_path / "node.log"
    proc = start_fault_node(f"raise@2,hang@4:{HANG_MS:g}", log)
    fault_process.append((proc, log))
    assert tester.lifecycle.bring_up() == "active"
    first = tester.infer()
    assert first.status == InferenceResponse.STATUS_OK, first.message
    failed = tester.infer()
    assert failed.status == InferenceResponse.STATUS_INTERNAL_ERROR
    assert "InjectedFault" in failed.message and "action-expert call 2" in failed.message
    again = tester.infer()
    assert again.status == InferenceResponse.STATUS_OK, again.message

    # Call 4 blocks the backend for 6 s: the answer must come at the deadline, and the node must keep
    # answering its lifecycle and parameter services meanwhile.
    started = time.monotonic()
    hung = tester.infer()
    answered_after_s = time.monotonic() - started
    assert hung.status == InferenceResponse.STATUS_DEADLINE_EXCEEDED, hung.message
    assert hung.actions is None and f"{DEADLINE_MS:g} ms" in hung.message
    assert DEADLINE_MS / 1000.0 <= answered_after_s < DEADLINE_MS / 1000.0 + 0.7, answered_after_s
    probe = time.monotonic()
    assert tester.lifecycle.get_state(timeout_s=2.0) == "active"
    assert tester.set_steps(6)
    assert time.monotonic() - probe < 1.5, "lifecycle and parameter services were slow while the backend hung"
    queued = tester.infer()  # waits behind the hung call: also answered at its deadline
    assert queued.status == InferenceResponse.STATUS_DEADLINE_EXCEEDED, queued.message

    assert wait_for(lambda: time.monotonic() - started > HANG_MS / 1000.0 + 0.5, 10.0)
    after = tester.infer()
    assert after.status == InferenceResponse.STATUS_OK, after.message
    assert after.denoising_steps == 6
    assert proc.poll() is None
    text = log.read_text()
    assert "past its deadline: result dropped" in text, text[-3000:]


def test_an_exception_in_configure_is_logged_with_its_traceback_and_leaves_the_node_unconfigured(
        tester, fault_process, tmp_path):
    log = tmp_path / "node.log"
    proc = start_fault_node("configure", log)
    fault_process.append((proc, log))
    tester.lifecycle.wait_for_services(30.0)
    with pytest.raises(LifecycleError, match="configure"):
        tester.lifecycle.change_state(Transition.TRANSITION_CONFIGURE, 30.0)
    assert tester.lifecycle.get_state() == "unconfigured"
    assert proc.poll() is None
    text = log.read_text()
    assert "configure failed: InjectedFault" in text and "Traceback" in text, text[-3000:]
