"""Small helpers for tests that drive real rclpy nodes."""
import time
from typing import Callable

from rclpy.executors import Executor


def spin_until(executor: Executor, condition: Callable[[], bool], timeout_s: float) -> bool:
    """Spin ``executor`` until ``condition()`` holds or ``timeout_s`` passes; returns the condition."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        executor.spin_once(timeout_sec=0.05)
    return True
