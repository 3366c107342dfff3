"""QoS profiles of the /vla/* topics (the names are in ``vla_inference.spec.interface``).

Requests and responses are Reliable + Volatile (a late-joining subscriber never receives a stale
response); writers keep KeepLast(1). Several clients share the two topics, so readers keep a deeper
history (``READER_QOS``): with depth 1, another client's sample arriving before the reader took the
first replaced it. A client's response was lost that way, and so was a request in the server's
reader, answered by nobody. With depth, the server takes every request and its one-slot queue
answers the ones it will not run (SUPERSEDED), and each client finds its own response among the
others'. History depth is not part of QoS matching, so a peer with depth-1 readers still matches.
The text command and the model metadata are latched, so a client that starts (or restarts) after
they were published still receives them.
"""
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

INFERENCE_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    durability=DurabilityPolicy.VOLATILE,
)

READER_DEPTH = 16  # samples of other clients that may arrive between two takes of one reader



def reader_qos(depth: int = READER_DEPTH) -> QoSProfile:
    """The contract's reader profile at another history depth (measurements compare depths)."""
    return QoSProfile(
        reliability=ReliabilityPolicy.RELIABLE,
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        durability=DurabilityPolicy.VOLATILE,
    )


READER_QOS = reader_qos()

TEXT_CMD_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

METADATA_QOS = TEXT_CMD_QOS
