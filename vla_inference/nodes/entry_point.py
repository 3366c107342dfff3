"""Console-script plumbing shared by every node."""
from __future__ import annotations

import time
from typing import Callable, Optional

import rclpy
from rclpy.exceptions import InvalidHandle
from rclpy.executors import Executor, ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node

SHUTDOWN_RACE_S = 1.0


def _shuts_down_within(seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while rclpy.ok():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def spin_executor(executor: Executor, node: Node) -> None:
    """``executor.spin()``, resumed when an entity is destroyed while the executor collects it.

    rclpy skips a subscription, service, client or timer destroyed while it builds its wait set, but
    not a waitable: a subscription's QoS event handler raises InvalidHandle there. A lifecycle
    cleanup that destroys a subscription from a callback thread (``InferenceNode.release``) can hit
    that window; the entity is gone either way, so the executor spins on instead of taking the
    process down.
    """
    while True:
        try:
            executor.spin()
            return
        except InvalidHandle as exc:
            if not executor.context.ok():
                raise
            node.get_logger().warning(f"an entity was destroyed while the executor collected it ({exc}); spinning on")


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
        spin_executor(executor, node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # SIGINT shuts the context down from rclpy's signal handler; if that lands while the
        # executor builds its wait set or takes a message, rcl reports an invalid context
        # (RCLError) or the take fails (RuntimeError from the bindings) instead of
        # ExternalShutdownException, sometimes just before the context reads as shut down. That is
        # still a requested shutdown; an error the context outlives is not.
        if not _shuts_down_within(SHUTDOWN_RACE_S):
            raise
    finally:
        if before_destroy is not None:
            before_destroy(node)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
