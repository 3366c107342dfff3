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


def wait_future(future, timeout_s: float):
    """Wait for an rclpy future resolved by an executor spinning in another thread."""
    deadline = time.monotonic() + timeout_s
    while not future.done():
        if time.monotonic() > deadline:
            raise TimeoutError("future not done in time")
        time.sleep(0.01)
    return future.result()


def wait_for(condition: Callable[[], bool], timeout_s: float, period_s: float = 0.02) -> bool:
    """Poll ``condition`` (state changed by executor threads) until it holds or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(period_s)
    return True
