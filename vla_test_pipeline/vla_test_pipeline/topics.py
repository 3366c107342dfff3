"""Topic names and QoS of the synthetic robot (the /vla/* names come from vla_inference.contract)."""
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

SCENE_TOPIC = "/sim/scene"
EPISODE_TOPIC = "/sim/episode"
JOINT_STATES_TOPIC = "/joint_states"
COMMAND_TOPIC = "/vla/command"
LIDAR_POINTS_TOPIC = "/sim/lidar/points"


def camera_raw_topic(camera: str) -> str:
    return f"/sim/camera/{camera}/image_raw"


# Latched: a sensor or client that starts (or restarts) late still gets the current scene and command.
LATCHED_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
# Episode results are few and each one counts: reliable, and deep enough that none is overwritten.
EPISODE_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    history=HistoryPolicy.KEEP_LAST,
    depth=50,
    durability=DurabilityPolicy.VOLATILE,
)
