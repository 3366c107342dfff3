"""Console-script plumbing shared by every node."""
from __future__ import annotations

from typing import Callable, Optional

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node


def spin_node(
    node_factory: Callable[[], Node],
    args: Optional[list] = None,
    num_threads: int = 1,
    before_destroy: Optional[Callable[[Node], None]] = None,
) -> None:
    """Run one node until Ctrl-C or an external shutdown, then release it cleanly.

    ``num_threads > 1`` spins a MultiThreadedExecutor so callback groups can run side by side.
    """
    rclpy.init(args=args)
    node = node_factory()
    executor = MultiThreadedExecutor(num_threads=num_threads) if num_threads > 1 else SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # SIGINT shuts the context down from rclpy's signal handler; if that lands while the
        # executor builds its wait set, rcl reports an invalid context (RCLError) instead of
        # ExternalShutdownException. That is still a requested shutdown; anything else is not.
        if rclpy.ok():
            raise
    finally:
        if before_destroy is not None:
            before_destroy(node)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
