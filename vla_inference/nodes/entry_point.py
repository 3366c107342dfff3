"""Console-script plumbing shared by the plain (non-lifecycle) nodes."""
from __future__ import annotations

from typing import Callable, Optional

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node


def spin_node(node_factory: Callable[[], Node], args: Optional[list] = None) -> None:
    """Run one node until Ctrl-C or an external shutdown, then release it cleanly."""
    rclpy.init(args=args)
    node = node_factory()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
