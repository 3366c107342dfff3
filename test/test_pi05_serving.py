"""A LeRobot pi0.5 checkpoint served by vla_inference_node over real DDS (torch backend, CPU).

The node is pointed at the directory LeRobot's ``save_pretrained`` wrote; a client reads the latched
metadata and sends rgb8 images, the robot's 8-value state and a command; the response must carry the
chunk LeRobot's own pipeline (preprocessor, PI05Policy, postprocessor, run in the reference venv)
answers for the same observation with the server's noise.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rclpy
from lifecycle_msgs.msg import Transition
from pi05_reference import lerobot_served_actions
from rcl_interfaces.msg import Log
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import wait_for
from test_inference_node import Graph

from vla_inference import qos
from vla_inference.client.vla_client import build_request, range_image_msg, rgb_image_msg
from vla_inference.runtime.pipeline import sample_noise
from vla_inference.spec import interface
from vla_inference.spec.observation import Observation
from vla_msgs.msg import InferenceResponse, ModelMetadata

CHECKPOINT = Path(__file__).parent / "data" / "pi05_tiny_checkpoint"
CAMERAS = ["base", "left_wrist", "right_wrist"]
SAMPLES, STEPS, SEED = 2, 10, 7
TOLERANCE = 1e-4


def observation(seed: int = 3) -> Observation:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in CAMERAS]
    return Observation(images=images, text="pick up the red block", state=rng.uniform(-1, 1, 8).astype(np.float32))


def lerobot_actions(obs: Observation, request_id: int, workdir) -> np.ndarray:
    """The mean chunk LeRobot's own pipeline (its pre/postprocessors and PI05Policy, in the reference
    venv) answers for ``obs`` with the noise the server draws for ``request_id`` (noise confidence views:
    every sample sees every camera and its own draw)."""
    sizes = json.loads((CHECKPOINT / "reference_io.json").read_text())["tiny_sizes"]
    noise = sample_noise((SEED * 1_000_003 + request_id) % 2**32, SAMPLES, 50, 32)
    actions = lerobot_served_actions(CHECKPOINT, sizes, CHECKPOINT / "tiny_tokenizer", np.stack(obs.images), obs.state,
                                     obs.text, noise, STEPS, workdir)
    return actions.mean(axis=0)


def pi05_graph(context, model_dir: Path = CHECKPOINT, **params) -> Graph:
    values = {"model_dir": str(model_dir), "backend": "torch", "vision_num_heads": 4, "camera_names": CAMERAS,
              "num_samples": SAMPLES, "confidence_views": "noise", "seed": SEED, "denoising_steps": STEPS,
              "max_request_rate_hz": 100.0, "pipelining": False, **params}
    return Graph(context, [Parameter(k, value=v) for k, v in values.items()])


def request_for(obs: Observation, request_id: int, with_lidar: bool = True):
    lidar = range_image_msg(np.full((64, 1024), 4.0, np.float32)) if with_lidar else None
    return build_request(request_id, [rgb_image_msg(image) for image in obs.images], obs.text, obs.state, lidar,
                         rclpy.time.Time())


@pytest.fixture
def served(ros_context):
    graph = pi05_graph(ros_context)
    metadata = []
    graph.peer.create_subscription(ModelMetadata, interface.METADATA_TOPIC, metadata.append, qos.METADATA_QOS)
    graph.bring_up()
    yield graph, metadata
    graph.close()


def test_the_checkpoint_is_served_with_its_robot_interface(served, tmp_path):
    graph, metadata = served
    assert wait_for(lambda: metadata, 10.0), "no metadata on the latched topic"
    meta = metadata[-1]
    assert meta.architecture == "pi05" and not meta.uses_lidar
    assert list(meta.camera_names) == CAMERAS
    assert list(meta.camera_keys) == ["observation.images.base_0_rgb", "observation.images.left_wrist_0_rgb",
                                      "observation.images.right_wrist_0_rgb"]
    assert (meta.state_dim, meta.action_dim, meta.action_horizon) == (8, 7, 50)
    obs = observation()
    response = graph.infer(request_for(obs, 11))
    assert response.status == InferenceResponse.STATUS_OK, response.message
    assert (response.action_horizon, response.action_dim) == (50, 7)
    served_actions = np.asarray(response.action_seq, np.float32).reshape(50, 7)
    assert np.abs(served_actions - lerobot_actions(obs, 11, tmp_path)).max() <= TOLERANCE
    without_lidar = graph.infer(request_for(obs, 11, with_lidar=False))  # the LiDAR is ignored: same answer
    assert np.array_equal(np.asarray(without_lidar.action_seq), np.asarray(response.action_seq))


def test_a_state_of_the_model_width_is_refused_by_name(served):
    graph, _ = served
    obs = observation()
    obs.state = np.zeros(32, np.float32)  # the padded model width, not the robot's 8 values
    response = graph.infer(request_for(obs, 12))
    assert response.status == InferenceResponse.STATUS_INVALID_REQUEST
    assert "sensor_data.state" in response.message and "8" in response.message


def test_a_checkpoint_without_its_tokenizer_fails_configure_and_names_the_parameter(ros_context, tmp_path):
    bare = tmp_path / "checkpoint"
    shutil.copytree(CHECKPOINT, bare, ignore=shutil.ignore_patterns("tiny_tokenizer"))
    graph = pi05_graph(ros_context, bare)
    logged = []
    graph.peer.create_subscription(Log, "/rosout", logged.append, QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    try:
        assert not graph.transition(Transition.TRANSITION_CONFIGURE)
        assert graph.node.lifecycle_state == "unconfigured"
        assert wait_for(lambda: any(m.level == Log.ERROR and "tokenizer_path" in m.msg for m in logged), 10.0), \
            [m.msg for m in logged]
        ok, _ = graph.set_parameter("tokenizer_path", str(CHECKPOINT / "tiny_tokenizer" / "tokenizer.json"))
        assert ok
        graph.bring_up()
        response = graph.infer(request_for(observation(), 13))
        assert response.status == InferenceResponse.STATUS_OK, response.message
    finally:
        graph.close()
