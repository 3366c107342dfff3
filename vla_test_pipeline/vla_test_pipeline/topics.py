"""Topic names and QoS of the synthetic robot (the /vla/* names and QoS come from vla_inference)."""
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from vla_inference.qos import TEXT_CMD_QOS
from vla_inference.spec.interface import COMMAND_TOPIC, STATE_TOPIC

SCENE_TOPIC = "/sim/scene"
EPISODE_TOPIC = "/sim/episode"
JOINT_STATES_TOPIC = STATE_TOPIC
LIDAR_POINTS_TOPIC = "/sim/lidar/points"


def camera_raw_topic(camera: str) -> str:
    return f"/sim/camera/{camera}/image_raw"


# Latched: a sensor or client that starts (or restarts) late still gets the current scene and command.
LATCHED_QOS = TEXT_CMD_QOS
# Episode results are few and each one counts: reliable, and deep enough that none is overwritten.
EPISODE_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    history=HistoryPolicy.KEEP_LAST,
    depth=50,
    durability=DurabilityPolicy.VOLATILE,
)

__all__ = ["COMMAND_TOPIC", "EPISODE_QOS", "EPISODE_TOPIC", "JOINT_STATES_TOPIC", "LATCHED_QOS", "LIDAR_POINTS_TOPIC",
           "SCENE_TOPIC", "camera_raw_topic"]
