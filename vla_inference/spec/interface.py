"""The /vla/* interface's names and limits, importable without rclpy.

Every node, the client library, the synthetic robot and the tests take topic names, the text and
step limits and the choices of the server's string parameters from here; the QoS profiles that go
with the topics live beside the nodes (``vla_inference.qos``), since they need rclpy.
"""
from __future__ import annotations

REQUEST_TOPIC = "/vla/inference/request"
RESPONSE_TOPIC = "/vla/inference/response"
INFER_SERVICE = "/vla/inference/infer"
METADATA_TOPIC = "/vla/inference/metadata"
TEXT_CMD_TOPIC = "/vla/text_cmd"
COMMAND_TOPIC = "/vla/command"
STATE_TOPIC = "/joint_states"
LIDAR_TOPIC = "/vla/lidar/range_image"

MAX_TEXT_BYTES = 512
MAX_DENOISING_STEPS = 50

BACKENDS = ("onnxruntime", "tensorrt", "torch")
RESIZE_MODES = ("stretch", "letterbox", "center_crop")


def camera_topic(name: str) -> str:
    """The adapted image topic of camera ``name`` (what the client subscribes to)."""
    return f"/vla/camera/{name}/image"
