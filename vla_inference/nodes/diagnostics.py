"""Building /diagnostics messages from plain counters, the same way in every node."""
from __future__ import annotations

from typing import Mapping

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node


def diagnostic_array(node: Node, name: str, level: int, message: str, values: Mapping[str, object]) -> DiagnosticArray:
    status = DiagnosticStatus(name=name, level=level, message=message, hardware_id=node.get_name())
    status.values = [KeyValue(key=str(k), value=str(v)) for k, v in values.items()]
    array = DiagnosticArray(status=[status])
    array.header.stamp = node.get_clock().now().to_msg()
    return array


def drop_counter_array(node: Node, kind: str, counts: Mapping[str, int], last_error: str) -> DiagnosticArray:
    """WARN once anything was dropped, with the last reason; OK otherwise."""
    dropped = counts.get("dropped", 0)
    level = DiagnosticStatus.WARN if dropped else DiagnosticStatus.OK
    message = f"{dropped} dropped" if dropped else "ok"
    return diagnostic_array(node, f"{node.get_fully_qualified_name()}: {kind}", level, message,
                            {**counts, "last_error": last_error})
