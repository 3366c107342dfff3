"""QoS profiles of the /vla/* topics (the names are in ``vla_inference.spec.interface``).

Requests and responses are Reliable + KeepLast(1) + Volatile: a client that publishes faster than
the server reads loses the older request inside DDS (documented in the README), and a late-joining
subscriber never receives a stale response. The text command and the model metadata are latched, so
a client that starts (or restarts) after they were published still receives them.
"""
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

INFERENCE_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    durability=DurabilityPolicy.VOLATILE,
)

TEXT_CMD_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

METADATA_QOS = TEXT_CMD_QOS
