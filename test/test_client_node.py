"""vla_client_node against the real server: fresh data in, commands out, safe hold when data stop."""
import os
import threading

import numpy as np
import pytest
import rclpy
from rclpy.duration import Duration
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from ros_helpers import wait_for
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, String

from vla_inference import qos
from vla_inference.client.vla_client import range_image_msg, rgb_image_msg
from vla_inference.nodes.client_node import VlaClientNode
from vla_inference.nodes.entry_point import spin_executor
from vla_inference.nodes.inference_node import InferenceNode
from vla_inference.spec import interface
from vla_inference.spec.interface import COMMAND_TOPIC, LIDAR_TOPIC, STATE_TOPIC, camera_topic
from vla_inference.synthetic import generate_scene, make_observation
from vla_msgs.msg import InferenceRequest

MODEL_DIR = os.environ.get("VLA_TEST_MODEL_DIR", "")
CAMERAS = ["front", "left", "right"]


class Robot:
    """Publishes one synthetic observation as the adapters and the robot would, and records commands."""

    def __init__(self, context, live=CAMERAS):
        self.node = rclpy.create_node("fake_robot_sensors", context=context)
        obs = make_observation(generate_scene(21), num_cameras=3, with_lidar=True)
        self.images = {name: rgb_image_msg(image) for name, image in zip(CAMERAS, obs.images)}
        self.lidar = range_image_msg(obs.lidar_range)
        self.state = [float(v) for v in obs.state]
        self.live = set(live)
        self.commands = []
        self.state_stamps = set()
        self.request_stamps = []
        self.camera_pubs = {n: self.node.create_publisher(Image, camera_topic(n), qos_profile_sensor_data)
                            for n in CAMERAS}
        self.lidar_pub = self.node.create_publisher(Image, LIDAR_TOPIC, qos_profile_sensor_data)
        self.state_pub = self.node.create_publisher(JointState, STATE_TOPIC, qos_profile_sensor_data)
        text_pub = self.node.create_publisher(String, interface.TEXT_CMD_TOPIC, qos.TEXT_CMD_QOS)
        text_pub.publish(String(data=obs.text))
        self.node.create_subscription(Float32MultiArray, COMMAND_TOPIC,
                                      lambda m: self.commands.append(np.asarray(m.data)), 10)
        self.node.create_subscription(InferenceRequest, interface.REQUEST_TOPIC, self.on_request,
                                      qos.INFERENCE_QOS)
        self.node.create_timer(0.05, self.tick)

    def on_request(self, msg):
        self.request_stamps.append((msg.header.stamp.sec, msg.header.stamp.nanosec))

    def tick(self):
        now = self.node.get_clock().now()
        image_stamp = (now - Duration(seconds=0.25)).to_msg()  # frames that spent a while in transport
        for name in self.live:
            self.images[name].header.stamp = image_stamp
            self.camera_pubs[name].publish(self.images[name])
        self.lidar.header.stamp = image_stamp
        self.lidar_pub.publish(self.lidar)
        state = JointState(position=self.state)
        state.header.stamp = now.to_msg()
        self.state_stamps.add((state.header.stamp.sec, state.header.stamp.nanosec))
        self.state_pub.publish(state)


@pytest.fixture
def make_graph(ros_context):
    """Server, client and fake robot spinning together; ``live`` names the cameras publishing from the start."""
    stops = []

    def make(live=CAMERAS, **client_params):
        server = InferenceNode(context=ros_context, parameter_overrides=[
            Parameter("model_dir", value=MODEL_DIR), Parameter("num_samples", value=2)])
        client_values = {"sensor_timeout_s": 0.3, **client_params}
        client = VlaClientNode(context=ros_context,
                               parameter_overrides=[Parameter(k, value=v) for k, v in client_values.items()])
        robot = Robot(ros_context, live)
        executor = MultiThreadedExecutor(num_threads=6, context=ros_context)
        for node in (server, client, robot.node):
            executor.add_node(node)
        spinner = threading.Thread(target=spin_executor, args=(executor, server), daemon=True)
        spinner.start()
        stops.append((executor, spinner, server))
        assert server.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert server.trigger_activate() == TransitionCallbackReturn.SUCCESS
        return server, client, robot

    yield make
    for executor, spinner, server in stops:
        executor.shutdown()  # first: rclpy does not guard a QoS event handler destroyed mid wait-set build
        spinner.join(5.0)
        server.release()


