"""vla_inference.launch.py under launch_pytest, driven with the real ``ros2`` command as a user does.

The launch file brings the node to active through its own lifecycle events; ``ros2 param set``
changes ``denoising_steps`` for the next response and refuses an out-of-range value; ``ros2
lifecycle set`` walks the node through deactivate / cleanup / configure / activate, and a
configure a user asks for later is not followed by an automatic activate.
"""
import os
import subprocess
import time
from pathlib import Path

import launch_pytest
import pytest
import rclpy
from ament_index_python.packages import get_package_share_directory
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch_pytest.actions import ReadyToTest
from rclpy.executors import SingleThreadedExecutor

from launch import LaunchDescription
from vla_inference.client.vla_client import build_request, range_image_msg, rgb_image_msg
from vla_inference.spec import interface
from vla_inference.synthetic import generate_scene, make_observation
from vla_msgs.msg import InferenceResponse
from vla_msgs.srv import Infer

NODE = "/vla_inference_node"
LAUNCH_FILE = Path(get_package_share_directory("vla_inference")) / "launch" / "vla_inference.launch.py"


def ros2(*args: str, timeout_s: float = 60.0) -> str:
    """Run the ``ros2`` command line tool; its combined output."""
    done = subprocess.run(["ros2", *args], capture_output=True, text=True, timeout=timeout_s, env=os.environ.copy())
    return done.stdout + done.stderr


def lifecycle_state() -> str:
    out = ros2("lifecycle", "get", NODE)
    return out.split()[0] if out.strip() else ""


def wait_for_state(state: str, timeout_s: float = 90.0) -> str:
    deadline = time.monotonic() + timeout_s
    seen = ""
    while time.monotonic() < deadline:
        seen = lifecycle_state()
        if seen == state:
            return seen
        time.sleep(0.5)
    return seen


class Caller:
    """A client of /vla/inference/infer in its own context."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("launch_test_caller", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.client = self.node.create_client(Infer, interface.INFER_SERVICE)
        observation = make_observation(generate_scene(5), num_cameras=3, with_lidar=True)
        self.request = build_request(1, [rgb_image_msg(i) for i in observation.images], observation.text,
                                     observation.state, range_image_msg(observation.lidar_range), rclpy.time.Time())

    def infer(self) -> InferenceResponse:
        assert self.client.wait_for_service(timeout_sec=30.0)
        self.request.request_id += 1
        future = self.client.call_async(Infer.Request(request=self.request))
        self.executor.spin_until_future_complete(future, timeout_sec=60.0)
        assert future.done(), "no answer from /vla/inference/infer"
        return future.result().response

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


@launch_pytest.fixture(scope="module")
def server_launch():
    return LaunchDescription([
        IncludeLaunchDescription(PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
                                 launch_arguments={"denoising_steps": "10"}.items()),
        ReadyToTest(),
    ])


@pytest.fixture(scope="module")
def caller():
    made = Caller()
    yield made
    made.close()


@pytest.mark.launch(fixture=server_launch)
def test_the_launch_activates_the_node_and_ros2_param_set_is_live(caller):
    assert wait_for_state("active") == "active"
    first = caller.infer()
    assert first.status == InferenceResponse.STATUS_OK and first.denoising_steps == 10, first.message
    assert "successful" in ros2("param", "set", NODE, "denoising_steps", "3")
    assert caller.infer().denoising_steps == 3
    refused = ros2("param", "set", NODE, "denoising_steps", "99")
    assert "successful" not in refused and "fail" in refused.lower(), refused
    assert ros2("param", "get", NODE, "denoising_steps").split()[-1] == "3"
    assert caller.infer().denoising_steps == 3


@pytest.mark.launch(fixture=server_launch)
def test_ros2_lifecycle_set_walks_the_node_and_a_later_configure_stays_inactive(caller):
    assert wait_for_state("active") == "active"
    for transition, state in (("deactivate", "inactive"), ("cleanup", "unconfigured"), ("configure", "inactive")):
        assert "successful" in ros2("lifecycle", "set", NODE, transition).lower(), transition
        assert lifecycle_state() == state, transition
    time.sleep(3.0)  # the launch's activate-after-configure handler fired once, at start-up; it must not fire again
    assert lifecycle_state() == "inactive"
    assert caller.infer().status == InferenceResponse.STATUS_NOT_READY
    assert "successful" in ros2("lifecycle", "set", NODE, "activate").lower()
    assert caller.infer().status == InferenceResponse.STATUS_OK
