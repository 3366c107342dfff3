"""The /vla/inference contract: names and QoS every node and client imports.

Both topics are Reliable + KeepLast(1) + Volatile: a client that publishes faster than the server
reads loses the older request inside DDS (documented in the README), and a late-joining subscriber
never receives a stale response.
"""
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

REQUEST_TOPIC = "/vla/inference/request"
RESPONSE_TOPIC = "/vla/inference/response"
INFER_SERVICE = "/vla/inference/infer"
TEXT_CMD_TOPIC = "/vla/text_cmd"

MAX_TEXT_BYTES = 512
MAX_DENOISING_STEPS = 50

INFERENCE_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    durability=DurabilityPolicy.VOLATILE,
)