@pytest.fixture
def graph(make_graph):
    return make_graph()


def test_client_node_plays_chunks_and_holds_its_requests_and_motion_when_a_camera_dies(graph):
    server, client, robot = graph
    assert wait_for(lambda: client.response_counts.get("OK", 0) >= 3, 30.0), client.response_counts
    assert wait_for(lambda: any(np.abs(c[:3]).sum() > 0 for c in robot.commands), 10.0)
    assert all(len(c) == 8 for c in robot.commands)

    robot.live.discard("right")  # the right camera's process died
    assert wait_for(lambda: client.stale_sensors == ["right"], 5.0), client.stale_sensors
    sent = server.requests_received
    held = len(robot.commands)
    assert wait_for(lambda: len(robot.commands) >= held + 30, 10.0)
    tail = robot.commands[-10:]
    assert all(not np.any(c) for c in tail), "no fresh chunk: the client must hold (zeros), not replay motion"
    # It held its requests instead of sending one the server must refuse (one may have left just before).
    assert server.requests_received <= sent + 1 and client.requests_held_stale > 0
    assert client.response_counts.get("INVALID_REQUEST", 0) == 0, client.response_counts

    ok_before = client.response_counts.get("OK", 0)
    robot.live.add("right")  # restarted: serving resumes without restarting anything
    assert wait_for(lambda: client.response_counts.get("OK", 0) >= ok_before + 2, 15.0), client.response_counts
    assert client.stale_sensors == []
    # Each response the client counted answers a request the server took (counted first, then answered).
    answered = sum(v for k, v in client.response_counts.items() if k != "chunk_refused")
    assert server.requests_received >= answered


def test_requests_carry_the_state_stamp_not_the_older_images(graph):
    # The executor skips the rows it emitted after the stamp; stamped with an image's older time, it
    # would also skip rows the state already contains.
    _, client, robot = graph
    assert wait_for(lambda: len(robot.request_stamps) >= 3, 30.0), client.response_counts
    assert all(stamp in robot.state_stamps for stamp in robot.request_stamps), (
        robot.request_stamps[:3], sorted(robot.state_stamps)[-3:])


def test_nothing_is_sent_until_every_camera_has_delivered_once(make_graph):
    server, client, robot = make_graph(live=["front", "left"])  # the right camera's driver is still starting
    assert not wait_for(lambda: server.requests_received > 0 or client.response_counts, 2.0), client.response_counts
    assert client.waiting_for == ["right"]
    robot.live.add("right")
    assert wait_for(lambda: client.response_counts.get("OK", 0) >= 2, 30.0), client.response_counts
    assert client.response_counts.get("INVALID_REQUEST", 0) == 0 and client.waiting_for == []


def test_a_client_set_up_for_another_model_refuses_to_run_and_names_the_field(make_graph):
    server, client, robot = make_graph(state_dim=7, camera_names=["left", "front", "right"])
    assert wait_for(lambda: client.setup_mismatches, 10.0), "the client never read the server's metadata"
    problems = client.setup_mismatches
    assert [p.split(":")[0] for p in problems] == ["camera_names", "state_dim"], problems
    assert "8" in problems[1] and "7" in problems[1]
    assert not wait_for(lambda: server.requests_received > 0, 2.0), "a mismatched client sent a request"


def test_a_fitting_client_reads_the_metadata_and_runs(make_graph):
    server, client, robot = make_graph()
    assert wait_for(lambda: client.response_counts.get("OK", 0) >= 1, 30.0), client.response_counts
    assert client.setup_mismatches == []
